"""`switchyard plan` output: a terminal table, JSON, and an HTML report with matplotlib charts
(demand over the trace, replicas needed per minute, cost per option)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from switchyard.capacity.plan import Plan

CITATION = ("Azure LLM inference trace 2023 (CC-BY 4.0), from Patel et al., \"Splitwise: "
            "Efficient Generative LLM Inference Using Phase Splitting\", ISCA 2024.")


def table(p: Plan) -> str:
    own = f"self-hosted x{p.replicas} @ ${p.gpu_hour_usd:.2f}/GPU-h"
    lines = [
        f"pool {p.pool}: {p.trace_requests} requests over {p.duration_s / 60:.0f} min; "
        f"mean input {p.mean_input:.0f} / output {p.mean_output:.0f} tokens",
        f"demand: mean {p.mean_rps:.2f} req/s, peak {p.peak_rps:.2f} req/s "
        f"(minute {p.peak_minute})",
        f"SLO p95: TTFT <= {p.slo_ttft_ms:.0f} ms, TPOT <= {p.slo_tpot_ms:.0f} ms; "
        f"one replica serves {p.capacity_rps:.2f} req/s within it (analytic)",
        "",
        f"{'replicas':>8}  {'p95 TTFT ms':>11}  {'p95 TPOT ms':>11}  meets SLO (simulator, "
        "busiest window)",
    ]
    for c in p.checks:
        lines.append(f"{c.replicas:>8}  {c.p95_ttft_ms:>11.0f}  {c.p95_tpot_ms:>11.1f}  "
                     f"{'yes' if c.meets else 'no'}")
    lines += [
        "",
        f"recommended: {p.replicas} replicas (analytic {p.analytic_replicas}), mean "
        f"utilisation {p.utilisation:.0%}",
        "",
        f"{'option':<40}  {'USD for trace':>13}  {'break-even util':>15}",
        f"{own:<40}  {p.gpu_cost_usd:>13.2f}  {'':>15}",
    ]
    for h in p.hosted:
        be = f"{h.break_even_utilisation:.0%}" if h.break_even_utilisation < 10 else ">1000%"
        lines.append(f"{h.backend:<40}  {h.cost_usd:>13.2f}  {be:>15}")
    if p.mix:
        m = p.mix
        mix = f"cheapest mix: {m['gpu_replicas']} GPU + {m['hosted_backend']}"
        lines.append(f"{mix:<40}  {m['cost_usd']:>13.2f}  {m['hosted_share']:>14.0%} hosted")
    return "\n".join(lines)


def main_chart_png(p: Plan) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax3) = plt.subplots(1, 2, figsize=(11, 4))
    s = p.series
    ax1.plot(s["minute"], s["rps"], color="tab:blue", label="demand (req/s)")
    ax1.set_xlabel("minute of trace")
    ax1.set_ylabel("requests / s", color="tab:blue")
    ax2 = ax1.twinx()
    ax2.step(s["minute"], s["replicas_needed"], where="post", color="tab:red",
             label="replicas needed")
    ax2.axhline(p.replicas, color="tab:red", linestyle="--", linewidth=0.8,
                label=f"recommended ({p.replicas})")
    ax2.set_ylabel("replicas", color="tab:red")
    ax2.set_ylim(0, max(p.replicas, max(s["replicas_needed"] or [1])) + 1)
    ax1.set_title(f"{p.pool}: demand and replicas (SLO p95 TTFT {p.slo_ttft_ms:.0f} ms)")
    names = [f"self-hosted x{p.replicas}"] + [h.backend for h in p.hosted]
    costs = [p.gpu_cost_usd] + [h.cost_usd for h in p.hosted]
    if p.mix:
        names.append(f"mix {p.mix['gpu_replicas']} GPU + hosted")
        costs.append(p.mix["cost_usd"])
    ax3.barh(names, costs, color="tab:green")
    ax3.set_xlabel("USD for the trace")
    ax3.set_title("cost per option")
    fig.text(0.01, 0.01, "Trace: " + CITATION, fontsize=6)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def write_html(p: Plan, path: Path, png: bytes | None = None) -> None:
    png = png if png is not None else main_chart_png(p)
    img = base64.b64encode(png).decode()
    path.write_text(f"""<!doctype html><html><head><meta charset="utf-8">
<title>switchyard plan: {html.escape(p.pool)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}
pre{{background:#f6f6f6;padding:1em}}</style></head><body>
<h1>Capacity plan for pool {html.escape(p.pool)}</h1>
<img alt="demand, replicas and cost" src="data:image/png;base64,{img}" width="100%">
<pre>{html.escape(table(p))}</pre>
<p><small>Trace: {html.escape(CITATION)}</small></p></body></html>
""")
