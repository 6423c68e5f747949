"""Request fields of OpenAI's function calling: `tools`, `tool_choice`, and the tool history on messages."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Lenient(BaseModel):
    """Unknown fields are ignored and `null` means "not set", as clients send both; types are strict."""

    model_config = ConfigDict(extra="ignore", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _nulls(cls, data: Any) -> Any:
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data


class FunctionDefinition(_Lenient):
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Lenient):
    """One entry of `tools`: {"type": "function", "function": {name, description, parameters}}."""

    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedFunction(_Lenient):
    name: str


class NamedToolChoice(_Lenient):
    """`tool_choice: {"type": "function", "function": {"name": ...}}`: call exactly this function."""

    type: Literal["function"] = "function"
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class ToolCallFunction(_Lenient):
    name: str
    arguments: str | dict[str, Any] = "{}"

    def arguments_object(self) -> Any:
        """The arguments as a JSON value (chat templates render them with `tojson`); a string that is
        not JSON stays a string."""
        if isinstance(self.arguments, dict):
            return self.arguments
        try:
            return json.loads(self.arguments) if self.arguments.strip() else {}
        except json.JSONDecodeError:
            return self.arguments


class ToolCall(_Lenient):
    """An assistant message's call: {"id", "type": "function", "function": {"name", "arguments"}}."""

    id: str | None = None
    type: Literal["function"] = "function"
    function: ToolCallFunction
