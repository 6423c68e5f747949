"""The web page at `/` in a real browser: Playwright driving headless Chromium (Debian's `chromium`,
installed by `make test`) against a real `specdecode serve` on loopback with the tiny test models, and
the real app on a scripted model where a test needs a model that writes a known file.

Skipped, with the reason, only when no browser is installed."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest

import specdecode as sd

from .scripted import ScriptedLM
from .test_clients import _Server
from .test_server import _metric, _start, _stop
from .tiny_models import save_pair

CHROMIUM = os.environ.get("SPECDECODE_CHROMIUM", "/usr/bin/chromium")
# without the background-networking flags Chromium waits on services it cannot reach from a closed network
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
CONTEXT = 4096  # the tiny target's window: room for a generation still running when Stop is pressed
TIMEOUT_MS = 60_000

ORIGINAL = "".join(f"def f{i}(x):\n    return x + {i}\n\n\n" for i in range(6))
EDITED = ORIGINAL.replace("return x + 3\n", "return x * 3\n")


def _browser_or_skip() -> str:
    """The Chromium to drive: $SPECDECODE_CHROMIUM or Debian's, else one `playwright install` fetched."""
    if Path(CHROMIUM).exists():
        return CHROMIUM
    cache = Path(os.environ.get("PLAYWRIGHT_BROWSERS_PATH") or Path.home() / ".cache" / "ms-playwright")
    fetched = sorted(cache.glob("chromium-*/chrome-linux*/chrome"))
    if fetched:
        return str(fetched[-1])
    pytest.skip(f"no browser installed at {CHROMIUM}: `apt-get install chromium` (make test does it), "
                "or `python -m playwright install chromium` where that download is reachable")


@pytest.fixture(scope="module")
def browser():
    path = _browser_or_skip()
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: "
                                   "pip install 'specdecode[test]'")
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=path, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[str, str]:
    _browser_or_skip()  # no models built, no server started, when the tests cannot run
    return save_pair(tmp_path_factory.mktemp("web-models"), max_positions=CONTEXT)


@pytest.fixture(scope="module")
def server(pair):
    proc, url = _start(pair)
    yield url
    _stop(proc)


def edit_reply(prompt: str) -> str:
    """What the scripted model writes: the file of an edit request with the asked change, in one fenced
    block; otherwise a short greeting."""
    if "Instruction:" in prompt:
        return "```python\n" + EDITED + "```"
    return "Hello from the scripted model."


@pytest.fixture(scope="module")
def scripted():
    from specdecode.server import ServerSettings, create_app

    _browser_or_skip()
    srv = _Server(create_app(sd.SpeculativeGenerator(ScriptedLM(edit_reply, max_length=8192)),
                             ServerSettings("scripted", gamma=16)))
    yield srv.url
    srv.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.errors = []  # console errors and uncaught exceptions
    page.on("console", lambda m: m.type == "error" and page.errors.append(m.text))
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    yield page
    context.close()


def _open(page, url: str, **settings: str) -> None:
    page.goto(url + "/")
    page.wait_for_function("document.getElementById('server-line').textContent.includes(' · ')")
    for field, value in settings.items():
        if field == "drafter":
            page.select_option("#drafter", value)
        else:
            page.fill(f"#{field}", value)


def _send(page, text: str) -> None:
    page.fill("#input", text)
    page.press("#input", "Enter")


def _answer_done(page) -> None:
    page.wait_for_selector(".msg.assistant:last-child .stats, .msg.assistant:last-child .error")


def _spans(page) -> list[dict]:
    return page.eval_on_selector_all(
        ".msg.assistant:last-child .content .tok",
        "nodes => nodes.map(n => ({text: n.textContent, cls: n.className, source: n.dataset.source, "
        "draft: n.dataset.draft || null, title: n.title}))")


def _greedy(url: str, content: str, max_tokens: int) -> dict:
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, "temperature": 0,
            "speculative": {"draft": False}}
    r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]


