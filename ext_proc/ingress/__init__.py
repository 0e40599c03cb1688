"""Ingress APIs: what clients speak to the gateway, each mapped to the canonical form.

* `OpenAIChat` (`POST /v1/chat/completions`): already canonical.
* `AnthropicMessages` (`POST /v1/messages`): Messages <-> canonical, Anthropic passthrough.
* `Embeddings` (`POST /v1/embeddings`): OpenAI embeddings, for backends that embed.

Each ingress knows its own error format (`error`, `stream_error`, `local_error`), so every
rejection (400/404/429, Envoy's own replies, a stream failing mid-way) reaches the client in
the schema its SDK parses.
"""

from __future__ import annotations

from ext_proc.ingress.anthropic_messages import AnthropicMessages
from ext_proc.ingress.base import Ingress, IngressError
from ext_proc.ingress.embeddings import Embeddings
from ext_proc.ingress.openai_chat import OpenAIChat
from switchyard.contract import CHAT_PATH, EMBEDDINGS_PATH, MESSAGES_PATH

INGRESS: dict[str, Ingress] = {
    CHAT_PATH: OpenAIChat(),
    MESSAGES_PATH: AnthropicMessages(),
    EMBEDDINGS_PATH: Embeddings(),
}

__all__ = ["INGRESS", "AnthropicMessages", "Embeddings", "Ingress", "IngressError",
           "OpenAIChat"]
