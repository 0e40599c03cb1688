"""Stand-ins for the backends admission sees (anything with `.cluster` and `.provider.name`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class P:
    name: str


@dataclass(frozen=True)
class B:
    cluster: str
    provider: P


OAI = B("openai.gpt-4o", P("openai"))
AZ = B("azure.gpt-4o", P("azure"))
ANT = B("anthropic.claude", P("anthropic"))
