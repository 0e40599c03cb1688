"""The route phase's use of GPU pools: keep low-class requests off a saturated pool (spill to
the model's next backend, or a 429 when there is none) and pick the endpoint (plus fallbacks)
of the first pool among the candidates after admission."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

from ext_proc.route import Forward, Reject
from ext_proc.select.pool import prefix_key

if TYPE_CHECKING:
    from ext_proc.state import RequestState
    from ext_proc.stats.pool_metrics import Pools


def steer(fwd: Forward, pool_of: Mapping[str, str], pools: Pools, klass: str
          ) -> Forward | Reject:
    """Drop saturated pools from a low-class request's candidates."""
    if not any(c.cluster in pool_of for c in fwd.candidates):
        return fwd
    keep = tuple(c for c in fwd.candidates
                 if c.cluster not in pool_of or not pools.saturated(pool_of[c.cluster], klass))
    if len(keep) == len(fwd.candidates):
        return fwd
    if not keep:
        return Reject(429, f"The GPU pool serving this model is saturated for {klass} "
                      "requests; retry later", "rate_limit_error", "pool_saturated",
                      headers=(("retry-after", "1"),))
    retries = min(fwd.model.max_retries, len(keep) - 1) if len(keep) > 1 else \
        fwd.model.max_retries
    return replace(fwd, candidates=keep, max_retries=retries)


def pick_endpoint(fwd: Forward, st: RequestState, pool_of: Mapping[str, str], pools: Pools
                  ) -> str | None:
    """`IP:PORT[,fallbacks]` for the first pool among the candidates (None: no pool); the
    pick and its reason are kept on the request for its log line and usage record."""
    for c in fwd.candidates:
        pool = pool_of.get(c.cluster)
        if pool is None:
            continue
        picker = pools.pickers.get(pool)
        if picker is None:
            return None
        messages = st.body.get("messages") or ()
        key = prefix_key(messages, picker.settings.prefix_chars)
        pick = pools.pick(st.rid, pool, key, st.klass, st)
        if pick is None:
            return None
        st.pool_pick = (pool, pick.endpoints[0], pick.reason)
        return pick.header
    return None
