"""Config validation: every error names file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from control_plane.config import ConfigError, default_config_path, load_config, parse_config

GOOD = """\
listen: {address: 127.0.0.1, port: 8080}
providers:
  p1: {kind: openai, base_url: "http://127.0.0.1:8101", api_key: {env: SY_TEST_KEY}}
  p2: {kind: anthropic, base_url: "https://api.anthropic.com"}
models:
  m1:
    backends:
      - {provider: p1, model: gpt-4o-mini, price: {input: 0.15, output: 0.6}, context_window: 128000}
      - {provider: p2, model: claude-3-5-haiku-latest}
"""


def _err(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as exc:
        parse_config(text, "cfg.yaml")
    return exc.value


def test_good_config_parses() -> None:
    cfg = parse_config(GOOD, "cfg.yaml")
    assert [b.provider for b in cfg.models["m1"].backends] == ["p1", "p2"]
    assert cfg.providers["p2"].tls and cfg.providers["p2"].port == 443
    assert cfg.listen.port == 8080 and cfg.admin.port == 9901


def test_embedded_default_is_valid() -> None:
    cfg = load_config(default_config_path())
    assert set(cfg.models) == {"gpt-sim", "claude-sim"}
    assert all(p.simulate for p in cfg.providers.values())


@pytest.mark.parametrize(("text", "line", "field", "needle"), [
    (GOOD.replace("port: 8080}", "port: 8080, bogus: 1}"), 1, "listen.bogus", "unknown key"),
    (GOOD.replace("kind: anthropic", "kind: nope"), 4, "providers.p2.kind", "openai"),
    (GOOD.replace("provider: p2", "provider: p9"), 9, "models.m1.backends[1].provider",
     "unknown provider 'p9'"),
    (GOOD.replace("input: 0.15", "input: -1"), 8, "models.m1.backends[0].price.input",
     "greater than or equal"),
    (GOOD.replace("context_window: 128000", "context_window: lots"), 8,
     "models.m1.backends[0].context_window", "integer"),
    (GOOD.replace("https://api.anthropic.com", "ftp://x"), 4, "providers.p2", "http(s) URL"),
    (GOOD.replace("{env: SY_TEST_KEY}", "{}"), 3, "providers.p1.api_key", "exactly one"),
    (GOOD.replace("    backends:\n", "    backendz:\n"), 7, "models.m1.backendz", "unknown key"),
    (GOOD + "  m1:\n    backends: []\n", 10, "models.m1", "duplicate key"),
    (GOOD.replace("models:", "models: [").replace("m1:", "m1"), None, "", "YAML syntax error"),
])
def test_errors_name_file_line_field(text: str, line: int | None, field: str,
                                     needle: str) -> None:
    err = _err(text)
    assert err.file == "cfg.yaml"
    if line is not None:
        assert err.line == line
    assert err.field == field
    assert needle in err.message
    assert str(err).startswith("cfg.yaml:")


def test_missing_required_fields() -> None:
    err = _err("listen: {port: 1}\n")
    assert err.field == "providers" and "required" in err.message
    err = _err(GOOD.replace("model: gpt-4o-mini, ", ""))
    assert err.field == "models.m1.backends[0].model" and err.line == 8


def test_top_level_must_be_mapping() -> None:
    assert "mapping" in _err("- a\n- b\n").message


def test_secret_from_env_and_never_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = parse_config(GOOD.replace("{env: SY_TEST_KEY}", '{value: "sk-very-secret"}'))
    key = cfg.providers["p1"].api_key
    assert key is not None and key.resolve() == "sk-very-secret"
    assert "sk-very-secret" not in repr(cfg) and "sk-very-secret" not in str(cfg)
    cfg = parse_config(GOOD)
    monkeypatch.delenv("SY_TEST_KEY", raising=False)
    assert cfg.providers["p1"].api_key.resolve() is None  # type: ignore[union-attr]
    monkeypatch.setenv("SY_TEST_KEY", "from-env")
    assert cfg.providers["p1"].api_key.resolve() == "from-env"  # type: ignore[union-attr]


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path / "missing.yaml")
    assert "cannot read config" in str(exc.value)


@pytest.mark.parametrize("path", sorted((default_config_path().parent / "examples").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_example_configs_validate_and_compile(path: Path) -> None:
    from control_plane.compile import compile_config

    snapshot = compile_config(load_config(path))
    assert snapshot.routing.models


def test_retry_on_accepts_bare_status_code() -> None:
    cfg = parse_config(GOOD.replace("  m1:\n    backends:\n",
                                    "  m1:\n    failover: {retry_on: [5xx, 429]}\n    backends:\n"))
    assert cfg.models["m1"].failover.retry_on == ["5xx", "429"]


def test_cached_input_price_defaults_to_input_price_and_reaches_the_routing_table() -> None:
    from control_plane.compile import compile_config
    from ext_proc.table import Routes

    text = GOOD.replace("price: {input: 0.15, output: 0.6}",
                        "price: {input: 0.15, output: 0.6, cached_input: 0.075}")
    cfg = parse_config(text)
    price = cfg.models["m1"].backends[0].price
    assert price is not None and price.cached_input == 0.075
    default = parse_config(GOOD).models["m1"].backends[0].price
    assert default is not None and default.cached_input == default.input == 0.15

    routes = Routes.from_proto(compile_config(cfg).routing)
    cached = {b.model: b.price_cached_input for b in routes.clusters.values()}
    assert cached["gpt-4o-mini"] == 0.075
    assert cached["claude-3-5-haiku-latest"] == 0.0  # no price configured at all
    routes = Routes.from_proto(compile_config(parse_config(GOOD)).routing)
    assert {b.model: b.price_cached_input for b in routes.clusters.values()}[
        "gpt-4o-mini"] == 0.15


def test_cached_input_price_is_validated() -> None:
    err = _err(GOOD.replace("output: 0.6}", "output: 0.6, cached_input: -1}"))
    assert err.line == 8 and err.field == "models.m1.backends[0].price.cached_input"
    assert "greater than or equal" in str(err)


TENANTS = GOOD + """\
tenants:
  acme:
    api_keys: [{value: "sk-acme"}]
    priority: chat
    limits: {rpm: 600, tpm: 200000, max_concurrent: 50}
    models: {m1: {rpm: 60}}
