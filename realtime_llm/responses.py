"""JSON responses rendered by orjson (Starlette's own uses the json module: for a
10,000-message history that was 13-22 ms of a ~130 ms request, orjson takes about 1 ms)."""
from __future__ import annotations

from typing import Any

import orjson
from starlette import responses


class JSONResponse(responses.JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)
