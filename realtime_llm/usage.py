"""What an answer cost in tokens: shared by the providers that report it, the store that
keeps it and the events that show it."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens an answer cost: the upstream's own counts, or our estimate (`estimated`)."""

    prompt_tokens: int
    completion_tokens: int
    estimated: bool = False
    reasoning_tokens: int | None = None  # of completion_tokens, where the upstream says

    def as_json(self) -> dict[str, object]:
        shown: dict[str, object] = {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                                    "estimated": self.estimated}
        if self.reasoning_tokens is not None:
            shown["reasoning_tokens"] = self.reasoning_tokens
        return shown
