"""Caller key -> tenant: digests only, both header forms, open gateway, no key in reprs."""

from __future__ import annotations

import hashlib

import pytest

from ext_proc.auth.callers import (
    DEFAULT_TENANT,
    CallerConfigError,
    caller_key,
    compile_callers,
    identify,
)

KEY_A = "sk-tenant-a-SECRET-0001"
KEY_B = "sk-tenant-b-SECRET-0002"
KEY_C = "sk-tenant-c-SECRET-0003"


def _callers():
    return compile_callers(
        {
            "a": {"api_keys": [{"value": KEY_A}], "priority": "chat"},
            "b": {"api_keys": [{"env": "SW_TEST_KEY_B"}, {"env": "SW_UNSET_VAR"}]},
            "c": {"api_keys": [{"sha256": hashlib.sha256(KEY_C.encode()).hexdigest()}],
                  "priority": "batch"},
        },
        env={"SW_TEST_KEY_B": KEY_B},
    )


def test_identify_by_bearer_and_x_api_key():
    callers = _callers()
    a = identify({"authorization": f"Bearer {KEY_A}"}, callers)
    assert a is not None and a.name == "a" and a.priority == "chat"
    b = identify({"x-api-key": KEY_B}, callers)
    assert b is not None and b.name == "b" and b.priority == "interactive"
    c = identify({"authorization": f"bearer  {KEY_C}"}, callers)
    assert c is not None and c.name == "c" and c.priority == "batch"


def test_unknown_missing_or_malformed_key_is_none():
    callers = _callers()
    assert identify({}, callers) is None
    assert identify({"authorization": "Bearer sk-nope"}, callers) is None
    assert identify({"authorization": f"Basic {KEY_A}"}, callers) is None
    assert identify({"authorization": "Bearer "}, callers) is None
    assert identify({"x-api-key": ""}, callers) is None


def test_open_gateway_everyone_is_default():
    assert compile_callers(None) is None and compile_callers({}) is None
    assert identify({}, None) is DEFAULT_TENANT
    assert identify({"authorization": "Bearer anything"}, None) is DEFAULT_TENANT
    assert DEFAULT_TENANT.name == "default"


def test_only_digests_are_held_and_no_key_in_repr():
    callers = _callers()
    assert callers is not None
    text = repr(callers) + repr(list(callers.by_digest.values())) + repr(callers.tenants)
    for key in (KEY_A, KEY_B, KEY_C):
        assert key not in text
        assert key.encode() not in callers.by_digest
    assert all(len(d) == 32 for d in callers.by_digest)
    assert len(callers.by_digest) == 3  # the unset env var admits nobody


def test_bad_entries_name_the_tenant_never_the_key():
    with pytest.raises(CallerConfigError, match=r"tenants\.x\.api_keys\[0\]") as exc:
        compile_callers({"x": {"api_keys": [{"value": KEY_A, "env": "V"}]}})
    assert KEY_A not in str(exc.value)
    with pytest.raises(CallerConfigError, match="64 hex"):
        compile_callers({"x": {"api_keys": [{"sha256": "abc"}]}})
    with pytest.raises(CallerConfigError, match="also a key of"):
        compile_callers({"x": {"api_keys": [{"value": KEY_A}]},
                         "y": {"api_keys": [{"value": KEY_A}]}})
    with pytest.raises(CallerConfigError, match="unknown class"):
        compile_callers({"x": {"api_keys": [], "priority": "urgent"}})


def test_caller_key_prefers_authorization():
    assert caller_key({"authorization": "Bearer k1", "x-api-key": "k2"}) == "k1"
    assert caller_key({"authorization": "Token k1", "x-api-key": "k2"}) == "k2"
