"""Per-provider policy for OpenAI parameters a provider cannot honour: drop or reject.

The translators map every parameter a provider has an equivalent for; the ones listed here
have none. With `unsupported_params: drop` (the default) they are removed from that attempt and
named in the `x-switchyard-dropped-params` response header; with `reject` the attempt fails
with a 400 that names the parameter. Same-schema providers (OpenAI-compatible) take everything.
"""

from __future__ import annotations

from typing import Any

_COMMON = frozenset({"logprobs", "top_logprobs", "logit_bias", "store", "modalities", "audio",
                     "prediction", "service_tier", "web_search_options"})

UNSUPPORTED: dict[str, frozenset[str]] = {
    "anthropic": _COMMON | {"seed", "presence_penalty", "frequency_penalty", "n"},
    "bedrock": _COMMON | {"seed", "presence_penalty", "frequency_penalty", "n",
                          "response_format"},
    "gemini": _COMMON - {"logprobs", "top_logprobs"},
    "vertex": _COMMON - {"logprobs", "top_logprobs"},
}


def _meaningful(name: str, value: Any) -> bool:
    """A parameter set to its no-op default (n=1, penalties 0, false, null) asks for nothing."""
    if value is None or value is False:
        return False
    if name == "n":
        return value != 1
    if name in ("presence_penalty", "frequency_penalty"):
        return value != 0
    return not (isinstance(value, list | dict) and not value)


def unsupported(kind: str, body: dict[str, Any]) -> list[str]:
    """Parameters of this request that a provider of `kind` cannot honour (sorted)."""
    names = UNSUPPORTED.get(kind)
    if not names:
        return []
    return sorted(k for k in names.intersection(body) if _meaningful(k, body[k]))


def without(body: dict[str, Any], names: list[str]) -> dict[str, Any]:
    out = dict(body)
    for name in names:
        out.pop(name, None)
    return out
