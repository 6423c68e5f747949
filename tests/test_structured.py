"""Structured output on tiny real models: constrained greedy with any drafter equals constrained greedy
without one, forced tokens are drafted for free, logprobs and penalties agree with plain decoding, bad
constraints are clear errors; the GGUF vocabulary bridge on llama.cpp."""

from __future__ import annotations

import json

import pytest
import torch

import specdecode as sd
from specdecode import Constraint
from specdecode.drafters import ModelDrafter, NgramDrafter, NgramThenModel
from specdecode.penalties import Penalties
from specdecode.toy import tiny_llama_pair

pytest.importorskip("llguidance")

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "kind": {"enum": ["customer_record", "supplier_record", "employee"]},
        "active": {"type": "boolean"},
        "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "maxItems": 3},
        "address": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 5},
                                                     "country_code": {"enum": ["DE", "FR", "US"]}},
                    "required": ["city", "country_code"], "additionalProperties": False},
    },
    "required": ["name", "kind", "active", "tags", "address"],
    "additionalProperties": False,
}


def check_record(text: str) -> dict:
    """The text parses and matches SCHEMA (checked by hand: no jsonschema dependency)."""
    obj = json.loads(text)
    assert list(obj) == ["name", "kind", "active", "tags", "address"]
    assert isinstance(obj["name"], str) and len(obj["name"]) <= 6
    assert obj["kind"] in SCHEMA["properties"]["kind"]["enum"] and isinstance(obj["active"], bool)
    assert len(obj["tags"]) <= 3 and all(t in ("red", "green", "blue") for t in obj["tags"])
    address = obj["address"]
    assert set(address) == {"city", "country_code"} and address["country_code"] in ("DE", "FR", "US")
    return obj


@pytest.fixture(scope="module")
def pair():
    target, draft = tiny_llama_pair()
    for model in (target, draft):
        model.eos_token_ids = {95}  # the config's default EOS (2) is '"' in the character vocabulary
    return target, draft


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _plain(target, **kwargs):
    return sd.SpeculativeGenerator(target).generate(
        "record:", max_new_tokens=160, constraint=Constraint.json(SCHEMA), grammar_drafts=False, **kwargs)


@pytest.mark.parametrize("drafter", ["forced-only", "ngram", "model", "ngram+model", "prediction"])
@pytest.mark.parametrize("gamma", [4, "auto"])
def test_constrained_greedy_with_drafts_equals_constrained_greedy_without(pair, drafter, gamma):
    target, draft = pair
    plain = _plain(target)
    check_record(plain.text)
    assert plain.stats.finish_reason == "stop"  # the grammar completed
    make = {"forced-only": lambda: None, "ngram": lambda: NgramDrafter(max_n=3),
            "model": lambda: ModelDrafter(draft), "prediction": lambda: None,
            "ngram+model": lambda: NgramThenModel(NgramDrafter(), ModelDrafter(draft))}[drafter]
    kwargs = {"prediction": plain.text[:20] + "xyz" + plain.text[25:]} if drafter == "prediction" else {}
    gen = sd.SpeculativeGenerator(target, make())
    res = gen.generate("record:", max_new_tokens=160, constraint=Constraint.json(SCHEMA), gamma=gamma,
                       **kwargs)
    assert res.token_ids == plain.token_ids and res.text == plain.text
    stats = res.stats
    assert stats.drafted_by_source.get("grammar", 0) > 0  # keys and punctuation were forced
    assert stats.target_calls < plain.stats.target_calls


def test_forced_tokens_are_drafted_free_and_accepted(pair):
    """With no drafter at all, the keys, punctuation and enum tails come as 'grammar' drafts, accepted (all
    but the tokenisation of a forced text's last bytes, which a longer token may replace)."""
    target, _ = pair
    plain = _plain(target)
    res = sd.SpeculativeGenerator(target).generate("record:", max_new_tokens=160,
                                                   constraint=Constraint.json(SCHEMA), gamma="auto")
    assert res.text == plain.text
    stats = res.stats
    assert set(stats.drafted_by_source) == {"grammar"}
    assert stats.accepted_by_source["grammar"] >= 0.8 * stats.drafted_by_source["grammar"]
    assert stats.target_calls <= len(res.token_ids) // 2  # most of a record is forced