"""


@pytest.mark.parametrize(("text", "line", "field", "needle"), [
    (TENANTS.replace("rpm: 600", "rpm: -5"), 14, "tenants.acme.limits.rpm", "greater than 0"),
    (TENANTS.replace("priority: chat", "priority: vip"), 13, "tenants.acme.priority",
     "interactive"),
    (TENANTS.replace("models: {m1:", "models: {m9:"), 15, "tenants.acme.models.m9",
     "unknown model 'm9'"),
    (TENANTS + "priorities:\n  gold: {quota_share: 0.5}\n", 17, "priorities.gold", "interactive"),
    (TENANTS + "priorities:\n  batch: {quota_share: 1.5}\n", 17, "priorities.batch.quota_share",
     "less than or equal"),
    (TENANTS.replace('[{value: "sk-acme"}]', '[{sha256: "abc"}]'), 12,
     "tenants.acme.api_keys[0].sha256", "pattern"),
    (GOOD.replace("api_key: {env: SY_TEST_KEY}}", "limits: {tpm: 0}}"), 3,
     "providers.p1.limits.tpm", "greater than 0"),
])
def test_bad_admission_config_names_file_line_field(text: str, line: int, field: str,
                                                    needle: str) -> None:
    err = _err(text)
    assert (err.line, err.field) == (line, field), str(err)
    assert needle in err.message


def test_tenant_keys_reach_ext_proc_only_as_digests() -> None:
    import hashlib

    import orjson

    from control_plane.compile import compile_config

    snap = compile_config(parse_config(TENANTS, "cfg.yaml"))
    assert "sk-acme" not in snap.routing.admission_json
    doc = orjson.loads(snap.routing.admission_json)
    assert doc["tenants"]["acme"]["api_keys"] == [
        {"sha256": hashlib.sha256(b"sk-acme").hexdigest()}]
    assert doc["tenants"]["acme"]["priority"] == "chat"
    assert doc["tenants"]["acme"]["models"] == {"m1": {"rpm": 60}}


@pytest.mark.parametrize(("extra", "field", "needle"), [
    ("admin: {address: 127.0.0.1, port: 8080}\n", "admin.port", "port 8080 is already used by listen.port"),
    ("ext_proc: {metrics_port: 9901}\n", "ext_proc.metrics_port", "admin.port"),
])
def test_port_collisions_are_rejected(extra: str, field: str, needle: str) -> None:
    err = _err(GOOD + extra)
    assert err.field == field and needle in err.message, str(err)


def test_two_simulated_providers_on_one_port_are_rejected() -> None:
    text = GOOD.replace('p2: {kind: anthropic, base_url: "https://api.anthropic.com"}',
                        'p2: {kind: anthropic, base_url: "http://127.0.0.1:8101", simulate: {}}')
    text = text.replace("api_key: {env: SY_TEST_KEY}}", "api_key: {env: SY_TEST_KEY}, simulate: {}}")
    err = _err(text)
    assert err.field == "providers.p2.base_url" and "providers.p1.base_url" in err.message


def test_ext_proc_workers_need_shared_state() -> None:
    """More than one worker is more than one replica of admission and selection state: it
    needs Redis, and the error says which field and why; `auto` falls back to 1 without it."""
    err = _err(GOOD + "ext_proc: {workers: 2}\n")
    assert err.field == "ext_proc.workers" and err.line == 10
    assert "shared_state.redis" in err.message and "replica" in err.message
    assert "whole number" in _err(GOOD + "ext_proc: {workers: 0}\n").message
    assert parse_config(GOOD + "ext_proc: {workers: auto}\n", "c.yaml").ext_proc_workers == 1
    shared = GOOD + "shared_state: {redis: {url: 'redis://127.0.0.1:6379'}}\n"
    cfg = parse_config(shared + "ext_proc: {workers: 3, port: 18081, metrics_port: 9464}\n",
                       "c.yaml")
    assert cfg.ext_proc_workers == 3
    ports = {p for loc, _, p in cfg.binds() if loc[0] == "ext_proc"}
    assert ports == {18081, 18082, 18083, 9464, 9465, 9466}
    assert "already used" in _err(shared + "ext_proc: {workers: 2, port: 9000, "
                                           "metrics_port: 9001}\n").message
