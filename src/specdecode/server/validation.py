"""A request's checks and tokenisation, on threads of their own, ahead of the generation queue.

Everything that decides whether a request can run (the features it asks for, its output constraint, the
model it names, its prompt's and prediction's token counts against the context window, its token budget)
happens here, before it waits for the model: a bad request is refused while the model is busy, and
rendering, tokenising or compiling a grammar never holds up the event loop. A text far too long for the
context window is counted in pieces and refused once its count is past the window, so a huge prompt costs
a fraction of tokenising it whole.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..structured import Constraint
from .constraints import generation_options
from .replies import tool_use_for
from .schemas import APIError, ChatCompletionRequest, CompletionRequest, _Common

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # as OpenAI's legacy completions endpoint (and vLLM's)
DEFAULT_MAX_TOKENS_UNBOUNDED = 1 << 20  # a model with no known context window: until end of sequence
COUNT_AHEAD_CHARS = 1 << 18  # texts longer than this are counted in pieces before they are tokenised whole
PIECE_CHARS = 1 << 16  # the pieces' size
CUT_SLACK = 16  # tokens a cut between two pieces may add to their count, at most (a few, in practice)


@dataclass
class Prepared:
    """What a request's generation starts from, once every check has passed."""

    prompt_ids: list[int]
    budget: int  # completion tokens at most
    prediction: list[int] | None
    options: dict[str, Any]  # generation options (structured output, penalties, logprobs)
    tool_use: Any  # replies.ToolUse, or None


def template_errors() -> tuple[type[BaseException], ...]:
    """The exceptions a chat template raises for messages it refuses (the client's fault: a 400)."""
    try:
        from jinja2 import TemplateError
    except ImportError:
        return (ValueError,)
    return (ValueError, TemplateError)


def pieces(texts: list[str], size: int = PIECE_CHARS) -> Iterator[str]:
    """`texts` cut into pieces of about `size` characters, at whitespace where there is some near the cut."""
    for text in texts:
        at = 0
        while at < len(text):
            end = min(at + size, len(text))
            if end < len(text):
                near = at + size * 3 // 4
                space = max(text.rfind(" ", near, end), text.rfind("\n", near, end))
                end = space if space > at else end
            yield text[at:end]
            at = end


