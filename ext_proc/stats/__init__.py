"""Live statistics about backends, kept off the request path (Envoy's view + attempts seen)."""

from ext_proc.stats.health import FAST_DEMOTE_AFTER, FAST_DEMOTE_S, BackendHealth

__all__ = ["FAST_DEMOTE_AFTER", "FAST_DEMOTE_S", "BackendHealth"]
