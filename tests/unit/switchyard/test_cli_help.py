"""The command line a person meets: --version, and every option of every command has help text
that shows its default."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from switchyard import cli

SWITCHYARD = [sys.executable, "-m", "switchyard.cli"]


def _parsers() -> dict[str, argparse.ArgumentParser]:
    """Every parser `switchyard` builds, by command (the pass-through ones included)."""
    captured: dict[str, argparse.ArgumentParser] = {}
    real = argparse.ArgumentParser.parse_known_args

    def grab(self: argparse.ArgumentParser, *a: object, **kw: object) -> object:
        captured.setdefault(self.prog, self)
        raise SystemExit(0)

    argparse.ArgumentParser.parse_known_args = grab  # type: ignore[method-assign,assignment]
    try:
        with pytest.raises(SystemExit):
            cli.main(["up"])
    finally:
        argparse.ArgumentParser.parse_known_args = real  # type: ignore[method-assign]
    top = captured["switchyard"]
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    out = dict(sub.choices)
    from control_plane.server import build_parser as cp_parser
    from ext_proc.server import build_parser as ep_parser

    out["control-plane"] = cp_parser()
    out["ext-proc"] = ep_parser()
    out["switchyard"] = top
    return out


#: Commands whose options are not documented yet (the GPU pool work's plan/profile): listed
#: here so the gap is visible; remove once they have help text.
PENDING = {"plan", "profile"}


def test_every_option_has_help_and_its_default() -> None:
    for name, parser in _parsers().items():
        if name in PENDING:
            continue
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
                continue
            assert action.help, f"{name} {action.option_strings or action.dest}: no help text"
        text = parser.format_help()
        for action in parser._actions:
            shown = action.default not in (None, False, argparse.SUPPRESS) and not isinstance(
                action.default, list) and not action.required
            if shown and action.help:
                assert f"default: {action.default}" in " ".join(text.split()), (
                    name, action.dest)


def test_version() -> None:
    out = subprocess.run([*SWITCHYARD, "--version"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0
    assert out.stdout.startswith("switchyard ") and cli.version() in out.stdout
