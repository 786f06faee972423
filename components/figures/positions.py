"""Physical row against logical position of every token, and the mask a step's queries used."""

from __future__ import annotations

import html

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from tempo_core.layout import step_mask
from tempo_core.trace import Trace

from .style import show_token


def step_mask_rows(trace: Trace, step: int) -> tuple[torch.Tensor, list[int]]:
    """The boolean mask step `step`'s queries were given ([k, rows so far]) and the physical rows of the run."""
    st = trace.steps[step]
    start = st.candidates[0].row
    alive = [True] * start
    for r in st.hidden_rows:
        alive[r] = False
    k = len(st.candidates)
    visible = bool(trace.settings.get("allow_intraset_token_visibility"))
    return step_mask(alive, k, visible, torch.device("cpu"))[0, 0], list(range(start + k))


def row_labels(trace: Trace) -> dict[int, tuple[str, int, int]]:
    """physical row -> (token text, logical position, step or -1 for the prompt)."""
    out = {i: ("", i, -1) for i in range(len(trace.prompt_token_ids))}
    shared = trace.settings.get("use_custom_rope", True)  # off: siblings at consecutive positions
    for st in trace.steps:
        for i, c in enumerate(st.candidates):
            if c.row >= 0:
                out[c.row] = (c.text, st.position + (0 if shared else i), st.step)
    return out


def positions_figure(trace: Trace, step: int) -> go.Figure:
    if not trace.steps or trace.mode != "tempo":
        return go.Figure().update_layout(title="Positions & mask (a TEMPO run is needed)", template="plotly_white")
    step = max(0, min(step, len(trace.steps) - 1))
    mask, rows = step_mask_rows(trace, step)
    labels = row_labels(trace)
    fig = make_subplots(rows=1, cols=2, column_widths=[0.33, 0.67], horizontal_spacing=0.16,  # room: row labels
                        subplot_titles=("physical row → logical position",
                                        f"mask of step {step}'s queries (rows: its candidates)"))
    for kind, sel, colour in (("prompt", lambda r: labels[r][2] < 0, "#999"),
                              ("candidate", lambda r: labels[r][2] >= 0, "#440154")):
        rs = [r for r in rows if sel(r)]
        fig.add_trace(go.Scatter(x=rs, y=[labels[r][1] for r in rs], mode="markers", name=kind,
                                 marker=dict(color=colour, size=7),
                                 hovertext=[f"row {r}: {html.escape(show_token(labels[r][0]))} at position "
                                            f"{labels[r][1]}" for r in rs], hoverinfo="text"), row=1, col=1)
    st = trace.steps[step]
    ylabels = [f"{show_token(c.shown)[:10]} ({step}:{i})" for i, c in enumerate(st.candidates)]
    # prompt rows carry no token text in a trace: they are named "prompt"
    xlabels = [f"{r}:{show_token(labels[r][0])[:8] if labels[r][2] >= 0 else 'prompt'}@{labels[r][1]}" for r in rows]
    fig.add_trace(go.Heatmap(z=mask.int().tolist(), x=xlabels, y=ylabels, zmin=0, zmax=1, showscale=False,
                             colorscale=[[0, "#f4f4f4"], [1, "#3b528b"]], xgap=1, ygap=1,
                             hovertemplate="query %{y} → key %{x}: %{z}<extra></extra>"), row=1, col=2)
    for name, colour in (("mask: may attend", "#3b528b"), ("mask: hidden", "#e4e4e4")):  # legend entries
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=name,
                                 marker=dict(symbol="square", size=12, color=colour)), row=1, col=2)
    fig.update_xaxes(title="physical row", row=1, col=1)
    fig.update_yaxes(title="position id", row=1, col=1)
    fig.update_xaxes(showticklabels=len(rows) <= 60, tickangle=-60, automargin=True,
                     title="keys: physical row:token@position" + ("" if len(rows) <= 60 else " (hover)"), row=1, col=2)
    fig.update_layout(title=f"Positions & mask — step {step}: {len(st.candidates)} siblings share position "
                            f"{st.position}; {len(st.hidden_rows)} earlier rows hidden (pruned)",
                      template="plotly_white", height=490, margin=dict(l=10, r=10, t=60, b=40),
                      legend=dict(orientation="h", y=-0.42))  # below the rotated key labels and their title
    return fig
