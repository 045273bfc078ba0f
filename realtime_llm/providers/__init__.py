"""Model providers, chosen per model by the `models` patterns in config."""
from __future__ import annotations

from realtime_llm.config import ProviderSettings
from realtime_llm.errors import UpstreamError
from realtime_llm.providers.base import Attachment, ChatMessage, ChatRequest, Completion, Provider, Thought

__all__ = ["Attachment", "ChatMessage", "ChatRequest", "Completion", "Provider", "Thought", "UpstreamError",
           "create_provider"]


def create_provider(settings: ProviderSettings) -> Provider:
    provider: Provider
    if settings.kind == "openai":
        from realtime_llm.providers.openai import OpenAIProvider

        provider = OpenAIProvider(settings)
    else:
        from realtime_llm.providers.demo import DemoProvider

        provider = DemoProvider(settings)
    provider.name = settings.name
    provider.sends_reasoning = settings.send_reasoning
    return provider