def test_the_page_loads_with_no_console_errors(page, server):
    _open(page, server)
    assert "tiny" in page.inner_text("#server-line") and "plain" in page.inner_text("#server-line")
    info = httpx.get(f"{server}/specdecode/info").json()
    assert info["model"] == "tiny" and info["drafter"] == "model" and info["plain_tokens_per_s"] > 0
    assert page.title() == "specdecode"
    assert page.is_visible("#composer") and page.is_hidden("#edit-view")
    assert page.errors == []


def test_a_message_streams_and_renders_and_is_kept(page, server):
    expected = _greedy(server, "hello", 40)["message"]["content"]
    _open(page, server, **{"max-tokens": "40", "temperature": "0"})
    with page.expect_response("**/v1/chat/completions") as reply:
        _send(page, "hello")
    assert reply.value.headers["content-type"].startswith("text/event-stream")
    _answer_done(page)
    assert page.inner_text(".msg.user .content") == "hello"
    assert "".join(s["text"] for s in _spans(page)) == expected  # the greedy text, token by token
    stats = page.inner_text(".msg.assistant .stats")
    assert "tok/s" in stats and "TTFT" in stats and "tokens/target call" in stats and "cached prompt" in stats
    assert "vs plain" in stats  # the server measured its plain rate (gamma=auto's cost curve)
    page.reload()  # the conversation is kept in the browser
    page.wait_for_selector(".msg.assistant .tok")
    assert "".join(s["text"] for s in _spans(page)) == expected
    page.click("#new-chat")
    assert page.query_selector(".msg") is None
    assert page.errors == []


def test_tokens_are_coloured_by_their_source_for_a_known_prediction(page, server):
    reply = _greedy(server, "abc", 30)["message"]["content"]
    assert len(reply) >= 12
    _open(page, server, **{"max-tokens": "30", "temperature": "0", "gamma": "4", "prediction": reply})
    _send(page, "abc")
    _answer_done(page)
    spans = _spans(page)
    assert "".join(s["text"] for s in spans) == reply  # one character, one token: one span each
    # a perfect prediction: blocks of 4 accepted prediction tokens, each followed by the target's bonus
    for i, s in enumerate(spans[:20]):
        if i % 5 == 4:
            assert s["source"] == "bonus" and "src-target" in s["cls"], (i, s)
        else:
            assert s["source"] == "prediction" and "src-prediction" in s["cls"], (i, s)
            assert "acceptance probability 1.00" in s["title"]
    assert "prediction" in page.inner_text(".msg.assistant .stats")

    k = 7  # a wrong character: the target rejects it and writes its own
    wrong = "#" if reply[k] != "#" else "$"
    page.click("#new-chat")
    page.fill("#prediction", reply[:k] + wrong + reply[k + 1 :])
    _send(page, "abc")
    _answer_done(page)
    spans = _spans(page)
    assert "".join(s["text"] for s in spans) == reply  # the prediction never changes the text
    assert [s["source"] for s in spans[:k]] == ["prediction"] * 4 + ["bonus"] + ["prediction"] * 2
    assert spans[k]["source"] == "corrected" and "src-corrected" in spans[k]["cls"]
    assert spans[k]["draft"].startswith("prediction") and spans[k]["text"] == reply[k]
    assert "rejected" in spans[k]["title"]
    assert page.errors == []


