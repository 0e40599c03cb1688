"""Priority classes: how much of a shared (provider / backend) quota each may use, and how long
it may wait for headroom.

A class with `quota_share` s may take from a provider's or backend's bucket only while at least
(1 - s) of that bucket's capacity would remain afterwards, so lower classes are refused first
and interactive traffic always finds the top of the bucket free. Tenant limits are the tenant's
own and are not scaled by class.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: Highest first. A request may lower its class (`x-switchyard-priority`), never raise it.
CLASSES: tuple[str, ...] = ("interactive", "chat", "agent", "batch")
RANK = {name: i for i, name in enumerate(CLASSES)}

PRIORITY_HEADER = "x-switchyard-priority"


@dataclass(frozen=True, slots=True)
class PriorityClass:
    name: str
    #: Fraction of a provider's / backend's quota this class may use.
    quota_share: float
    #: How long a request of this class may wait for headroom (0: shed at once).
    max_queue_ms: int

    @property
    def floor(self) -> float:
        """Fraction of a shared bucket that must stay untouched by this class."""
        return 1.0 - self.quota_share


DEFAULTS: dict[str, PriorityClass] = {
    "interactive": PriorityClass("interactive", 1.00, 0),
    "chat": PriorityClass("chat", 0.95, 2000),
    "agent": PriorityClass("agent", 0.85, 5000),
    "batch": PriorityClass("batch", 0.70, 0),
}


def compile_priorities(cfg: Mapping[str, Mapping[str, Any]] | None) -> dict[str, PriorityClass]:
    """`priorities:` config (plain dicts; every key optional) -> one PriorityClass per class."""
    out = dict(DEFAULTS)
    for name, spec in (cfg or {}).items():
        if name not in RANK:
            raise ValueError(f"priorities.{name}: unknown class (known: {', '.join(CLASSES)})")
        base = out[name]
        share = float(spec.get("quota_share", base.quota_share))
        queue = int(spec.get("max_queue_ms", base.max_queue_ms))
        if not 0.0 < share <= 1.0:
            raise ValueError(f"priorities.{name}.quota_share: must be in (0, 1]")
        if queue < 0:
            raise ValueError(f"priorities.{name}.max_queue_ms: must be >= 0")
        out[name] = PriorityClass(name, share, queue)
    return out


def request_class(tenant_class: str, header: str | None) -> str:
    """The class of one request: the tenant's, or a lower one the request asks for.

    An unknown or higher value in the header is ignored (never an error, never a raise)."""
    if not header:
        return tenant_class
    asked = header.strip().lower()
    rank = RANK.get(asked)
    if rank is None or rank < RANK.get(tenant_class, 0):
        return tenant_class
    return asked
