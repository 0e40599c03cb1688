"""`switchyard validate --diff OLD NEW` on the example pairs in config/examples/diff/, against
golden outputs in tests/data/diff/ (regenerate with UPDATE_GOLDEN=1 after a deliberate change)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from control_plane.config import load_config
from switchyard.config_diff import diff_configs

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = Path("config/examples/diff")
GOLDEN = ROOT / "tests" / "data" / "diff"


@pytest.mark.parametrize(("new", "status"), [("change", 0), ("settings_only", 0),
                                              ("invalid", 1)])
def test_diff_matches_golden_output(new: str, status: int) -> None:
    out = subprocess.run([sys.executable, "-m", "switchyard.cli", "validate", "--diff",
                          str(EXAMPLES / "base.yaml"), str(EXAMPLES / f"{new}.yaml")],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == status, out.stderr
    text = out.stdout + out.stderr
    golden = GOLDEN / f"{new}.txt"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text()


def test_no_secret_is_printed_and_same_config_has_no_changes() -> None:
    base = load_config(ROOT / EXAMPLES / "base.yaml")
    change = load_config(ROOT / EXAMPLES / "change.yaml")
    text = diff_configs(base, change).render("a", "b")
    assert "team-a-secret-key" not in text and "team-a-rotated-key" not in text
    assert "api_keys: changed (secret, not shown)" in text
    same = diff_configs(base, base)
    assert not same.routing_changed
    assert same.render("a", "a").splitlines()[1:] == [
        "no changes", "summary: no changes", "routing changed: no"]


def test_invalid_old_config_is_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "old.yaml"
    bad.write_text("providers: {}\n")
    out = subprocess.run([sys.executable, "-m", "switchyard.cli", "validate", "--diff", str(bad),
                          str(ROOT / EXAMPLES / "base.yaml")], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2 and "OLD config is invalid" in out.stderr
