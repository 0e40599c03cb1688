"""AWS Signature Version 4 for provider requests (Bedrock), signed over the final body.

botocore signs; this module only keeps one signer per credentials and derives the signing key
once per UTC day instead of on every request.
"""

from __future__ import annotations

import functools

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

__all__ = ["BEDROCK", "sign"]

BEDROCK = "bedrock"  # SigV4 signing (service) name of bedrock-runtime


class _SigV4(SigV4Auth):
    """botocore's SigV4 with the signing key derived once per UTC day, not per request."""

    def __init__(self, credentials: Credentials, service: str, region: str) -> None:
        super().__init__(credentials, service, region)
        self._day_key = ("", b"")  # one tuple: swapped atomically

    def signature(self, string_to_sign: str, request: AWSRequest) -> str:
        day = request.context["timestamp"][0:8]
        cached_day, key = self._day_key
        if day != cached_day:
            key = self._sign(f"AWS4{self.credentials.secret_key}".encode(), day)
            for part in (self._region_name, self._service_name, "aws4_request"):
                key = self._sign(key, part)
            self._day_key = (day, key)
        sig: str = self._sign(key, string_to_sign, hex=True)
        return sig


@functools.lru_cache(maxsize=64)
def _signer(
    region: str, access_key: str, secret_key: str, token: str | None, service: str
) -> SigV4Auth:
    """One signer per provider credentials (building Credentials per request is waste)."""
    return _SigV4(Credentials(access_key, secret_key, token), service, region)


def sign(
    method: str,
    url: str,
    headers: dict[str, str],
    body: bytes,
    region: str,
    access_key: str,
    secret_key: str,
    session_token: str | None,
    service: str = BEDROCK,
) -> dict[str, str]:
    """SigV4 headers to add to a request (Authorization, X-Amz-Date, X-Amz-Security-Token).

    `headers` are the ones to sign besides host and the X-Amz-* ones: sign only headers that
    reach AWS unchanged. Pass `host` explicitly when it must match an `:authority` exactly.
    """
    request = AWSRequest(method=method, url=url, data=body, headers=headers)
    _signer(region, access_key, secret_key, session_token or None, service).add_auth(request)
    out = {"Authorization": request.headers["Authorization"],
           "X-Amz-Date": request.headers["X-Amz-Date"]}
    if session_token:
        out["X-Amz-Security-Token"] = session_token
    return out
