"""Selection: the ordered candidate backends of one request (the failover order Envoy walks)."""

from ext_proc.select.candidates import ContextTooLong, candidates, estimate_tokens

__all__ = ["ContextTooLong", "candidates", "estimate_tokens"]
