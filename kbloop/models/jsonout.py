"""Strict JSON from language models: repair the usual slips, then validate against a schema.

Small local models wrap JSON in code fences, add prose around it, leave trailing commas, or
run out of tokens inside a long last string (a judge's "reason"). ``parse_json`` repairs
exactly those and nothing more; the schema still decides whether what remains will do.
Anything else is a ``JsonOutputError`` that says what was wrong, so the caller can retry once
with that message.
"""

from __future__ import annotations

import json
import re
from typing import Any

from kbloop.errors import KbloopError


class JsonOutputError(KbloopError):
    """A model's answer was not valid JSON for the schema, even after one retry."""


FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)
TRAILING_COMMA = re.compile(r",(\s*[}\]])")


def parse_json(text: str, schema: dict) -> Any:
    candidate = _extract(text)
    try:
        value = json.loads(candidate)
    except json.JSONDecodeError:
        try:
            value = json.loads(TRAILING_COMMA.sub(r"\1", candidate))
        except json.JSONDecodeError as exc:
            raise JsonOutputError(f"not valid JSON ({exc.msg} at char {exc.pos})") from None
    validate(value, schema)
    return value


def _extract(text: str) -> str:
    fenced = FENCE.search(text)
    if fenced:
        text = fenced.group(1)
    start = min((i for i in (text.find("{"), text.find("[")) if i >= 0), default=-1)
    if start < 0:
        raise JsonOutputError("no JSON object in the output")
    cut = _close_cut_string(text[start:])
    if cut is not None:
        return cut
    closer = "}" if text[start] == "{" else "]"
    end = text.rfind(closer)
    if end < start:
        raise JsonOutputError("unterminated JSON in the output")
    return text[start:end + 1]


def _close_cut_string(text: str) -> str | None:
    """``{"score": 4, "reason": "The answer agr`` (cut off by the token limit inside a string)
    closed as ``{"score": 4, "reason": "The answer agr"}``; None when the text is not cut off
    inside a string."""
    open_brackets: list[str] = []
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            open_brackets.append("}" if ch == "{" else "]")
        elif ch in "}]":
            if not open_brackets:
                return None
            open_brackets.pop()
            if not open_brackets:
                return None  # a complete value: nothing was cut off
    if not in_string or not open_brackets:
        return None
    return text.rstrip("\\") + '"' + "".join(reversed(open_brackets))


_TYPES = {
    "object": dict, "array": list, "string": str, "boolean": bool,
    "integer": int, "number": (int, float), "null": type(None),
}


def validate(value: Any, schema: dict, where: str = "$") -> None:
    """The subset of JSON Schema that kbloop's prompts use: type, properties, required,
    enum, minimum, maximum, items, minLength, maxLength."""
    expected = schema.get("type")
    if expected:
        types = expected if isinstance(expected, list) else [expected]
        ok = any(isinstance(value, _TYPES[t]) and not (t in ("integer", "number") and isinstance(value, bool))
                 for t in types)
        if not ok:
            raise JsonOutputError(f"{where} should be {' or '.join(types)}, got {type(value).__name__}")
    if "enum" in schema and value not in schema["enum"]:
        raise JsonOutputError(f"{where} should be one of {schema['enum']}, got {value!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            raise JsonOutputError(f"{where} should be >= {schema['minimum']}, got {value}")
        if "maximum" in schema and value > schema["maximum"]:
            raise JsonOutputError(f"{where} should be <= {schema['maximum']}, got {value}")
    if isinstance(value, str) and len(value) < schema.get("minLength", 0):
        raise JsonOutputError(f"{where} should have at least {schema['minLength']} characters")
    if isinstance(value, str) and len(value) > schema.get("maxLength", len(value)):
        raise JsonOutputError(f"{where} should have at most {schema['maxLength']} characters")
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                raise JsonOutputError(f"{where} is missing required key {key!r}")
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                validate(value[key], sub, f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            validate(item, schema["items"], f"{where}[{i}]")


def shape(schema: dict) -> str:
    """The reply a schema asks for, written as a JSON-like template with placeholders:
    ``{"correctness": <integer 1 to 5>, "reason": "<text>"}``. Small models asked to match a
    JSON schema tend to echo the schema itself; given the shape, they fill it in."""
    kind = schema.get("type")
    if "enum" in schema:
        return " or ".join(json.dumps(v) for v in schema["enum"])
    if kind == "object":
        fields = ", ".join(f"{json.dumps(k)}: {shape(v)}" for k, v in schema.get("properties", {}).items())
        return "{" + fields + "}"
    if kind == "array":
        return f"[{shape(schema.get('items', {}))}, ...]"
    if kind in ("integer", "number"):
        lo, hi = schema.get("minimum"), schema.get("maximum")
        span = f" {lo} to {hi}" if lo is not None and hi is not None else ""
        return f"<{kind}{span}>"
    if kind == "boolean":
        return "true or false"
    return '"<text>"'


def schema_instructions(schema: dict) -> str:
    return (
        "Reply with only one JSON object, no prose and no code fences, in exactly this shape "
        "(replace each <...> with your value):\n" + shape(schema)
    )
