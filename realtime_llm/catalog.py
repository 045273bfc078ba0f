"""Which provider serves which model, decided by the `models` patterns in config."""
from __future__ import annotations

from fnmatch import fnmatchcase
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # config.py checks the default model with this class: no import back
    from realtime_llm.config import ProviderSettings

WILDCARDS = frozenset("*?[")


class ModelCatalog:
    """Maps a model name to the first provider whose patterns match it."""

    def __init__(self, providers: tuple[ProviderSettings, ...]) -> None:
        self.providers = providers

    def provider_for(self, model: str) -> ProviderSettings | None:
        for provider in self.providers:
            if any(fnmatchcase(model, pattern) for pattern in provider.models):
                return provider
        return None

    def can_serve(self, model: str) -> bool:
        return self.provider_for(model) is not None

    def reads_images(self, model: str) -> bool:
        """Its provider does not say `vision: false` (a model no longer served: it reads nothing)."""
        provider = self.provider_for(model)
        return provider is not None and provider.vision

    def listing(self) -> list[dict[str, object]]:
        """Every configured model name; a pattern stands for a family of models."""
        return [
            {"id": pattern, "provider": p.name, "kind": p.kind, "pattern": bool(WILDCARDS & set(pattern))}
            for p in self.providers
            for pattern in p.models
        ]
