"""Candidate selection: the ordered list of backends one request may be sent to.

Today: the model's configured fallback order. Later issues score by cost, latency, quality and
health; the route phase already hands Envoy a per-request order, so only this module changes.
"""

from __future__ import annotations

from typing import Any

from ext_proc.table import BackendInfo


def candidates(backends: tuple[BackendInfo, ...], body: dict[str, Any]) -> tuple[BackendInfo, ...]:
    """Backends in the order this request should try them (never empty)."""
    return backends
