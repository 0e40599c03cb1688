"""Caller API key -> tenant.

Keys come from the config as `{env: VAR}`, `{value: "sk-..."}` or `{sha256: "<hex>"}`;
`compile_callers` turns them into SHA-256 digests once, so this process only ever holds
digests. At request time the presented key (`Authorization: Bearer KEY` or `x-api-key: KEY`)
is hashed and looked up in a dict of digests: the lookup compares digests, never keys, so its
timing says nothing about any configured key. The key itself is never stored, logged, put in
an exception or a repr.

No tenants configured -> open gateway: every caller is `DEFAULT_TENANT`, key or no key.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ext_proc.admission.priorities import CLASSES


@dataclass(frozen=True, slots=True)
class Tenant:
    """Who is calling: a name and the default priority class of its requests."""

    name: str
    priority: str = "interactive"


#: Every caller of an open gateway (no `tenants:` in the config).
DEFAULT_TENANT = Tenant("default", "interactive")


class CallerConfigError(ValueError):
    """A tenant's key entry is unusable (the message names the tenant and index, never a key)."""


@dataclass(frozen=True, slots=True)
class Callers:
    """The compiled key table: SHA-256 digest of a key -> its tenant."""

    by_digest: Mapping[bytes, Tenant]
    tenants: Mapping[str, Tenant]

    def __repr__(self) -> str:  # digests are not secrets, but keep logs short
        return f"Callers(tenants={sorted(self.tenants)!r}, keys={len(self.by_digest)})"


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _entry_digest(tenant: str, i: int, entry: Mapping[str, Any],
                  env: Mapping[str, str]) -> bytes | None:
    kinds = [k for k in ("env", "value", "sha256") if entry.get(k) is not None]
    if len(kinds) != 1 or set(entry) - {"env", "value", "sha256"}:
        raise CallerConfigError(
            f"tenants.{tenant}.api_keys[{i}]: set exactly one of 'env', 'value' or 'sha256'")
    kind = kinds[0]
    if kind == "sha256":
        hexd = str(entry["sha256"]).strip().lower()
        try:
            raw = bytes.fromhex(hexd)
        except ValueError:
            raw = b""
        if len(raw) != 32:
            raise CallerConfigError(
                f"tenants.{tenant}.api_keys[{i}].sha256: expected 64 hex characters")
        return raw
    if kind == "env":
        value = env.get(str(entry["env"])) or None
        return digest(value) if value else None  # unset variable: that key admits nobody
    value = entry["value"]
    if hasattr(value, "get_secret_value"):  # pydantic SecretStr
        value = value.get_secret_value()
    if not isinstance(value, str) or not value:
        raise CallerConfigError(f"tenants.{tenant}.api_keys[{i}].value: must be a non-empty string")
    return digest(value)


def compile_callers(tenants: Mapping[str, Mapping[str, Any]] | None,
                    env: Mapping[str, str] | None = None) -> Callers | None:
    """`tenants:` config (plain dicts) -> key table; None when absent (open gateway)."""
    if not tenants:
        return None
    env = os.environ if env is None else env
    by_digest: dict[bytes, Tenant] = {}
    named: dict[str, Tenant] = {}
    for name, spec in tenants.items():
        priority = spec.get("priority") or "interactive"
        if priority not in CLASSES:
            raise CallerConfigError(f"tenants.{name}.priority: unknown class {priority!r}")
        tenant = Tenant(name, priority)
        named[name] = tenant
        keys: Iterable[Mapping[str, Any]] = spec.get("api_keys") or ()
        for i, entry in enumerate(keys):
            if hasattr(entry, "model_dump"):  # a pydantic model from control_plane.config
                entry = entry.model_dump(exclude_none=True)
            d = _entry_digest(name, i, entry, env)
            if d is None:
                continue
            other = by_digest.get(d)
            if other is not None and other.name != name:
                raise CallerConfigError(
                    f"tenants.{name}.api_keys[{i}]: the same key is also a key of {other.name!r}")
            by_digest[d] = tenant
    return Callers(by_digest, named)


def caller_key(headers: Mapping[str, str]) -> str | None:
    """The presented key: `authorization: Bearer KEY` or `x-api-key: KEY` (lower-case names,
    as Envoy sends them)."""
    auth = headers.get("authorization")
    if auth:
        scheme, _, rest = auth.partition(" ")
        if scheme.lower() == "bearer":
            rest = rest.strip()
            if rest:
                return rest
    key = headers.get("x-api-key")
    if key:
        key = key.strip()
        return key or None
    return None


def identify(headers: Mapping[str, str], tenants: Callers | None) -> Tenant | None:
    """The caller's tenant; None means 401 (`invalid_api_key`). Open gateway: always default."""
    if tenants is None:
        return DEFAULT_TENANT
    key = caller_key(headers)
    if key is None:
        return None
    return tenants.by_digest.get(digest(key))
