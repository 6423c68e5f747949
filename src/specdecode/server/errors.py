"""Request validation errors as OpenAI words them: `{"error": {"message", "type", "param", "code"}}`, the
param the dotted path of the field at fault (`messages.0.content`), the code `missing_required_parameter`,
`invalid_type` or `invalid_value`."""

from __future__ import annotations

from typing import Any

from .schemas import APIError

EXPECTED = {  # pydantic's type errors -> what the field takes, in JSON's words
    "bool_type": "a boolean", "int_type": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "string_type": "a string", "list_type": "an array", "dict_type": "an object",
    "model_type": "an object", "model_attributes_type": "an object", "none_required": "null",
}


def json_type(value: Any) -> str:
    """The JSON type of a parsed value, with its article ("a string", "null")."""
    if value is None:
        return "null"
    for kind, name in ((bool, "a boolean"), (int, "an integer"), (float, "a number"), (str, "a string"),
                       (list, "an array"), (dict, "an object")):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _param(loc: tuple[Any, ...], body: Any, missing: bool) -> str:
    """The field's dotted path in the request: pydantic's location less its union-member tags (the parts
    that are not keys or indices of the body as sent)."""
    parts, node = [], body
    for i, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        elif not (missing and i == len(loc) - 1) and not isinstance(part, int):
            continue  # a union member's tag (e.g. 'bool', 'NamedToolChoice'), not a field
        parts.append(str(part))
    return ".".join(parts)


def _most_telling(errors: list[dict[str, Any]], body: Any) -> dict[str, Any]:
    """The error to report: the first, unless it is one of a union's members refusing the value's type
    while another member of the right type refused the value itself (that one says what is wrong)."""
    first = errors[0]
    if first.get("type") not in EXPECTED and first.get("type") != "literal_error":
        return first
    param = _param(first["loc"], body, missing=False)
    for e in errors[1:]:
        if e.get("type") in EXPECTED or e.get("type") == "literal_error":
            continue
        other = _param(e["loc"], body, missing=e.get("type") == "missing")
        if other == param or other.startswith(param + "."):
            return e
    return first


def validation_error(errors: list[dict[str, Any]], body: Any) -> APIError:
    """The 400 for pydantic's `errors` of a request `body` (the first error; with a union's alternatives)."""
    if not errors:
        return APIError(400, "invalid request", code="invalid_value")
    errors = [{**e, "loc": tuple(x for x in e.get("loc", ()) if x != "body")} for e in errors]
    first = _most_telling(errors, body)
    kind, loc = first.get("type", ""), first["loc"]
    if kind == "json_invalid":
        message = f"the request body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')})"
        return APIError(400, message, None, "invalid_json")
    if not loc and kind == "missing":
        return APIError(400, "the request body is empty: send a JSON object", None,
                        "missing_required_parameter")
    if not loc and kind in EXPECTED:
        return APIError(400, f"the request body must be a JSON object, not {json_type(first.get('input'))}",
                        None, "invalid_type")
    if kind in ("missing", "content_required"):
        param = _param(loc, body, missing=True)
        if kind == "content_required" and not param.endswith("content"):
            param = f"{param}.content" if param else "content"
        why = f": {first['msg']}" if kind == "content_required" else ""
        return APIError(400, f"missing required field '{param}'{why}", param, "missing_required_parameter")
    param = _param(loc, body, missing=False)
    same = [e for e in errors if _param(e["loc"], body, False) == param]
    if kind in EXPECTED:  # with a union, every alternative's type at the same place
        wanted = list(dict.fromkeys(EXPECTED[e["type"]] for e in same if e.get("type") in EXPECTED))
        return APIError(400, f"invalid type for '{param}': expected {' or '.join(wanted)}, got "
                        f"{json_type(first.get('input'))}", param or None, "invalid_type")
    if kind == "extra_forbidden":
        return APIError(400, f"invalid value for '{param}': unknown field (not permitted here)",
                        param or None, "invalid_value")
    message = first.get("msg", "invalid")
    return APIError(400, f"invalid value for '{param}': {message}", param or None, "invalid_value")


def http_error(status: int, detail: Any, cause: BaseException | None = None) -> APIError:
    """Starlette's and FastAPI's own HTTP errors (an unknown path, a wrong method, a body that is not
    JSON text at all) in OpenAI's shape."""
    if status == 400 and cause is not None:
        why = {UnicodeDecodeError: "it is not UTF-8", RecursionError: "it is nested too deeply"}
        reason = next((w for kind, w in why.items() if isinstance(cause, kind)), type(cause).__name__)
        return APIError(400, f"the request body could not be read as JSON: {reason}", None, "invalid_json")
    codes = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
    return APIError(status, str(detail), None, codes.get(status))
