"""Exactness under a constraint, by enumeration: the real engine's output distribution equals the target's
distribution restricted to the grammar and renormalised at each step (penalties applied per position),
for model drafts, deterministic drafts and the grammar's own forced-token drafts."""

from __future__ import annotations

import pytest
import torch

import specdecode.acceptance as v
from specdecode import Constraint, SpeculativeGenerator
from specdecode.penalties import Penalties
from specdecode.sampling import SamplingParams, adjusted_probs
from specdecode.structured.llg import GrammarMatcher
from specdecode.toy import TableLM, random_table
from tests.test_exact_enumeration import Oracle

pytest.importorskip("llguidance")

EOS = 3
LENGTH = 4


def abc_tokenizer():
    """'a', 'b', 'c' (ids 0..2) and '</s>' (id 3)."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"a": 0, "b": 1, "c": 2, "</s>": EOS}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="</s>"))
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="</s>", unk_token="</s>")


def table(seed: int, sharpness: float = 1.0) -> TableLM:
    model = TableLM(random_table(4, 1, seed=seed, sharpness=sharpness), eos_token_ids={EOS})
    model.tokenizer = abc_tokenizer()
    return model


CONSTRAINTS = {
    "regex": Constraint.regex("(ab|ba)c?"),
    "lark": Constraint.grammar('start: ("a" | "b")+ "c"'),
    "gbnf": Constraint.grammar('root ::= [ab] ("c" | "ab") [abc]*'),
}


def constrained_distribution(target, params, prefix, constraint, penalties=None):
    """P(output = s) by the definition: at each step the target's (penalised) logits masked to the grammar,
    adjusted and renormalised; a sequence ends at EOS, when the grammar is complete, or at LENGTH."""
    matcher = GrammarMatcher(constraint, target.tokenizer, target.vocab_size, {EOS})
    out: dict[tuple[int, ...], float] = {}

    def expand(tokens: list[int], weight: float) -> None:
        if len(tokens) == LENGTH or (tokens and (tokens[-1] == EOS or matcher.stopped)):
            out[tuple(tokens)] = out.get(tuple(tokens), 0.0) + weight
            return
        logits = target.logits_after(prefix + tokens).unsqueeze(0)
        if penalties is not None:
            logits = penalties.apply(logits, prefix + tokens, len(tokens), [])
        logits = logits.masked_fill(~matcher.allowed(), float("-inf"))
        p = adjusted_probs(logits, params)[0]
        for t in (p > 0).nonzero().view(-1).tolist():
            matcher.consume([t])
            expand(tokens + [t], weight * float(p[t]))
            matcher.rollback(1)

    expand([], 1.0)
    return out


def engine_distribution(target, draft, params, gamma, prefix, **kwargs):
    """P(output = s) from the real engine with every random draw enumerated (see test_exact_enumeration)."""
    result: dict[tuple[int, ...], float] = {}
    gen = SpeculativeGenerator(target, draft)
    real_acceptance = v.acceptance_probs
    stack: list[list[int]] = [[]]
    with pytest.MonkeyPatch.context() as mp:
        while stack:
            path = stack.pop()
            oracle = Oracle(path)

            def acceptance(p, q, x, oracle=oracle):
                acc = real_acceptance(p, q, x)
                oracle.weigh_acceptance(acc)
                return acc

            mp.setattr(torch, "multinomial", oracle.multinomial)
            mp.setattr(torch, "rand", oracle.rand)
            mp.setattr(v, "acceptance_probs", acceptance)
            res = gen.generate(list(prefix), max_new_tokens=LENGTH, gamma=gamma, seed=0,
                               temperature=params.temperature, top_k=params.top_k, top_p=params.top_p,
                               min_p=params.min_p, **kwargs)
            for k in range(len(path), len(oracle.path)):
                stack += [oracle.path[:k] + [alt] for alt in range(1, oracle.branching[k])]
            if oracle.weight > 0:
                out = tuple(res.token_ids)
                result[out] = result.get(out, 0.0) + oracle.weight
    return result


def assert_same(spec, exact):
    assert abs(sum(spec.values()) - 1.0) < 1e-9
    assert abs(sum(exact.values()) - 1.0) < 1e-9
    for seq in set(spec) | set(exact):
        assert abs(spec.get(seq, 0.0) - exact.get(seq, 0.0)) < 1e-9, seq


SETTINGS = [SamplingParams(temperature=1.0), SamplingParams(temperature=0.7, top_k=2),
            SamplingParams(temperature=0.0)]
IDS = ["t1", "topk", "greedy"]


@pytest.mark.parametrize("name,params,gamma", [
    ("regex", SETTINGS[0], 3), ("regex", SETTINGS[2], 3), ("lark", SETTINGS[0], 2), ("lark", SETTINGS[1], 3),
    ("gbnf", SETTINGS[0], 1), ("gbnf", SETTINGS[1], 2), ("gbnf", SETTINGS[2], 4),
], ids=["regex-t1-3", "regex-greedy-3", "lark-t1-2", "lark-topk-3", "gbnf-t1-1", "gbnf-topk-2",
        "gbnf-greedy-4"])
def test_model_draft_keeps_the_constrained_distribution(name, params, gamma):
    target, draft = table(7), table(8, sharpness=2.0)
    constraint = CONSTRAINTS[name]
    spec = engine_distribution(target, draft, params, gamma, [1], constraint=constraint)
    assert_same(spec, constrained_distribution(target, params, [1], constraint))


@pytest.mark.parametrize("params", SETTINGS, ids=IDS)
@pytest.mark.parametrize("name", ["repeat-last", "always-c", "none"])
def test_deterministic_and_forced_drafts_keep_the_constrained_distribution(name, params):
    """One-hot drafts (often outside the grammar, so cut at the grammar's bound) and, with no drafter at
    all, the grammar's forced tokens alone."""
    draft = {"repeat-last": lambda s, g: [s[-1]] * g, "always-c": lambda s, g: [2] * g, "none": None}[name]
    target = table(11)
    constraint = CONSTRAINTS["regex"]
    spec = engine_distribution(target, draft, params, 3, [0], constraint=constraint)
    assert_same(spec, constrained_distribution(target, params, [0], constraint))


@pytest.mark.parametrize("params", SETTINGS, ids=IDS)
@pytest.mark.parametrize("penalties", [Penalties(presence=0.8, frequency=0.5), Penalties(repeat=1.7),
                                       Penalties(presence=-0.5, frequency=1.0, repeat=1.3, repeat_last_n=2)],
                         ids=["presence-frequency", "repeat", "all"])
def test_penalties_per_position_keep_the_distribution(penalties, params):
    """Penalties change at every position of a block; with and without a grammar."""
    target, draft = table(3), table(4, sharpness=2.0)
    kwargs = dict(presence_penalty=penalties.presence, frequency_penalty=penalties.frequency,
                  repeat_penalty=penalties.repeat, repeat_last_n=penalties.repeat_last_n)
    constraint = CONSTRAINTS["regex"]
    spec = engine_distribution(target, draft, params, 2, [1, 0], constraint=constraint, **kwargs)
    assert_same(spec, constrained_distribution(target, params, [1, 0], constraint, penalties))


def test_enumeration_detects_a_missing_mask(monkeypatch):
    """Negative control: verifying against unmasked logits is caught (it emits tokens outside the grammar
    or the wrong weights)."""
    import specdecode.engine as engine

    target, draft = table(7), table(8, sharpness=2.0)
    params = SamplingParams(temperature=1.0)
    constraint = CONSTRAINTS["regex"]
    real = engine.DecodeLoop._process

    def unmasked(self, logits, draft_tokens):
        grammar, self.grammar = self.grammar, None
        try:
            return real(self, logits, draft_tokens)
        finally:
            self.grammar = grammar

    monkeypatch.setattr(engine.DecodeLoop, "_process", unmasked)
    with pytest.raises(RuntimeError, match="grammar refused"):
        engine_distribution(target, draft, params, 2, [1], constraint=constraint)


def test_seeded_samples_follow_the_constrained_distribution():
    """The real seeded engine (no enumeration): a G-test of 3000 constrained samples with a model draft
    against the constrained distribution."""
    from collections import Counter

    from scipy.stats import power_divergence

    target, draft = table(7), table(8, sharpness=2.0)
    params = SamplingParams(temperature=1.0)
    constraint = CONSTRAINTS["lark"]
    exact = constrained_distribution(target, params, [1], constraint)
    gen = SpeculativeGenerator(target, draft)
    rng = torch.Generator().manual_seed(99)
    samples = 3000
    counts = Counter(tuple(gen.generate([1], max_new_tokens=LENGTH, gamma=3, generator=rng, temperature=1.0,
                                        constraint=constraint).token_ids) for _ in range(samples))
    assert set(counts) <= set(exact), "sampled an output the constrained target gives probability 0"
    cells = sorted(exact)
    stat = power_divergence([counts.get(s, 0) for s in cells], [exact[s] * samples for s in cells],
                            lambda_="log-likelihood")
    assert stat.pvalue > 1e-3, stat
