"""The canonical form's shared pieces: what every translator produces or consumes.

The canonical request/response schema is OpenAI chat completions; this module holds the
pieces that are not one provider's: token usage (with cached input and reasoning tokens, so
cost can price them), errors, and the stream-writing helpers.
"""

from __future__ import annotations

from typing import NamedTuple


class Usage(NamedTuple):
    """Token usage of one response, as billed.

    `prompt` includes `cached` (input tokens read from a prompt cache, billed at the cached
    price); `completion` includes `reasoning` (thinking tokens, billed as output)."""

    prompt: int
    completion: int
    cached: int = 0
    reasoning: int = 0
