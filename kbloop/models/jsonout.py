"""Strict JSON from language models: repair the usual slips, then validate against a schema.

Small local models wrap JSON in code fences, add prose around it or leave trailing commas.
``parse_json`` repairs exactly those and nothing more; anything else is a ``JsonOutputError``
that says what was wrong, so the caller can retry once with that message.
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
    closer = "}" if text[start] == "{" else "]"
    end = text.rfind(closer)
    if end < start:
        raise JsonOutputError("unterminated JSON in the output")
    return text[start:end + 1]


_TYPES = {
    "object": dict, "array": list, "string": str, "boolean": bool,
    "integer": int, "number": (int, float), "null": type(None),
}


def validate(value: Any, schema: dict, where: str = "$") -> None:
    """The subset of JSON Schema that kbloop's prompts use: type, properties, required,
    enum, minimum, maximum, items, minLength."""
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


def schema_instructions(schema: dict) -> str:
    return (
        "Reply with only a JSON object, no prose and no code fences, that matches this JSON schema:\n"
        + json.dumps(schema, indent=None, sort_keys=True)
    )
