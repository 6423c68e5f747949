"""Does `specdecode serve` see and answer a client's chat request as llama-server does? For each recorded
request body (an OpenAI chat request, as a client sent it): the prompt text our GGUF chat template renders
against llama-server's `/apply-template`, the token ids against its `/tokenize`, and the first greedy tokens
(plain decoding, no drafts) ours and llama-server's, each with flash attention off and on.

    python benchmarks/template_parity.py record --port 8799 --prefix /tmp/req   # point a client at it
    python benchmarks/template_parity.py compare /tmp/req-1.json --out docs/benchmarks/DATE-parity

`record` answers every chat request with a 400 after saving its body (PREFIX-N.json), so the client stops
there. `compare` writes results.json and report.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from specdecode.bench.llama_server import LlamaServerRunner, find_llama_server  # noqa: E402
from specdecode.machine import describe  # noqa: E402


def record(port: int, prefix: str) -> None:
    """Serve on 127.0.0.1:`port`, saving each POSTed body to `prefix`-N.json and answering 400."""
    count = [0]

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:  # noqa: N802  (http.server's name)
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            count[0] += 1
            path = f"{prefix}-{count[0]}.json"
            Path(path).write_bytes(body)
            print(f"saved {path}", flush=True)
            self._reply(400, {"error": {"message": "recorded by template_parity.py",
                                        "type": "invalid_request_error"}})

        def do_GET(self) -> None:  # noqa: N802
            self._reply(200, {"object": "list", "data": [{"id": "recorded", "object": "model"}]})

    HTTPServer(("127.0.0.1", port), Handler).serve_forever()


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    import httpx

    r = httpx.post(url, json=body, timeout=1800)
    r.raise_for_status()
    return r.json()


def llama_server_side(gguf: str, requests: list[dict[str, Any]], tokens: int, fa: bool
                      ) -> list[dict[str, Any]]:
    """llama-server's rendering, ids and first greedy `tokens` for each request."""
    binary = find_llama_server()
    if binary is None:
        raise SystemExit("llama-server is not built: make llama-server")
    flags = ["--jinja", "-fa", "on" if fa else "off"]
    srv = LlamaServerRunner(binary, gguf, "plain", n_ctx=16384, extra=flags)
    try:
        out = []
        for req in requests:
            text = _post(f"{srv.url}/apply-template", {"messages": req["messages"]})["prompt"]
            ids = _post(f"{srv.url}/tokenize", {"content": text, "add_special": False,
                                                 "parse_special": True})["tokens"]
            done = _post(f"{srv.url}/completion", {"prompt": ids, "n_predict": tokens, "temperature": 0,
                                                   "cache_prompt": False, "return_tokens": True})
            out.append({"text": text, "ids": ids, "greedy": [int(t) for t in done["tokens"]]})
        return out
    finally:
        srv.close()


def our_side(requests: list[dict[str, Any]], tokens: int, fa: bool) -> list[dict[str, Any]]:
    """Our rendering, ids and first greedy `tokens` (plain decoding) for each request."""
    from specdecode import SpeculativeGenerator, load_model

    target = load_model("qwen2.5-coder-1.5b", quiet=True, flash_attn=fa)
    gen = SpeculativeGenerator(target)
    tok = target.tokenizer
    out = []
    for req in requests:
        text = tok.apply_chat_template(req["messages"], add_generation_prompt=True, tokenize=False)
        ids = gen.encode(req["messages"], chat=True)
        res = gen.generate(ids, max_new_tokens=tokens, temperature=0.0, gamma=1, cache_prompt=False,
                           logprobs=2)
        margins = [round(lp.top[0][1] - lp.top[1][1], 4) if len(lp.top) > 1 else None for lp in res.logprobs]
        out.append({"text": text, "ids": ids, "greedy": list(res.token_ids), "margins": margins})
    return out