class Intake:
    """Prepares requests for `gen` on `workers` threads: checks, prompt and prediction token ids, budget."""

    def __init__(self, gen: Any, model_name: str, context: int | None, per: str = "",
                 default_max_tokens: int | None = None, workers: int | None = None) -> None:
        from ..backends.gguf_tokenizer import GGUFTokenizer

        self.gen, self.model_name, self.context, self.per = gen, model_name, context, per
        self.default_max_tokens = default_max_tokens
        self.template_errors = template_errors()
        # llama.cpp tokenises on any number of threads at once; a transformers tokenizer on one
        workers = workers or (2 if isinstance(gen.tokenizer, GGUFTokenizer) else 1)
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="specdecode-intake")

    async def prepare(self, body: _Common, chat: bool) -> Prepared:
        """The request's `Prepared`, or the APIError that refuses it: the checks that need no tokenizer
        at once (so that they never wait behind another request's tokenising), the rest on a thread."""
        body.unsupported()
        self._check_model(body)
        if isinstance(body, ChatCompletionRequest):
            prompt: Any = body.chat_messages()
        else:
            assert isinstance(body, CompletionRequest)
            prompt = body.prompt_value()
        return await asyncio.get_running_loop().run_in_executor(self.executor, self._prepare, body, chat,
                                                                prompt)

    async def call(self, fn: Any, *args: Any) -> Any:
        """`fn(*args)` on an intake thread (tokenising for /tokenize and the like)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    # -- on an intake thread --------------------------------------------------------------------------
    def _prepare(self, body: _Common, chat: bool, prompt: Any) -> Prepared:
        options = generation_options(body, chat)
        tool_use = None
        if chat:
            assert isinstance(body, ChatCompletionRequest)
            tool_use = tool_use_for(body, self.gen.tokenizer)
            offered = [t.model_dump(exclude_none=True) for t in tool_use.tools] if tool_use else None
            texts = [m["content"] for m in prompt] + ([json.dumps(offered)] if offered else [])
            self._count_ahead(texts, "messages", "prompt")
            prompt_ids = self._encode(prompt, True, offered)
            default = self.default_max_tokens
        else:
            if isinstance(prompt, str):
                self._count_ahead([prompt], "prompt", "prompt")
            prompt_ids = self._encode(prompt, False)
            default = COMPLETIONS_DEFAULT_MAX_TOKENS
        budget = self._budget(body, len(prompt_ids), default)
        prediction = self._prediction_ids(body)
        if tool_use is not None and tool_use.grammar is not None:  # tool_choice required or a named function
            if "constraint" in options:
                raise APIError(400, "tool_choice 'required' or a named function cannot be combined with "
                               "response_format, grammar or json_schema", "tool_choice")
            options["constraint"] = Constraint.grammar(tool_use.grammar)  # the call, token by token
        return Prepared(prompt_ids, budget, prediction, options, tool_use)

    def _check_model(self, body: _Common) -> None:
        if body.model not in (None, "", self.model_name):
            raise APIError(404, f"model '{body.model}' is not served here; this server serves "
                           f"'{self.model_name}' (see GET /v1/models)", "model", "model_not_found")

    def _encode(self, prompt: Any, chat: bool, tools: list[dict[str, Any]] | None = None) -> list[int]:
        try:
            return self.gen.encode(prompt, chat, tools)
        except self.template_errors as e:
            what = "the model's chat template refused these messages: " if chat else ""
            raise APIError(400, f"{what}{e}", "messages" if chat else "prompt") from None

    def _count_ahead(self, texts: list[str], param: str, what: str) -> None:
        """A 400 (context_length_exceeded) for texts that cannot fit the context window, found by counting
        their tokens in pieces until the count is past the window (short texts are not counted)."""
        tok, context = self.gen.tokenizer, self.context
        chars = sum(len(t) for t in texts)
        if tok is None or context is None or chars <= COUNT_AHEAD_CHARS:
            return
        count = 0
        for n, piece in enumerate(pieces(texts), 1):
            count += len(tok(piece, add_special_tokens=False)["input_ids"])
            if count > context + CUT_SLACK * n:  # past the window whatever the cuts changed
                raise APIError(400, f"the {what} is {chars} characters, more than {count} tokens (counted "
                               f"before the rest was read), but the model's context window{self.per} is "
                               f"{context}: shorten it", param, "context_length_exceeded")

    def _budget(self, body: _Common, prompt_len: int, default: int | None) -> int:
        """The completion's token limit: what the request asks, clamped to the room the context has left
        (the generation then ends with finish_reason length); without a limit, the context's end."""
        asked, context = body.token_limit, self.context
        if context is None:
            return asked or default or DEFAULT_MAX_TOKENS_UNBOUNDED
        if prompt_len >= context:
            raise APIError(
                400,
                f"the prompt is {prompt_len} tokens but the model's context window{self.per} is {context}: "
                "shorten it",
                "messages" if hasattr(body, "messages") else "prompt",
                "context_length_exceeded",
            )
        return min(asked or default or context, context - prompt_len)

    def _prediction_ids(self, body: _Common) -> list[int] | None:
        """The request's predicted output as token ids, within the context window (else a 400)."""
        if body.prediction is None:
            return None
        text = body.prediction.text()
        tok, context = self.gen.tokenizer, self.context
        if tok is None:
            raise APIError(400, "prediction needs a tokenizer, and this model has none", "prediction")
        self._count_ahead([text], "prediction", "prediction")
        ids = tok(text, add_special_tokens=False)["input_ids"]
        if context is not None and len(ids) > context:
            raise APIError(400, f"the prediction is {len(ids)} tokens, more than the model's context "
                           f"window of {context}: send a shorter prediction", "prediction",
                           "context_length_exceeded")
        return list(ids)
