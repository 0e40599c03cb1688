"""Marked sections of bench/RESULTS.md that one bench script owns (`<!-- bench.NAME: begin -->`
... `<!-- bench.NAME: end -->`): rewritten in place, everything else kept (bench.run keeps
every such section when it rewrites the file)."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def write_section(name: str, body: str, path: Path = RESULTS) -> None:
    """Replace section `name` in `path` with `body` (markers added), or append it."""
    begin, end = f"<!-- bench.{name}: begin -->", f"<!-- bench.{name}: end -->"
    section = f"{begin}\n{body.rstrip()}\n{end}\n"
    text = path.read_text() if path.exists() else ""
    start, stop = text.find(begin), text.find(end)
    if start != -1 and stop != -1:
        rest = text[stop + len(end):].lstrip("\n")
        text = text[:start] + section + ("\n" + rest if rest else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)
