"""Google OAuth access tokens for provider credentials (Vertex AI).

Vertex AI wants `Authorization: Bearer <access token>`. Minting one (a signed JWT exchanged at
the token endpoint, or the metadata server under ADC) is blocking HTTP in google-auth, so it
never runs on the request path: one daemon thread per credentials file keeps a fresh token in
memory, renewing it well before it expires, and the request path only reads the cached value.
"""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import structlog

log = structlog.get_logger("switchyard.ext_proc.auth")

__all__ = ["CLOUD_PLATFORM", "GoogleTokenSource", "reset_token_sources", "token_source_for"]

CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
#: A token this close to expiry is no longer handed out (it could expire in flight).
_USE_SKEW_S = 30.0
#: Assumed lifetime of credentials that report no expiry.
_DEFAULT_LIFETIME_S = 1800.0
_HTTP_TIMEOUT_S = 10.0


class _Response:
    """google.auth.transport.Response over urllib (status, headers, data)."""

    def __init__(self, status: int, headers: Mapping[str, str], data: bytes) -> None:
        self.status = status
        self.headers = {k.lower(): v for k, v in headers.items()}
        self.data = data


class _UrllibRequest:
    """google.auth.transport.Request with the standard library only.

    google-auth ships no transport without `requests`/`urllib3`; this one runs only in the
    refresh thread, so plain blocking urllib is all it needs (HTTPS and proxies included).
    """

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> _Response:
        from google.auth import exceptions

        req = urllib.request.Request(url, data=body, headers=dict(headers or {}), method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout or _HTTP_TIMEOUT_S) as resp:
                return _Response(resp.status, dict(resp.headers.items()), resp.read())
        except urllib.error.HTTPError as exc:  # an answer, just not 2xx: google-auth decides
            return _Response(exc.code, dict(exc.headers.items()), exc.read())
        except (urllib.error.URLError, OSError) as exc:
            raise exceptions.TransportError(f"{type(exc).__name__}: {exc}") from exc


def _safe_reason(exc: BaseException) -> str:
    """A loggable reason: the OAuth error code and description, never a token or key."""
    args: tuple[Any, ...] = exc.args
    if len(args) > 1 and isinstance(args[1], dict) and "error" in args[1]:
        desc = args[1].get("error_description")
        return f"{args[1]['error']}: {desc}"[:200] if desc else str(args[1]["error"])[:200]
    return f"{type(exc).__name__}: {exc}"[:200]


def _lifetime(expiry: datetime | None) -> float:
    """Seconds until `expiry` (google-auth uses naive UTC datetimes)."""
    if expiry is None:
        return _DEFAULT_LIFETIME_S
    if expiry.tzinfo is None:
        expiry = expiry.replace(tzinfo=UTC)
    return (expiry - datetime.now(UTC)).total_seconds()


