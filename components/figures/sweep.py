"""A threshold sweep: width, pruning, faithfulness and clean text across selection thresholds."""

from __future__ import annotations

import html

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from tempo_core.trace import Trace

from .style import PRUNED, show_token


def sweep_figure(runs: list[Trace]) -> go.Figure:
    """Small multiples over a threshold sweep: width, pruned count, faithfulness, clean-text length."""
    thr = [t.settings["selection_threshold"] for t in runs]
    measured = any(t.faithfulness for t in runs)
    kl_title = "mean KL vs paths" if measured else "mean KL: faithfulness is off (Research options)"
    fig = make_subplots(rows=1, cols=3, subplot_titles=("mean set size", "pruned per run", kl_title))
    fig.add_trace(go.Scatter(x=thr, y=[t.stats.get("mean_set_size", 0) for t in runs], mode="lines+markers",
                             name="width"), row=1, col=1)
    fig.add_trace(go.Scatter(x=thr, y=[t.stats.get("pruned", 0) for t in runs], mode="lines+markers",
                             name="pruned"), row=1, col=2)
    fig.add_trace(go.Scatter(x=thr, y=[(t.faithfulness or {}).get("mean_kl") for t in runs], mode="lines+markers",
                             name="KL"), row=1, col=3)
    fig.update_xaxes(title="selection threshold")
    fig.update_layout(title="Threshold sweep", template="plotly_white", height=300, showlegend=False,
                      margin=dict(l=10, r=10, t=60, b=40))
    return fig


def sweep_multiples(runs: list[Trace]) -> go.Figure:
    """Small multiples: one panel per threshold, the tree's width at every step (pruned part in red)."""
    n = max(1, len(runs))
    fig = make_subplots(rows=1, cols=n, shared_yaxes=True,
                        subplot_titles=[f"threshold {t.settings['selection_threshold']}" for t in runs] or [""])
    for col, t in enumerate(runs, start=1):
        x = [st.step for st in t.steps]
        alive = [len(st.alive) for st in t.steps]
        dead = [len(st.candidates) - len(st.alive) for st in t.steps]
        fig.add_trace(go.Bar(x=x, y=alive, marker_color="#3b528b", name="alive", showlegend=col == 1,
                             hovertext=[show_token(c.text) for st in t.steps for c in st.alive[:1]]), row=1, col=col)
        fig.add_trace(go.Bar(x=x, y=dead, marker_color=PRUNED, name="pruned", showlegend=col == 1), row=1, col=col)
    fig.update_layout(barmode="stack", template="plotly_white", height=260, margin=dict(l=10, r=10, t=50, b=30),
                      title="Tree width per step, one panel per threshold")
    return fig


def _cell(text: str) -> str:
    """Text safe inside one markdown table cell: no line breaks, no column bars, no HTML."""
    return html.escape(text).replace("|", "¦").replace("\r", "").replace("\n", " ⏎ ")


def sweep_table(runs: list[Trace]) -> str:
    rows = "".join(
        f"| {t.settings['selection_threshold']} | {t.stats.get('mean_set_size', 0):.2f} | {t.stats.get('pruned', 0)} "
        f"| {t.stats.get('reused_steps', 0)} | "
        f"{'' if not t.faithfulness else format(t.faithfulness['mean_kl'], '.3f')} | "
        f"{_cell(t.clean_text.strip()[:80])} |\n" for t in runs)
    stopped = next((t.stop_reason for t in runs if t.stop_reason in ("stopped", "time_limit")), None)
    note = f"**Sweep stopped early ({stopped.replace('_', ' ')})**: the runs it made so far.\n\n" if stopped else ""
    return (note + "| threshold | mean set | pruned | steps reused | mean KL | clean text |\n|---|---|---|---|---|---|\n"
            + rows)
