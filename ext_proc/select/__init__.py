"""Selection: the ordered candidate backends of one request (the failover order Envoy walks).

`candidates` is the configured order (unhealthy last); `rank` is live selection (constraints,
then cost / latency / quality objective, exploration, explanation) over a `SelectContext`.
"""

from ext_proc.select.candidates import ContextTooLong, candidates, estimate_tokens
from ext_proc.select.features import CATEGORIES, Features, classify, features_of
from ext_proc.select.live import FeedbackReply, Selector, split_preset
from ext_proc.select.quality import QualityModel
from ext_proc.select.rank import (
    Scored,
    SelectContext,
    Selection,
    Unservable,
    expected_cost,
    policy_for,
    rank,
    rank_features,
)

__all__ = ["CATEGORIES", "ContextTooLong", "Features", "FeedbackReply", "QualityModel",
           "Scored", "SelectContext", "Selection", "Selector", "Unservable", "candidates",
           "classify", "estimate_tokens", "expected_cost", "features_of", "policy_for", "rank",
           "rank_features", "split_preset"]
