"""`switchyard validate --diff OLD NEW`: what a config change does, for a pull request review.

Both files are loaded and validated like the control plane does; NEW invalid is an error
(exit 1). The report lists models, backends, providers, tenants and priorities added, removed
and changed, field by field, with each change tagged by what it touches ([price], [limits],
[routing], [backends], [credentials]); secrets are never printed (only that they changed).
Backends are matched by `provider/model`, so a reorder reads as an order change rather than
as every field changing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from control_plane.config import ConfigError, GatewayConfig, load_config

_MISSING = object()
_SECRET_KEYS = {"api_key", "aws_access_key_id", "aws_secret_access_key", "aws_session_token",
                "api_keys", "value", "credentials_file"}


def _fmt(value: Any) -> str:
    if value is _MISSING or value is None:
        return "(none)"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items()) + "}"
    return str(value)


def _backend_key(b: dict[str, Any]) -> str:
    return f"{b['provider']}/{b['model']}"


def _is_backends(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(v, dict) and "provider" in v and "model" in v for v in value)


def _compare(a: Any, b: Any, path: str, out: list[tuple[str, Any, Any]]) -> None:
    """(path, old, new) of every difference, as deep as both sides have the same shape: a
    block only one side has is one line; backends are matched by provider/model."""
    if a == b:
        return
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=lambda k: (list(b) + list(a)).index(k)):
            _compare(a.get(k, _MISSING), b.get(k, _MISSING), f"{path}.{k}" if path else k, out)
    elif _is_backends(a) and _is_backends(b):
        ka, kb = [_backend_key(x) for x in a], [_backend_key(x) for x in b]
        if ka != kb:
            out.append((f"{path} order", ka, kb))
        old, new = dict(zip(ka, a, strict=True)), dict(zip(kb, b, strict=True))
        for key in [*kb, *(k for k in ka if k not in new)]:
            strip = ("provider", "model")
            _compare({k: v for k, v in old[key].items() if k not in strip} if key in old
                     else _MISSING,
                     {k: v for k, v in new[key].items() if k not in strip} if key in new
                     else _MISSING, f"{path}[{key}]", out)
    else:
        out.append((path, a, b))


def _secrets(value: Any) -> Any:
    """The dump with every secret replaced by a fingerprint (compared, never printed)."""
    if isinstance(value, SecretStr):
        return "secret:" + hashlib.sha256(value.get_secret_value().encode()).hexdigest()[:16]
    if isinstance(value, dict):
        return {k: _secrets(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_secrets(v) for v in value]
    return value


def _tag(path: str) -> str:
    parts = set(path.replace("[", ".").replace("]", "").split("."))
    if path.startswith(("routing", "failover")) or path.endswith(" order") or parts & {
            "routing", "failover", "quality", "capabilities", "context_window"}:
        return "routing"
    if "price" in parts or "cost" in parts:
        return "price"
    if parts & {"limits", "rpm", "tpm", "max_concurrent", "quota_share", "max_queue_ms",
                "max_concurrent_requests"} or (parts & {"models"} and "[" not in path
                                               and not path.startswith("models")):
        return "limits"
    if parts & _SECRET_KEYS:
        return "credentials"
    return "settings"


def _secret(path: str) -> bool:
    return bool(set(path.replace("[", ".").replace("]", "").split(".")) & _SECRET_KEYS)


@dataclass
class Section:
    """One kind of named thing (models, providers, tenants, ...) and what changed in it."""

    title: str
    added: dict[str, str] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    changed: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)

    def tags(self) -> set[str]:
        return {tag for lines in self.changed.values() for tag, _ in lines}


def _field_changes(old: Any, new: Any) -> list[tuple[str, str]]:
    diffs: list[tuple[str, Any, Any]] = []
    _compare(old, new, "", diffs)
    out = []
    for path, va, vb in diffs:
        tag = _tag(path)
        if _secret(path):
            what = "added" if va is _MISSING else "removed" if vb is _MISSING else "changed"
            out.append((tag, f"{path}: {what} (secret, not shown)"))
        else:
            out.append((tag, f"{path}: {_fmt(va)} -> {_fmt(vb)}"))
    return out


def _summary_model(m: dict[str, Any]) -> str:
    parts = []
    for b in m.get("backends", []):
        price = b.get("price")
        cost = f" ${_fmt(price['input'])}/${_fmt(price['output'])} per 1M" if price else ""
        parts.append(_backend_key(b) + cost)
    routing = m.get("routing")
    tail = f"; routing: {routing.get('strategy', 'balanced')}" if routing is not None else ""
    return "backends: " + ", ".join(parts) + tail


def _summary_provider(p: dict[str, Any]) -> str:
    return f"kind: {p.get('kind')}, base_url: {p.get('base_url')}" + (
        ", simulated" if p.get("simulate") else "")


def _summary_tenant(t: dict[str, Any]) -> str:
    limits = {k: v for k, v in (t.get("limits") or {}).items() if v is not None}
    return (f"priority: {t.get('priority', 'interactive')}, {len(t['api_keys'])} key(s)"
            + (f", limits: {_fmt(limits)}" if limits else ""))


def _dump(cfg: GatewayConfig) -> dict[str, Any]:
    """What the file says (defaults left out, so adding a block does not list its defaults),
    secrets as fingerprints."""
    data: dict[str, Any] = _secrets(cfg.model_dump(exclude_none=True, exclude_defaults=True))
    return data


def _section(title: str, old: dict[str, Any], new: dict[str, Any],
             summary: Any = None) -> Section:
    s = Section(title)
    for name in sorted(set(new) - set(old)):
        s.added[name] = summary(new[name]) if summary else _fmt(new[name])
    s.removed = sorted(set(old) - set(new))
    for name in sorted(set(old) & set(new)):
        lines = _field_changes(old[name], new[name])
        if lines:
            s.changed[name] = lines
    return s


@dataclass
class ConfigDiff:
    sections: list[Section]

    @property
    def routing_changed(self) -> bool:
        """Whether traffic may go elsewhere: models or backends added/removed, or a change in
        routing, failover, prices (cost-based selection) or limits."""
        for s in self.sections:
            if s.title in ("models", "providers") and (s.added or s.removed):
                return True
            if s.title != "gateway" and s.tags() & {"routing", "price", "limits"}:
                return True
        return False

    def render(self, old_name: str, new_name: str) -> str:
        lines = [f"config diff: {old_name} -> {new_name}"]
        counts = []
        for s in self.sections:
            if s.empty:
                continue
            lines.append(f"{s.title}:")
            for name, what in s.added.items():
                lines.append(f"  + {name}  {what}")
            for name in s.removed:
                lines.append(f"  - {name}")
            for name, changes in s.changed.items():
                lines.append(f"  ~ {name}" if name else "  ~")
                lines.extend(f"      [{tag}] {text}" for tag, text in changes)
            bits = [f"{len(x)} {verb}" for x, verb in ((s.added, "added"),
                    (s.removed, "removed"), (s.changed, "changed")) if x]
            counts.append(f"{s.title} {', '.join(bits)}")
        if len(lines) == 1:
            lines.append("no changes")
        lines.append("summary: " + ("; ".join(counts) if counts else "no changes"))
        lines.append(f"routing changed: {'yes' if self.routing_changed else 'no'}")
        return "\n".join(lines)


_GATEWAY_KEYS = ("listen", "admin", "control_plane", "ext_proc", "limits", "envoy_concurrency",
                 "shared_state", "ledger")


def diff_configs(old: GatewayConfig, new: GatewayConfig) -> ConfigDiff:
    a, b = _dump(old), _dump(new)
    sections = [
        _section("models", a.get("models", {}), b.get("models", {}), _summary_model),
        _section("providers", a["providers"], b["providers"], _summary_provider),
        _section("tenants", a.get("tenants") or {}, b.get("tenants") or {}, _summary_tenant),
        _section("priorities", a.get("priorities", {}), b.get("priorities", {})),
    ]
    # Gateway settings with their defaults: "limits.max_request_bytes: 8388608 -> 16777216".
    full_a, full_b = (_secrets(c.model_dump(exclude_none=True)) for c in (old, new))
    gw_a = {k: full_a[k] for k in _GATEWAY_KEYS if k in full_a}
    gw_b = {k: full_b[k] for k in _GATEWAY_KEYS if k in full_b}
    gateway = Section("gateway")
    lines = _field_changes(gw_a, gw_b)
    if lines:
        gateway.changed["settings"] = lines
    sections.append(gateway)
    return ConfigDiff(sections)


def run(old_path: Path, new_path: Path) -> tuple[int, str]:
    """(exit status, report): 1 when NEW is invalid, 2 when OLD is (nothing to compare)."""
    try:
        new = load_config(new_path)
    except ConfigError as exc:
        return 1, f"error: NEW config is invalid: {exc}"
    try:
        old = load_config(old_path)
    except ConfigError as exc:
        return 2, f"error: OLD config is invalid (cannot diff): {exc}"
    from control_plane.compile import compile_config

    try:
        compile_config(new)
    except ConfigError as exc:
        return 1, f"error: NEW config does not compile: {exc}"
    return 0, diff_configs(old, new).render(str(old_path), str(new_path))
