"""Provider adapters: bind each kind's translator to its HTTP surface (path, auth, responses).

Translators (ext_proc/translate/*) only turn bodies from one schema into another; an adapter
knows which path and credentials an attempt needs and which handler reads the answer back.
Adding a provider kind = one translator module + one adapter module + one line here.
"""

from __future__ import annotations

from ext_proc.adapters.anthropic import AnthropicAdapter
from ext_proc.adapters.azure import AzureOpenAIAdapter
from ext_proc.adapters.base import Adapter, ResponseHandler
from ext_proc.adapters.bedrock import BedrockAdapter
from ext_proc.adapters.gemini import GeminiAdapter, VertexAdapter
from ext_proc.adapters.openai import OpenAIAdapter

ANTHROPIC = AnthropicAdapter()
ADAPTERS: dict[str, Adapter] = {
    "openai": OpenAIAdapter(),
    "anthropic": ANTHROPIC,
    "bedrock": BedrockAdapter(),
    "gemini": GeminiAdapter(),
    "vertex": VertexAdapter(),
    "azure_openai": AzureOpenAIAdapter(),
    "vllm": OpenAIAdapter(),
    "tgi": OpenAIAdapter(),
}

__all__ = ["ADAPTERS", "ANTHROPIC", "Adapter", "ResponseHandler"]
