"""What an answer cost in tokens: shared by the providers that report it, the store that
keeps it and the events that show it."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Usage:
    """Tokens an answer cost: the upstream's own counts, or our estimate (`estimated`)."""

    prompt_tokens: int
    completion_tokens: int
    estimated: bool = False

    def as_json(self) -> dict[str, object]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "estimated": self.estimated}