class GoogleTokenSource:
    """A Google OAuth access token kept fresh by a background thread.

    `credentials_file` is any google-auth credentials JSON (service account, authorized user,
    workload identity federation); None means application-default credentials. `get()` is a
    lock-free read of the cached token and never blocks. Failures are logged (without secrets)
    and retried with jittered exponential backoff; a token still valid keeps being served.
    """

    def __init__(
        self,
        credentials_file: str | None,
        scopes: Sequence[str] = (CLOUD_PLATFORM,),
        *,
        refresh_margin_s: float = 300.0,
        min_backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        credentials: Any = None,
    ) -> None:
        self.credentials_file = credentials_file or None
        self.scopes = tuple(scopes)
        self.refresh_margin_s = refresh_margin_s
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s
        self._credentials = credentials  # injectable (tests); else loaded in the thread
        self._request = _UrllibRequest()
        # (token, usable until: time.monotonic()); replaced whole, so reads need no lock.
        self._token: tuple[str, float] | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()  # the running thread's own stop flag
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.ready = threading.Event()  # set once the first token is in
        self.refreshes = 0
        self.failures = 0

    def __repr__(self) -> str:
        return f"GoogleTokenSource(credentials_file={self.credentials_file!r})"

    def start(self) -> None:
        """Start the refresh thread (idempotent, cheap: safe to call from the event loop)."""
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None:
                self._stop = stop = threading.Event()
                name = f"google-token:{self.credentials_file or 'adc'}"
                self._thread = threading.Thread(
                    target=self._run, args=(stop,), name=name, daemon=True
                )
                self._thread.start()

    def get(self) -> str | None:
        """The cached access token, or None if there is none (yet) or it has expired."""
        tok = self._token
        if tok is None or time.monotonic() >= tok[1]:
            return None
        return tok[0]

    def refresh_soon(self) -> None:
        """Ask for a new token now (e.g. after the upstream answered 401); never blocks."""
        self._wake.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a first token is in (startup and tests only, never the request path)."""
        return self.ready.wait(timeout)

    def stop(self, timeout: float | None = 5.0) -> None:
        with self._lock:
            self._stop.set()
            self._wake.set()
            thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    # -- refresh thread

    def _load(self) -> Any:
        """Credentials from the file (by its declared type) or application-default."""
        import google.auth

        scopes = list(self.scopes)
        if self.credentials_file is None:
            creds, _ = google.auth.default(scopes=scopes)
            return creds
        with open(self.credentials_file, "rb") as f:
            info = json.loads(f.read())
        kind = info.get("type") if isinstance(info, dict) else None
        if kind == "service_account":
            from google.oauth2 import service_account

            return service_account.Credentials.from_service_account_info(info, scopes=scopes)
        if kind == "authorized_user":
            from google.oauth2 import credentials

            return credentials.Credentials.from_authorized_user_info(info, scopes=scopes)
        # Other types (external_account, ...) execute or fetch what the file says: load them
        # through application-default credentials (GOOGLE_APPLICATION_CREDENTIALS) on purpose.
        raise ValueError(
            f"credentials type {kind!r} is not supported in credentials_file; "
            "use application-default credentials for it"
        )

    def _refresh(self) -> float:
        """Mint a token; returns its remaining lifetime in seconds."""
        if self._credentials is None:
            self._credentials = self._load()
        creds = self._credentials
        creds.refresh(self._request)
        token = creds.token
        if not isinstance(token, str) or not token:
            raise RuntimeError("credentials refresh returned no access token")
        lifetime = _lifetime(creds.expiry)
        skew = min(_USE_SKEW_S, lifetime / 10)
        self._token = (token, time.monotonic() + lifetime - skew)
        self.refreshes += 1
        self.ready.set()
        return lifetime

    def _run(self, stop: threading.Event) -> None:
        backoff = self.min_backoff_s
        while not stop.is_set():
            try:
                lifetime = self._refresh()
            except Exception as exc:  # log, keep serving a still-valid token, retry
                self.failures += 1
                wait = backoff * random.uniform(0.8, 1.2)
                log.warning(
                    "google token refresh failed",
                    credentials=self.credentials_file or "application-default",
                    reason=_safe_reason(exc),
                    retry_in_s=round(wait, 2),
                )
                backoff = min(backoff * 2, self.max_backoff_s)
            else:
                backoff = self.min_backoff_s
                wait = lifetime - self.refresh_margin_s
                if wait <= 0:  # short-lived token: renew at half-life
                    wait = lifetime / 2
                wait = max(wait, self.min_backoff_s)
                log.info(
                    "google token refreshed",
                    credentials=self.credentials_file or "application-default",
                    expires_in_s=int(lifetime),
                    next_refresh_in_s=round(wait, 1),
                )
            if self._wake.wait(wait):
                self._wake.clear()


_SOURCES: dict[str | None, GoogleTokenSource] = {}
_SOURCES_LOCK = threading.Lock()


def token_source_for(credentials_file: str | None) -> GoogleTokenSource:
    """The one token source per credentials file (None/"" = application-default)."""
    key = credentials_file or None
    src = _SOURCES.get(key)
    if src is None:
        with _SOURCES_LOCK:
            src = _SOURCES.get(key)
            if src is None:
                src = _SOURCES[key] = GoogleTokenSource(key)
    return src


def reset_token_sources() -> None:
    """Stop and forget every cached source (tests, shutdown)."""
    with _SOURCES_LOCK:
        sources = list(_SOURCES.values())
        _SOURCES.clear()
    for src in sources:
        src.stop()
