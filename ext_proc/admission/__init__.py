"""Admission control: estimate, buckets (local | Redis), priorities, queue, shedding and
provider backpressure. Plain data and synchronous logic; the fleet store syncs in the
background (`redis_store`, imported on demand so the open gateway never loads redis)."""

from ext_proc.admission.admit import (
    Admission,
    AdmissionConfig,
    Admit,
    Decision,
    Queue,
    Refusal,
    Reservation,
    Shed,
    TenantLimits,
    WaitQueue,
    compile_admission,
    limits_from,
)
from ext_proc.admission.backpressure import Backpressure
from ext_proc.admission.estimate import Estimator
from ext_proc.admission.priorities import PRIORITY_HEADER, request_class
from ext_proc.admission.store import Limits, LocalStore

__all__ = ["PRIORITY_HEADER", "Admission", "AdmissionConfig", "Admit", "Backpressure",
           "Decision", "Estimator", "Limits", "LocalStore", "Queue", "Refusal", "Reservation",
           "Shed", "TenantLimits", "WaitQueue", "compile_admission", "limits_from",
           "request_class"]
