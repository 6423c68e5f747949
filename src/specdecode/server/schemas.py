"""Request bodies of the OpenAI-compatible endpoints, validated, and their OpenAI-shaped errors.

Types are as strict as OpenAI's: no coercion between JSON types (`"yes"` is not a boolean, `"5"` not an
integer, `1.5` not an integer; an integer is a number), and `content` is required on every message but an
assistant's that carries tool calls. Fields OpenAI defines and we honour are typed and range-checked;
fields OpenAI defines that we cannot honour yet (n > 1, echo, logit_bias) are refused with a 400 naming
them rather than silently ignored.
Unknown extra fields are ignored, as clients send many. Structured output, penalties and logprobs are
turned into generation options by `server.constraints`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from ..sampling import TEMPERATURE_MAX
from .tool_schemas import NamedToolChoice, Tool, ToolCall, ToolChoice

MAX_TOKENS_LIMIT = (1 << 31) - 1  # no context holds more; larger values are refused, smaller ones clamped
MAX_MESSAGES = 8192  # more would take the event loop a noticeable time to validate, and fit no context
MAX_STOPS = 64  # each is checked at every token (OpenAI takes 4; Continue sends 10)


class APIError(Exception):
    """An error returned to the client in OpenAI's shape: {"error": {message, type, param, code}}."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        type_: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type_ or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class SpeculativeOptions(BaseModel):
    """Our extension: how to speculate for this request (defaults: the server's settings)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    gamma: int | Literal["auto"] | None = Field(None, description="draft tokens per target call, or auto")
    gamma_max: int | None = Field(None, ge=1, le=32)
    draft: bool = Field(True, description="false: plain decoding of the target for this request")

    @field_validator("gamma")
    @classmethod
    def _gamma(cls, value: Any) -> Any:
        if isinstance(value, int) and not 1 <= value <= 32:
            raise ValueError("gamma must be 'auto' or an integer in 1..32")
        return value


class SpecdecodeOptions(BaseModel):
    """Our extension `specdecode`: what else to report. provenance: every streamed chunk (and a whole
    response) carries a `specdecode` object saying which source produced each token of its text."""

    model_config = ConfigDict(extra="forbid")

    provenance: bool = False


def _drop_nulls(data: Any) -> Any:
    """`null` means "not set", as in OpenAI's API: a field sent as null takes its default."""
    if isinstance(data, dict):
        return {k: v for k, v in data.items() if v is not None}
    return data


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True)

    include_usage: bool = False

    @model_validator(mode="before")
    @classmethod
    def _nulls(cls, data: Any) -> Any:
        return _drop_nulls(data)


class Prediction(BaseModel):
    """OpenAI's Predicted Outputs: {"type": "content", "content": text or [{"type": "text", "text": ...}]}."""

    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["content"]
    content: str | list[dict[str, Any]]

    def text(self) -> str:
        """The predicted text (text parts joined; any other part is refused, naming the field)."""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for i, part in enumerate(self.content):
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise APIError(400, f"prediction.content.{i}: a content part of type {part.get('type')!r} is "
                               "not supported; predictions are text parts ({'type': 'text', 'text': ...})",
                               "prediction")
            parts.append(part["text"])
        return "".join(parts)


class JSONSchemaFormat(BaseModel):
    """`response_format.json_schema`: {"name", "description", "schema", "strict"}."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, strict=True)

    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = False


class ResponseFormat(BaseModel):
    """OpenAI's `response_format`: {"type": "text" | "json_object" | "json_schema", "json_schema": ...}."""

    model_config = ConfigDict(extra="ignore", strict=True)

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