def test_stop_cancels_the_stream_and_the_server_frees_the_slot(page, server):
    budget = 3500
    # a prompt the random model answers without an end of sequence: still running when Stop is pressed
    prompt = next(p for p in "abcdefgh" if _greedy(server, p, 200)["finish_reason"] == "length")
    cancelled = _metric(server, "specdecode_generations_cancelled_total")
    _open(page, server, **{"max-tokens": str(budget), "temperature": "0", "drafter": "none"})
    _send(page, prompt)
    page.wait_for_function("document.querySelectorAll('.msg.assistant .tok').length >= 30")
    assert page.is_enabled("#stop") and page.is_disabled("#send")
    page.click("#stop")
    page.wait_for_selector(".msg.assistant .note")
    assert page.inner_text(".msg.assistant .note") == "stopped"
    shown = len(_spans(page))
    assert shown < budget and page.is_enabled("#send")
    deadline = time.time() + 60
    while _metric(server, "specdecode_generations_cancelled_total") == cancelled and time.time() < deadline:
        time.sleep(0.2)
    assert _metric(server, "specdecode_generations_cancelled_total") == cancelled + 1
    assert _metric(server, "specdecode_requests_running") == 0
    assert len(_spans(page)) == shown  # nothing arrives after Stop
    page.fill("#max-tokens", "5")  # the model is free for the next message at once
    start = time.perf_counter()
    _send(page, "hi")
    page.wait_for_function("document.querySelectorAll('.msg.assistant')[1].querySelector('.stats')")
    assert time.perf_counter() - start < 30
    assert page.errors == []


def test_a_prompt_too_long_shows_a_readable_error(page, server):
    _open(page, server)
    _send(page, "x" * (CONTEXT + 100))
    _answer_done(page)
    error = page.inner_text(".msg.assistant .error")
    assert "Error 400" in error and "context window" in error and "shorten" in error
    assert page.is_visible(".msg.user") and page.is_enabled("#send")
    # the browser itself logs the failed request; nothing else may fail
    assert all("400" in e for e in page.errors), page.errors


def test_edit_mode_renders_a_coloured_diff(page, scripted, browser):
    _open(page, scripted, gamma="16")
    page.click("#tab-edit")
    assert page.is_hidden("#chat-view") and page.is_visible("#edit-view")
    page.fill("#edit-file", ORIGINAL)
    page.fill("#edit-instruction", "make f3 multiply")
    page.click("#edit-run")
    page.wait_for_function("document.getElementById('edit-status').textContent === 'done'")
    assert page.inner_text(".diff .line.del") == "    return x + 3"
    assert page.inner_text(".diff .line.add") == "    return x * 3"
    added = page.eval_on_selector_all(".diff .line.add .tok", "ns => ns.map(n => n.dataset.source)")
    assert "corrected" in added  # where the file changed, the target wrote its own tokens
    kept = page.eval_on_selector_all(".diff .line.ctx .tok", "ns => ns.map(n => n.dataset.source)")
    assert kept and sum(s.startswith("prediction") for s in kept) > len(kept) / 2  # copied from the file
    assert "unchanged lines" in page.inner_text(".diff")  # long unchanged stretches are folded
    assert "prediction" in page.inner_text("#edit-stats")
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=scripted)
    page.click("#edit-copy")
    page.wait_for_function("document.getElementById('edit-status').textContent === 'copied'")
    assert page.evaluate("navigator.clipboard.readText()") == EDITED
    assert page.errors == []


def test_with_an_api_key_the_page_asks_for_it_and_sends_it(page, pair):
    proc, url = _start(pair, "--api-key", "s3cret")
    try:
        for path in ("/", "/static/app.js", "/static/style.css", "/favicon.ico"):
            assert httpx.get(url + path).status_code == 200  # the page itself needs no key ...
        assert httpx.get(f"{url}/specdecode/info").status_code == 401  # ... what it reads does
        sent = []
        page.on("request", lambda r: "/v1/" in r.url and sent.append(r.headers.get("authorization")))
        page.goto(url + "/")
        page.wait_for_selector("#key-dialog[open]")
        page.fill("#key-input", "s3cret")
        page.click("#key-save")
        page.wait_for_function("document.getElementById('server-line').textContent.includes('tiny')")
        page.fill("#max-tokens", "8")
        _send(page, "hi")
        _answer_done(page)
        assert page.query_selector(".msg.assistant .error") is None
        assert page.query_selector_all(".msg.assistant .tok")
        assert sent and all(h == "Bearer s3cret" for h in sent)
        assert all("401" in e for e in page.errors), page.errors  # only the first, keyless call
    finally:
        _stop(proc)
