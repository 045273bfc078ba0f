"""A conversation's generation settings (DESIGN.md "Reasoning models and generation
settings"): each is sent to the upstream under its own name, only when set."""
from __future__ import annotations

from typing import Any

import orjson

from realtime_llm.errors import BadRequest

RANGES: dict[str, tuple[float, float]] = {"temperature": (0, 2), "top_p": (0, 1), "max_tokens": (1, 1_000_000)}
EFFORTS = ("low", "medium", "high")
NAMES = (*RANGES, "reasoning_effort")


def parse_params(value: Any, current: dict[str, Any] | None = None) -> dict[str, Any]:
    """The settings a create asks for (`current` None; a null leaves one unset), or those an
    update leaves (`current` changed; a null clears one). Anything unknown, mistyped or out
    of range is a 400."""
    if not isinstance(value, dict):
        raise BadRequest("'params' must be an object")
    params = dict(current or {})
    for name, setting in value.items():
        if name not in NAMES:
            raise BadRequest(f"unknown setting 'params.{str(name)[:40]}'; known: {', '.join(NAMES)}")
        if setting is None:
            params.pop(name, None)
        elif name == "reasoning_effort":
            if setting not in EFFORTS:
                raise BadRequest(f"'params.reasoning_effort' must be one of {', '.join(EFFORTS)}")
            params[name] = setting
        else:
            params[name] = _number(name, setting)
    return params


def _number(name: str, value: Any) -> float | int:
    low, high = RANGES[name]
    integer = name == "max_tokens"
    if isinstance(value, float) and integer and value.is_integer():
        value = int(value)
    kinds = (int,) if integer else (int, float)
    if not isinstance(value, kinds) or isinstance(value, bool) or not low <= value <= high:
        kind = "an integer" if integer else "a number"
        raise BadRequest(f"'params.{name}' must be {kind} from {low:g} to {high:g}")
    return value


def load_params(text: str) -> dict[str, Any]:
    """The settings as stored (a JSON object)."""
    params = orjson.loads(text or "{}")
    return params if isinstance(params, dict) else {}


def dump_params(params: dict[str, Any]) -> str:
    return orjson.dumps(params, option=orjson.OPT_SORT_KEYS).decode()
