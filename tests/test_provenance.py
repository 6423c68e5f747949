"""Token provenance: the engine's record of which source produced each token, and the opt-in
`specdecode: {"provenance": true}` extension of the API, whose absence leaves the stream byte for byte
as it was."""

from __future__ import annotations

import json
import re

import pytest

import specdecode as sd
from specdecode.drafters import ModelDrafter
from specdecode.provenance import TARGET_SOURCES, TokenSource, block_sources
from specdecode.server.provenance import LiveProvenance
from specdecode.server.replies import StreamShaper
from specdecode.text import TextStream
from specdecode.toy import tiny_llama_pair

from .scripted import ScriptedLM

REPLY = "Hello! Provenance says where every token came from."
HEAD = {"id": "chatcmpl-x", "created": 1, "model": "m"}


def test_block_sources():
    assert block_sources([7], "none", 0, 0, []) == [TokenSource(7, "plain")]
    accepted = block_sources([1, 2, 3], "ngram", 2, 2, [1.0, 0.5])
    assert accepted == [TokenSource(1, "ngram", 1.0), TokenSource(2, "ngram", 0.5), TokenSource(3, "bonus")]
    corrected = block_sources([1, 9], "model", 3, 1, [0.9, 0.25, 0.1])
    assert corrected == [TokenSource(1, "model", 0.9), TokenSource(9, "corrected", 0.25, "model")]
    assert block_sources([1], "prediction", 3, 2, [1.0, 1.0, 1.0]) == [TokenSource(1, "prediction", 1.0)]
    assert TokenSource(9, "corrected", 0.25, "model").to_dict() == {"token": 9, "source": "corrected",
                                                                     "p": 0.25, "draft": "model"}


def test_the_default_chunks_are_what_they_always_were():
    """Today's wire format, byte for byte: a chunk grows a `specdecode` key only when asked to."""
    chat = StreamShaper(True, HEAD, None)
    common = '"id": "chatcmpl-x", "created": 1, "model": "m", "object": "chat.completion.chunk"'
    assert chat.start() == [f'data: {{{common}, "choices": [{{"index": 0, "delta": {{"role": "assistant", '
                            '"content": ""}, "logprobs": null, "finish_reason": null}]}\n\n']
    piece = (f'data: {{{common}, "choices": [{{"index": 0, "delta": {{"content": "hi"}}, "logprobs": null, '
             '"finish_reason": null}]}')
    assert chat.piece("hi") == [piece + "\n\n"]
    spans = {"tokens": [{"text": "hi", "token": 5, "source": "ngram", "p": 1.0}]}
    assert chat.piece("hi", None, spans) == [piece[:-1] + ', "specdecode": ' + json.dumps(spans) + "}\n\n"]
    assert chat.end("stop", {}, False) == [
        f'data: {{{common}, "choices": [{{"index": 0, "delta": {{}}, "logprobs": null, "finish_reason": '
        '"stop"}]}\n\n', "data: [DONE]\n\n"]
    text = StreamShaper(False, HEAD, None)
    assert text.piece("hi") == ['data: {"id": "chatcmpl-x", "created": 1, "model": "m", "object": '
                                '"text_completion", "choices": [{"index": 0, "text": "hi", "logprobs": null, '
                                '"finish_reason": null}]}\n\n']


@pytest.fixture(scope="module")
def http():
    from fastapi.testclient import TestClient

    from specdecode.server import ServerSettings, create_app

    app = create_app(sd.SpeculativeGenerator(ScriptedLM(lambda prompt: REPLY)), ServerSettings("s", gamma=4))
    with TestClient(app) as client:
        yield client


