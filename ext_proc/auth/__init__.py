"""Provider credentials: Google OAuth access tokens (`google`, for Vertex AI) and AWS SigV4
request signing (`sigv4`, for Bedrock). Caller keys -> tenant will live here too."""

from __future__ import annotations

from ext_proc.auth.google import (
    CLOUD_PLATFORM,
    GoogleTokenSource,
    reset_token_sources,
    token_source_for,
)
from ext_proc.auth.sigv4 import sign

__all__ = ["CLOUD_PLATFORM", "GoogleTokenSource", "reset_token_sources", "sign",
           "token_source_for"]