def first_difference(a: list[Any] | str, b: list[Any] | str) -> int | None:
    """The first index where `a` and `b` differ (the shorter length when one is a prefix), None if equal."""
    if a == b:
        return None
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def _at(position: int | None, margin: float | None = None) -> str:
    if position is None:
        return "none"
    return f"{position} ({margin:.3f})" if margin is not None else str(position)


def compare(paths: list[str], tokens: int, out: Path) -> int:
    from specdecode.registry import BUILTINS, gguf_file

    gguf = str(gguf_file(BUILTINS["qwen2.5-coder-1.5b"], quiet=True))
    requests = [json.loads(Path(p).read_text()) for p in paths]
    sides = {}
    for fa in (False, True):
        sides[f"llama-server fa={'on' if fa else 'off'}"] = llama_server_side(gguf, requests, tokens, fa)
        sides[f"specdecode fa={'on' if fa else 'off'}"] = our_side(requests, tokens, fa)
    rows = []
    for i, path in enumerate(paths):
        ours, theirs = sides["specdecode fa=off"][i], sides["llama-server fa=off"][i]
        row = {"request": path, "prompt_tokens": len(theirs["ids"]),
               "text_diff_at": first_difference(ours["text"], theirs["text"]),
               "ids_diff_at": first_difference(ours["ids"], theirs["ids"])}
        for fa in ("off", "on"):
            mine = sides[f"specdecode fa={fa}"][i]
            at = first_difference(mine["greedy"], sides[f"llama-server fa={fa}"][i]["greedy"])
            row[f"greedy_diff_at_fa_{fa}"] = at
            # our top-1 minus top-2 log-probability where the two first differ: a near-tie when small
            inside = at is not None and at < len(mine["margins"])
            row[f"margin_fa_{fa}"] = mine["margins"][at] if inside else None
        a, b = sides["specdecode fa=off"][i]["greedy"], sides["specdecode fa=on"][i]["greedy"]
        row["greedy_diff_at_ours_fa_off_vs_on"] = first_difference(a, b)
        row["texts"] = {name: s[i]["greedy"] for name, s in sides.items()}
        rows.append(row)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"machine": describe(), "tokens": tokens, "rows": rows},
                                                 indent=1))
    lines = ["# Chat requests as specdecode and llama-server see them", "", f"Machine: {describe()}",
             f"Command: `{' '.join(sys.argv)}`", "",
             "First differing position (none: equal); greedy = first tokens of plain decoding, "
             f"{tokens} at most; where ours and llama-server's greedy tokens differ, our log-probability "
             "margin between the top two tokens there in brackets (a near-tie when small).", "",
             "| request | prompt tokens | rendered text | token ids | greedy, fa off | greedy, fa on | "
             "ours fa off vs on |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        greedy = [_at(r["greedy_diff_at_fa_off"], r["margin_fa_off"]),
                  _at(r["greedy_diff_at_fa_on"], r["margin_fa_on"])]
        cells = [_at(r["text_diff_at"]), _at(r["ids_diff_at"]), *greedy,
                 _at(r["greedy_diff_at_ours_fa_off_vs_on"])]
        lines.append(f"| {Path(r['request']).name} | {r['prompt_tokens']} | " + " | ".join(cells) + " |")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    bad = [r for r in rows if r["text_diff_at"] is not None or r["ids_diff_at"] is not None]
    return 1 if bad else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record", help="save the chat requests a client sends, answering 400")
    r.add_argument("--port", type=int, default=8799)
    r.add_argument("--prefix", required=True)
    c = sub.add_parser("compare", help="compare recorded requests with llama-server")
    c.add_argument("requests", nargs="+")
    c.add_argument("--tokens", type=int, default=60)
    c.add_argument("--out", default="results/template-parity")
    args = p.parse_args()
    if args.cmd == "record":
        record(args.port, args.prefix)
        return 0
    return compare(args.requests, args.tokens, Path(args.out))


if __name__ == "__main__":
    sys.exit(main())
