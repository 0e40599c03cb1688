"""Providers: one module per provider kind, each behind the `Provider` protocol (base.py).

Translators (ext_proc/translate/*) only turn bodies from one schema into another; a provider
knows which path and credentials an attempt needs, which canonical parameters it cannot honour
and which handler reads the answer back. Adding a provider kind = one translator module + one
provider module + one line here.
"""

from __future__ import annotations

from collections.abc import Iterable

from ext_proc.providers.anthropic import AnthropicProvider
from ext_proc.providers.azure import AzureOpenAIProvider
from ext_proc.providers.base import (
    EmbeddingsProvider,
    Provider,
    ResponseHandler,
    Warm,
    without,
)
from ext_proc.providers.bedrock import BedrockProvider
from ext_proc.providers.gemini import GeminiProvider, VertexProvider
from ext_proc.providers.openai import OpenAIProvider
from ext_proc.table import BackendInfo

_OPENAI = OpenAIProvider()

PROVIDERS: dict[str, Provider] = {
    "openai": _OPENAI,
    "anthropic": AnthropicProvider(),
    "bedrock": BedrockProvider(),
    "gemini": GeminiProvider(),
    "vertex": VertexProvider(),
    "azure_openai": AzureOpenAIProvider(),
    "vllm": _OPENAI,
    "tgi": _OPENAI,
}

__all__ = ["PROVIDERS", "EmbeddingsProvider", "Provider", "ResponseHandler", "Warm", "warm",
           "without"]


def warm(backends: Iterable[BackendInfo]) -> None:
    """Let providers with credentials to mint (Vertex OAuth) start before the first request."""
    seen: set[str] = set()
    for backend in backends:
        p = backend.provider
        provider = PROVIDERS.get(p.kind)
        if isinstance(provider, Warm) and p.name not in seen:
            seen.add(p.name)
            provider.warm(p)