class _Common(BaseModel):
    """Fields shared by /v1/completions and /v1/chat/completions."""

    model_config = ConfigDict(extra="ignore", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _nulls(cls, data: Any) -> Any:
        return _drop_nulls(data)

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    temperature: float = Field(1.0, ge=0.0, le=TEMPERATURE_MAX)  # the bounds of SamplingParams
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)  # extension (as vLLM and llama.cpp accept)
    min_p: float = Field(0.0, ge=0.0, le=1.0)  # extension
    seed: int | None = Field(None, ge=-(1 << 63), le=(1 << 64) - 1)  # what torch.Generator takes
    stop: str | Annotated[list[str], Field(max_length=MAX_STOPS)] | None = None
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    speculative: SpeculativeOptions | None = None
    specdecode: SpecdecodeOptions | None = None  # extension: token provenance (server.provenance)
    prediction: Prediction | None = None
    user: str | None = None
    cache_prompt: bool | None = None  # llama-server's: false reads the whole prompt (no prefix reuse)
    # structured output (server.constraints): OpenAI's response_format, llama-server's grammar / json_schema
    response_format: ResponseFormat | None = None
    grammar: str | None = None
    json_schema: dict[str, Any] | None = None
    # penalties (OpenAI's; llama-server's repeat_penalty and repeat_last_n) and logprobs
    logprobs: bool | int | None = None
    top_logprobs: int | None = None
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    repeat_penalty: float | None = Field(None, gt=0.0)
    repeat_last_n: int | None = Field(None, ge=0)
    # defined by OpenAI, not supported yet: refused unless left at its neutral value
    logit_bias: dict[str, float] | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: Any) -> Any:
        stops = [value] if isinstance(value, str) else (value or [])
        if any(not s for s in stops):
            raise ValueError("stop sequences must be non-empty strings")
        return value

    def unsupported(self) -> None:
        """Raise a 400 for the OpenAI features this server does not implement yet."""
        if self.n != 1:
            raise APIError(
                400,
                f"n={self.n} is not supported: this server generates one choice per request"
                "; send n=1 and one request per choice (concurrent requests are batched)",
                "n",
            )
        checks = [("logit_bias", bool(self.logit_bias))]
        for name, used in checks:
            if used:
                raise APIError(400, f"{name} is not supported by this server yet; leave it out", name)

    @property
    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Common):
    """POST /v1/completions."""

    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None

    def unsupported(self) -> None:
        super().unsupported()
        if self.echo:
            raise APIError(400, "echo is not supported by this server yet; leave it out", "echo")
        if self.best_of not in (None, 1):
            raise APIError(400, "best_of > 1 is not supported: one choice per request", "best_of")
        if self.suffix:
            raise APIError(400, "suffix (insertion) is not supported by this server", "suffix")

    def prompt_value(self) -> str | list[int]:
        """The one prompt, as text or token ids (a batch of prompts is refused)."""
        p = self.prompt
        if isinstance(p, list) and p and isinstance(p[0], (str, list)):
            if len(p) != 1:
                raise APIError(
                    400,
                    f"{len(p)} prompts in one request are not supported (no batching yet): "
                    "send one prompt per request",
                    "prompt",
                )
            p = p[0]
        if not p:
            raise APIError(400, "prompt is empty: send some text or token ids", "prompt")
        return p


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # assistant messages: the calls it made
    tool_call_id: str | None = None  # tool messages: the call this result answers

    @model_validator(mode="after")
    def _content(self) -> ChatMessage:
        """`content` is required (not missing, not null) but on an assistant message with tool calls."""
        if self.content is None and (self.role != "assistant" or not self.tool_calls):
            need = ("an assistant message needs content, or tool_calls" if self.role == "assistant" else
                    f"a {self.role} message needs content: a string or an array of content parts")
            raise PydanticCustomError("content_required", need)
        return self

    def text(self) -> str:
        """The message's text (content parts of type "text" joined; other parts refused)."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        parts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise APIError(
                    400,
                    f"content part of type {part.get('type')!r} is not supported: this is a "
                    "text model; send text parts only",
                    "messages",
                )
            parts.append(part["text"])
        return "".join(parts)

    def for_template(self) -> dict[str, Any]:
        """The message as chat templates take it (tool calls with their arguments as JSON objects)."""
        out: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role,
                               "content": self.text()}
        if self.name is not None:
            out["name"] = self.name
        if self.tool_calls:
            out["tool_calls"] = [
                {"id": c.id, "type": "function",
                 "function": {"name": c.function.name, "arguments": c.function.arguments_object()}}
                for c in self.tool_calls
            ]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


class ChatCompletionRequest(_Common):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(max_length=MAX_MESSAGES)
    tools: list[Tool] | None = Field(None, max_length=128)  # OpenAI's limit
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool = True

    def unsupported(self) -> None:
        super().unsupported()
        if not self.messages:
            raise APIError(400, "messages is empty: send at least one message", "messages")
        if self.tool_choice not in (None, "none", "auto") and not self.tools:
            raise APIError(400, f"tool_choice {self.choice!r} needs tools: send the functions in 'tools'",
                           "tool_choice")
        if isinstance(self.tool_choice, NamedToolChoice):
            names = [t.function.name for t in self.tools or []]
            if self.tool_choice.function.name not in names:
                raise APIError(400, f"tool_choice names the function {self.tool_choice.function.name!r}, "
                               f"which is not among the tools ({', '.join(names)})", "tool_choice")

    @property
    def choice(self) -> str:
        """none, auto, required or the named function (default: auto with tools, else none)."""
        if isinstance(self.tool_choice, NamedToolChoice):
            return self.tool_choice.function.name
        return self.tool_choice or ("auto" if self.tools else "none")

    def chat_messages(self) -> list[dict[str, Any]]:
        return [m.for_template() for m in self.messages]