def test_sampled_constrained_output_is_always_valid(pair):
    target, draft = pair
    gen = sd.SpeculativeGenerator(target, NgramThenModel(NgramDrafter(), ModelDrafter(draft)))
    for seed in range(6):
        res = gen.generate("record:", max_new_tokens=200, constraint=Constraint.json(SCHEMA), temperature=1.0,
                           seed=seed, gamma=3)
        check_record(res.text)


@pytest.mark.parametrize("constraint,check", [
    (Constraint.json(), lambda t: isinstance(json.loads(t), dict)),
    (Constraint.grammar('root ::= "yes" | "no" | "maybe " [0-9]'), lambda t: t in ("yes", "no") or
     (t.startswith("maybe ") and t[-1].isdigit())),
    (Constraint.grammar('start: "x" NUM\nNUM: /[0-9]{2,3}/'), lambda t: t[0] == "x" and t[1:].isdigit()),
    (Constraint.regex(r"[a-c]{3}-[0-9]{2}"), lambda t: len(t) == 6 and t[3] == "-"),
])
def test_each_constraint_kind(pair, constraint, check):
    target, draft = pair
    plain = sd.SpeculativeGenerator(target).generate("q:", max_new_tokens=60, constraint=constraint,
                                                     grammar_drafts=False)
    spec = sd.SpeculativeGenerator(target, ModelDrafter(draft)).generate("q:", max_new_tokens=60,
                                                                         constraint=constraint, gamma=3)
    assert spec.text == plain.text
    if plain.stats.finish_reason == "stop":
        assert check(plain.text), plain.text


@pytest.mark.parametrize("bad,message", [
    (lambda: Constraint.json("{not json"), "not valid JSON"),
    (lambda: Constraint.json([1, 2]), "must be an object"),
    (lambda: Constraint.grammar("  "), "non-empty"),
    (lambda: Constraint("yaml", "x"), "constraint kind"),
])
def test_bad_constraints_are_clear_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        bad()


@pytest.mark.parametrize("constraint,message", [
    (Constraint.grammar("root ::= [a-"), "invalid grammar"),
    (Constraint.grammar("start: undefined_rule"), "invalid grammar"),
    (Constraint.regex("(unclosed"), "invalid regex"),
    (Constraint.json({"type": "object", "properties": {"a": {"type": "strng"}}}), "invalid json schema"),
])
def test_invalid_grammars_are_refused_before_generating(pair, constraint, message):
    with pytest.raises(ValueError, match=message):
        sd.SpeculativeGenerator(pair[0]).generate("q:", max_new_tokens=5, constraint=constraint)


def test_logprobs_of_accepted_draft_tokens_equal_plain_decoding(pair):
    target, draft = pair
    plain = _plain(target, logprobs=3)
    spec = sd.SpeculativeGenerator(target, ModelDrafter(draft)).generate(
        "record:", max_new_tokens=160, constraint=Constraint.json(SCHEMA), gamma=4, logprobs=3)
    assert spec.token_ids == plain.token_ids and spec.stats.accepted > 0
    assert len(spec.logprobs) == len(spec.token_ids)
    for a, b in zip(spec.logprobs, plain.logprobs, strict=True):
        assert a.token == b.token and abs(a.logprob - b.logprob) < 1e-4
        assert [t for t, _ in a.top] == [t for t, _ in b.top]
        assert a.logprob <= 0 and a.top[0][0] == a.token  # greedy: the chosen token is the best one
    # unconstrained: the logprobs are the model's own log-softmax
    res = sd.SpeculativeGenerator(target).generate([5, 6, 7], max_new_tokens=3, logprobs=0)
    target.reset()
    logits = target.forward(torch.tensor([[5, 6, 7]]))[0, -1]
    target.reset()
    expected = float(torch.log_softmax(logits.float(), -1)[res.token_ids[0]])
    assert abs(res.logprobs[0].logprob - expected) < 1e-4


@pytest.mark.parametrize("kwargs", [dict(presence_penalty=1.5, frequency_penalty=0.7),
                                    dict(repeat_penalty=1.8),
                                    dict(repeat_penalty=1.3, repeat_last_n=8, frequency_penalty=-0.4)])
