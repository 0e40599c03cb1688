"""Replay results: the summary per run (table and JSON) and a self-contained HTML report.

The HTML report draws its charts as inline SVG written here (no plotting library, no script,
nothing fetched): one file that opens anywhere, and no heavy dependency in the gateway's
install for one report.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

from switchyard.replay.engine import Outcome, Result

TRACE_CITATION = ("Azure LLM inference trace 2023 (CC-BY 4.0): Patel et al., \"Splitwise: "
                  "Efficient generative LLM inference using phase splitting\", ISCA 2024.")


def quantile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank quantile of unsorted values (None when empty)."""
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def _meets(o: Outcome, ttft_s: float, tpot_s: float | None) -> bool:
    if o.status != "answered" or o.ttft_s is None or o.ttft_s > ttft_s:
        return False
    return tpot_s is None or o.tpot_s is None or o.tpot_s <= tpot_s


def summary(r: Result) -> dict[str, Any]:
    """The numbers the replay prints for one run."""
    outs = r.outcomes
    answered = [o for o in outs if o.status == "answered"]
    ttfts = [o.ttft_s * 1000 for o in answered if o.ttft_s is not None]
    quals = [o.quality for o in answered if o.quality is not None]
    slo_tpot = r.slo_tpot_ms / 1000 if r.slo_tpot_ms else None
    met = sum(1 for o in outs if _meets(o, r.slo_ttft_ms / 1000, slo_tpot))
    share: dict[str, int] = {}
    for o in answered:
        label = r.clusters.get(o.backend or "", o.backend or "-")
        share[label] = share.get(label, 0) + 1
    p50, p95 = quantile(ttfts, 0.5), quantile(ttfts, 0.95)
    return {
        "config": r.label,
        "model": r.alias,
        "strategy": r.strategy,
        "selection": r.selection,
        "requests": len(outs),
        "answered": len(answered),
        "shed": sum(1 for o in outs if o.status == "shed"),
        "failed": sum(1 for o in outs if o.status == "failed"),
        "too_long": sum(1 for o in outs if o.status == "too_long"),
        "unservable": sum(1 for o in outs if o.status == "unservable"),
        "failovers": sum(max(0, o.attempts - 1) for o in outs),
        "cost_usd": round(sum(o.cost_usd for o in outs), 6),
        "ttft_p50_ms": round(p50, 1) if p50 is not None else None,
        "ttft_p95_ms": round(p95, 1) if p95 is not None else None,
        "slo": {"ttft_ms": r.slo_ttft_ms, "tpot_ms": r.slo_tpot_ms},
        "slo_attainment": round(met / len(outs), 4) if outs else None,
        "mean_quality": round(sum(quals) / len(quals), 4) if quals else None,
        "share": {k: round(v / len(answered), 4) for k, v in sorted(share.items())},
        "wall_s": round(r.wall_s, 3),
    }