def _events(text: str) -> list[str]:
    """The stream's events with the per-request id and time made constant."""
    text = re.sub(r'"id": "(chat)?cmpl-[0-9a-f]+"', '"id": "ID"', text)
    return re.sub(r'"created": \d+', '"created": 0', text).split("\n\n")


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_the_default_stream_is_byte_identical_and_provenance_only_adds_a_key(http, path):
    body = {"max_tokens": 80, "temperature": 0, "stream": True, "prediction": {"type": "content",
            "content": REPLY.replace("every", "each")}, "stream_options": {"include_usage": True}}
    body.update({"messages": [{"role": "user", "content": "hi"}]} if "chat" in path else {"prompt": "hi"})
    plain = http.post(path, json=body).text
    assert "specdecode" not in plain
    marked = http.post(path, json={**body, "specdecode": {"provenance": True}}).text
    varying = "queue_s|prefill_s|target_s|draft_s|decode_tokens_per_s|cached_tokens"  # timings, the cache
    timing = re.compile(rf'"({varying})": [0-9.e-]+')
    stripped, sources = [], []
    for event in _events(marked):
        if event.startswith("data: {"):
            chunk = json.loads(event[6:])
            extension = chunk.pop("specdecode", None)
            if extension is not None:
                delta = chunk["choices"][0].get("delta", {}).get("content", chunk["choices"][0].get("text"))
                assert "".join(t["text"] for t in extension["tokens"]) == delta
                sources += [t["source"] for t in extension["tokens"]]
            event = "data: " + json.dumps(chunk)
        stripped.append(timing.sub("T", event))
    assert stripped == [timing.sub("T", e) for e in _events(plain)]  # nothing else differs
    assert "prediction" in sources and "corrected" in sources  # "every" -> "each": the target corrected it


def test_a_whole_response_carries_the_sources_of_its_text(http):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 80, "temperature": 0,
            "prediction": {"type": "content", "content": REPLY}, "specdecode": {"provenance": True}}
    reply = http.post("/v1/chat/completions", json=body).json()
    tokens = reply["specdecode"]["tokens"]
    assert "".join(t["text"] for t in tokens) == reply["choices"][0]["message"]["content"] == REPLY
    assert {t["source"] for t in tokens} <= {"prediction", "bonus"}
    assert "specdecode" not in http.post("/v1/chat/completions", json={**body, "specdecode": None}).json()


@pytest.mark.parametrize("extra, fragment", [
    ({"specdecode": {"provenance": True, "colour": 1}}, "specdecode.colour"),
    ({"specdecode": {"provenance": True}, "tools": [{"type": "function", "function": {"name": "f"}}]},
     "cannot be combined with tools"),
])
def test_bad_provenance_requests_are_400s(http, extra, fragment):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **extra}
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 400 and fragment in r.json()["error"]["message"]


def test_the_engine_records_every_tokens_source_without_changing_the_output():
    target, draft = tiny_llama_pair()
    gen = sd.SpeculativeGenerator(target, ModelDrafter(draft))
    kwargs = dict(max_new_tokens=60, temperature=0.8, seed=3, gamma=3)
    plain = gen.generate([5, 6, 7], **kwargs)
    res = gen.generate([5, 6, 7], provenance=True, **kwargs)
    assert res.token_ids == plain.token_ids and plain.provenance is None  # the same draws, the same text
    assert [s.token for s in res.provenance] == res.token_ids
    drafted = [s for s in res.provenance if s.source not in TARGET_SOURCES]
    assert {s.source for s in drafted} <= {"model"} and all(0.0 <= s.p <= 1.0 for s in drafted)
    for s in res.provenance:
        if s.source == "corrected":
            assert s.draft == "model" and 0.0 <= s.p < 1.0
    if res.finish_reason == "length":  # no block cut short: one target token per call
        assert len(drafted) == res.stats.accepted
        assert len(res.provenance) - len(drafted) == res.stats.target_calls


def _byte_tokenizer():
    """Every UTF-8 byte a token (GPT-2's byte alphabet): a character may take several tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    core = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=core)


def test_spans_line_up_with_the_text_across_multibyte_characters_and_stop_strings():
    tok = _byte_tokenizer()
    text = "naïve 😀 café, STOP here"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > len(text)  # several tokens to some characters
    sources = [TokenSource(t, "ngram" if i % 3 else "bonus") for i, t in enumerate(ids)]

    class Started:
        live_provenance: list[TokenSource] = []

    live = LiveProvenance(lambda: Started, tok)
    live.start()
    stream, joined = TextStream(tok, ["STOP"]), []
    for i in range(0, len(ids), 2):  # chunks of two tokens, as target calls emit them
        Started.live_provenance.extend(sources[i : i + 2])
        piece = stream.add(ids[i : i + 2])
        spans = live.spans(piece)["tokens"]
        assert "".join(s["text"] for s in spans) == piece
        joined += spans
        if stream.stopped:
            break
    assert "".join(s["text"] for s in joined) == "naïve 😀 café, "
    smiley = next(s for s in joined if s["text"] == "😀")
    completed = len(tok(text[: text.index("😀") + 1], add_special_tokens=False)["input_ids"]) - 1
    assert smiley["token"] == ids[completed]  # the token that completed the character
    assert all(s["source"] != "unknown" for s in joined)