def test_penalised_greedy_with_drafts_equals_plain(pair, kwargs):
    target, draft = pair
    plain = sd.SpeculativeGenerator(target).generate("abcabcabc", max_new_tokens=40, **kwargs)
    unpenalised = sd.SpeculativeGenerator(target).generate("abcabcabc", max_new_tokens=40)
    assert plain.token_ids != unpenalised.token_ids  # the penalties bite
    for drafter in (NgramDrafter(), ModelDrafter(draft)):
        res = sd.SpeculativeGenerator(target, drafter).generate("abcabcabc", max_new_tokens=40, gamma=4,
                                                                **kwargs)
        assert res.token_ids == plain.token_ids


def test_block_penalties_equal_one_position_at_a_time():
    torch.manual_seed(0)
    logits = torch.randn(5, 12)
    seq, generated, draft = [1, 2, 3, 3, 4, 1], 3, [3, 7, 7, 1]
    pen = Penalties(presence=0.3, frequency=0.6, repeat=1.4, repeat_last_n=4)
    block = pen.apply(logits, seq, generated, draft)
    for i in range(5):
        alone = pen.apply(logits[i : i + 1], seq + draft[:i], generated + i, [])
        assert torch.allclose(block[i], alone[0])
    with pytest.raises(ValueError, match="presence_penalty"):
        Penalties(presence=3.0)
    with pytest.raises(ValueError, match="repeat_penalty"):
        Penalties(repeat=0.0)


def test_gguf_vocabulary_on_llama_cpp(tmp_path):
    """The llama.cpp backend's GGUF tokenizer bridged to llguidance (SmolLM2's BPE vocabulary)."""
    pytest.importorskip("llama_cpp")
    from specdecode.backends.llamacpp import LlamaCppModel

    from .tiny_gguf import write_tiny_llama

    target = LlamaCppModel(write_tiny_llama(tmp_path / "t.gguf", seed=0))
    draft = LlamaCppModel(write_tiny_llama(tmp_path / "d.gguf", seed=0, scale=0.7))
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                               "zone": {"enum": ["north-east", "south-west"]}},
              "required": ["city", "zone"], "additionalProperties": False}
    plain = sd.SpeculativeGenerator(target).generate("Extract:", max_new_tokens=80,
                                                     constraint=Constraint.json(schema), grammar_drafts=False)
    obj = json.loads(plain.text)
    assert obj["zone"] in ("north-east", "south-west") and len(obj["city"]) <= 12
    for drafter in (None, NgramDrafter(), ModelDrafter(draft)):
        res = sd.SpeculativeGenerator(target, drafter).generate(
            "Extract:", max_new_tokens=80, constraint=Constraint.json(schema), gamma=4)
        assert res.token_ids == plain.token_ids
        assert res.stats.drafted_by_source.get("grammar", 0) > 0


def test_a_tool_call_wrapper_around_a_json_schema(pair):
    """What `tool_choice: required` / a named function needs: the template's wrapper text around a JSON
    object valid for the function's parameters, in one Lark grammar (llguidance's %json). (The character
    vocabulary has no newline, so the wrapper here uses spaces.)"""
    target, draft = pair
    params = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 6}},
              "required": ["city"], "additionalProperties": False}
    call = {"type": "object", "properties": {"name": {"const": "get_weather"}, "arguments": params},
            "required": ["name", "arguments"], "additionalProperties": False}
    grammar = f'start: "<tool_call> " call " </tool_call>"\ncall: %json {json.dumps(call)}\n'
    plain = sd.SpeculativeGenerator(target).generate("x", max_new_tokens=120, grammar_drafts=False,
                                                     constraint=Constraint.grammar(grammar))
    res = sd.SpeculativeGenerator(target, NgramDrafter()).generate("x", max_new_tokens=120, gamma=4,
                                                                   constraint=Constraint.grammar(grammar))
    assert res.text == plain.text and res.stats.finish_reason == "stop"
    assert res.text.startswith("<tool_call> ") and res.text.endswith(" </tool_call>")
    obj = json.loads(res.text[len("<tool_call> ") : -len(" </tool_call>")])
    assert obj["name"] == "get_weather" and len(obj["arguments"]["city"]) <= 6
    assert res.stats.target_calls < len(res.token_ids) // 2