def per_minute(r: Result) -> dict[str, Any]:
    """Series over simulated time, one point per minute: cost, TTFT p95, share per backend."""
    if not r.outcomes:
        return {"minutes": [], "cost_usd": [], "ttft_p95_ms": [], "share": {}}
    n = int(max(o.t for o in r.outcomes) // 60) + 1
    cost = [0.0] * n
    ttfts: list[list[float]] = [[] for _ in range(n)]
    counts: list[dict[str, int]] = [{} for _ in range(n)]
    labels: set[str] = set()
    for o in r.outcomes:
        m = int(o.t // 60)
        cost[m] += o.cost_usd
        if o.status == "answered" and o.ttft_s is not None:
            ttfts[m].append(o.ttft_s * 1000)
            label = r.clusters.get(o.backend or "", o.backend or "-")
            labels.add(label)
            counts[m][label] = counts[m].get(label, 0) + 1
    share = {}
    for label in sorted(labels):
        share[label] = [round(c.get(label, 0) / max(1, sum(c.values())), 4) for c in counts]
    p95s = [quantile(t, 0.95) for t in ttfts]
    return {"minutes": list(range(n)), "cost_usd": [round(c, 6) for c in cost],
            "ttft_p95_ms": [round(p, 1) if p is not None else None for p in p95s],
            "share": share}


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.1f}%"


def _num(v: float | None, fmt: str = "{:.0f}") -> str:
    return "-" if v is None else fmt.format(v)


def table(summaries: Sequence[dict[str, Any]]) -> str:
    """A plain-text table, one column per run."""
    rows = [
        ("config", lambda s: s["config"]),
        ("model / strategy", lambda s: f"{s['model']} / {s['strategy']}"),
        ("requests", lambda s: str(s["requests"])),
        ("total cost (USD)", lambda s: f"{s['cost_usd']:.2f}"),
        ("TTFT p50 (ms)", lambda s: _num(s["ttft_p50_ms"])),
        ("TTFT p95 (ms)", lambda s: _num(s["ttft_p95_ms"])),
        ("SLO attainment", lambda s: f"{_pct(s['slo_attainment'])} (TTFT <= "
                                     f"{s['slo']['ttft_ms']:.0f} ms"
                                     + (f", TPOT <= {s['slo']['tpot_ms']:.0f} ms"
                                        if s["slo"]["tpot_ms"] else "") + ")"),
        ("mean quality", lambda s: _num(s["mean_quality"], "{:.3f}")),
        ("shed", lambda s: str(s["shed"])),
        ("failed", lambda s: str(s["failed"])),
        ("failovers", lambda s: str(s["failovers"])),
    ]
    labels = sorted({b for s in summaries for b in s["share"]})
    body = [(name, [fn(s) for s in summaries]) for name, fn in rows]
    body += [(f"share {b}", [_pct(s["share"].get(b, 0.0)) for s in summaries]) for b in labels]
    w0 = max(len(n) for n, _ in body)
    widths = [max(len(v[i]) for _, v in body) for i in range(len(summaries))]
    lines = []
    for i, (name, values) in enumerate(body):
        lines.append("  ".join([name.ljust(w0), *(v.ljust(w) for v, w in zip(
            values, widths, strict=True))]).rstrip())
        if i == 1:
            lines.append("-" * (w0 + sum(widths) + 2 * len(widths)))
    return "\n".join(lines)


# -- HTML ---------------------------------------------------------------------------------------
_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")


def _svg_lines(title: str, series: Sequence[tuple[str, Sequence[float | None]]],
               y_label: str, w: int = 620, h: int = 240) -> str:
    """A line chart as inline SVG: x = minute, one polyline per named series."""
    ml, mr, mt, mb = 56, 12, 28, 34
    pts = [v for _, ys in series for v in ys if v is not None]
    n = max((len(ys) for _, ys in series), default=0)
    ymax = max(pts, default=1.0) or 1.0
    ymax *= 1.05
    sx = (w - ml - mr) / max(1, n - 1)
    sy = (h - mt - mb) / ymax
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
           f'viewBox="0 0 {w} {h}" role="img" aria-label="{html.escape(title)}">',
           f'<text x="{ml}" y="16" font-size="13" font-weight="bold">{html.escape(title)}</text>',
           f'<line x1="{ml}" y1="{h - mb}" x2="{w - mr}" y2="{h - mb}" stroke="#444"/>',
           f'<line x1="{ml}" y1="{mt}" x2="{ml}" y2="{h - mb}" stroke="#444"/>']
    for i in range(5):
        v = ymax * i / 4
        y = h - mb - v * sy
        out.append(f'<line x1="{ml}" y1="{y:.1f}" x2="{w - mr}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{ml - 4}" y="{y + 4:.1f}" font-size="10" text-anchor="end">'
                   f'{v:.3g}</text>')
    step = max(1, round(n / 6))
    for m in range(0, n, step):
        x = ml + m * sx
        out.append(f'<text x="{x:.1f}" y="{h - mb + 14}" font-size="10" '
                   f'text-anchor="middle">{m}</text>')
    out.append(f'<text x="{(w + ml) / 2:.0f}" y="{h - 4}" font-size="10" '
               f'text-anchor="middle">minute</text>')
    out.append(f'<text x="12" y="{(h + mt - mb) / 2:.0f}" font-size="10" text-anchor="middle" '
               f'transform="rotate(-90 12 {(h + mt - mb) / 2:.0f})">{html.escape(y_label)}</text>')
    for i, (name, ys) in enumerate(series):
        color = _COLORS[i % len(_COLORS)]
        coords = " ".join(f"{ml + m * sx:.1f},{h - mb - v * sy:.1f}"
                          for m, v in enumerate(ys) if v is not None)
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" '
                   f'points="{coords}"><title>{html.escape(name)}</title></polyline>')
    legend_y = mt + 4
    for i, (name, _) in enumerate(series):
        color = _COLORS[i % len(_COLORS)]
        y = legend_y + 13 * i
        out.append(f'<rect x="{w - mr - 200}" y="{y}" width="10" height="3" fill="{color}"/>')
        out.append(f'<text x="{w - mr - 186}" y="{y + 5}" font-size="10">'
                   f'{html.escape(name[:34])}</text>')
    out.append("</svg>")
    return "".join(out)


def html_report(results: Sequence[Result], trace_name: str) -> str:
    """One self-contained page: the summary table and charts over time per run."""
    summaries = [summary(r) for r in results]
    series = [per_minute(r) for r in results]
    labels = [f"{s['config']}" for s in summaries]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        "<title>switchyard replay</title><style>body{font-family:system-ui,sans-serif;"
        "margin:24px;max-width:1320px}table{border-collapse:collapse}td,th{border:1px solid "
        "#ccc;padding:4px 8px;text-align:right}th:first-child,td:first-child{text-align:left}"
        ".charts{display:flex;flex-wrap:wrap;gap:12px}pre{background:#f6f6f6;padding:8px}"
        "</style></head><body>",
        "<h1>switchyard replay</h1>",
        f"<p>Trace: <code>{html.escape(trace_name)}</code>. Simulated backends from each "
        f"config; selection: <code>ext_proc.select.{html.escape(summaries[0]['selection'])}"
        "</code> (the live code).</p>" if summaries else "",
        "<h2>Summary</h2><pre>" + html.escape(table(summaries)) + "</pre>",
        "<h2>Over time, all runs</h2><div class='charts'>",
        _svg_lines("Cost per minute (USD)", list(zip(labels, [s["cost_usd"] for s in series],
                                                     strict=True)), "USD"),
        _svg_lines("TTFT p95 per minute (ms)", list(zip(
            labels, [s["ttft_p95_ms"] for s in series], strict=True)), "ms"),
        "</div>",
    ]
    for summ, ser in zip(summaries, series, strict=True):
        parts.append(f"<h2>Share per backend: {html.escape(summ['config'])}</h2>")
        parts.append("<div class='charts'>" + _svg_lines(
            "Share of answered requests per minute", sorted(ser["share"].items()), "share")
            + "</div>")
    parts.append(f"<p><small>{html.escape(TRACE_CITATION)}</small></p></body></html>")
    return "\n".join(parts)
