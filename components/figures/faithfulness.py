"""Faithfulness of a run to the branches it stands for: KL(explicit paths || TEMPO) and top-token agreement per
step, and single-threadedness (w against the top sibling's share)."""

from __future__ import annotations

import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from tempo_core.trace import Trace

from .style import PATH, PRUNED, UIREVISION


def faithfulness_figure(trace: Trace) -> go.Figure:
    f = trace.faithfulness
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    if not f:
        fig.update_layout(title="Faithfulness (tick 'Measure faithfulness' and generate)", template="plotly_white",
                          height=320, uirevision=UIREVISION)
        return fig
    steps = f["steps"]
    x = [s["step"] for s in steps]
    fig.add_trace(go.Bar(x=x, y=[s["kl"] for s in steps], name="KL(explicit paths ‖ TEMPO), nats",
                         marker_color=["#1f77b4" if s["top_agree"] else PRUNED for s in steps],
                         hovertext=[f"step {s['step']}: KL {s['kl']:.4f}, top token {'agrees' if s['top_agree'] else 'differs'}, "
                                    f"set overlap {s['set_jaccard']:.2f}, {s['paths']} paths cover {s['coverage']:.0%}"
                                    for s in steps], hoverinfo="text"), secondary_y=False)
    fig.add_trace(go.Scatter(x=x, y=[s["set_jaccard"] for s in steps], name="selected-set overlap (Jaccard)",
                             mode="lines+markers", line=dict(color=PATH)), secondary_y=True)
    ppl = lambda v: "n/a" if v is None or not math.isfinite(v) else f"{v:.2f}"  # noqa: E731 - no text: no perplexity
    # short lines: the title must fit a phone
    fig.update_layout(title=dict(text=(f"Faithfulness — mean KL {f['mean_kl']:.3f}<br><sup>top token agrees "
                                       f"{sum(s['top_agree'] for s in steps)}/{len(steps)}<br>perplexity "
                                       f"{ppl(f['clean_ppl'])} (clean text) vs {ppl(f['greedy_ppl'])} (greedy)</sup>"),
                                 y=0.93, yanchor="top"),
                      template="plotly_white", height=390, uirevision=UIREVISION, margin=dict(l=10, r=10, t=105, b=30),
                      legend=dict(orientation="h", y=-0.25))
    fig.update_xaxes(title="logical step (red bar: the top tokens differ)")
    fig.update_yaxes(title="KL (nats)", secondary_y=False, rangemode="tozero")
    fig.update_yaxes(title="overlap", range=[0, 1.05], dtick=0.25, secondary_y=True, showgrid=False)
    return fig


def threads_figure(trace: Trace) -> go.Figure:
    """Single-threadedness: each step's fitted w against its top sibling's share of the paths, between the two
    readings: w = 1 (the merged step follows its top sibling only) and w = share (a faithful mixture)."""
    f = trace.faithfulness or {}
    steps = [s for s in f.get("steps", []) if s.get("w") is not None]
    fig = go.Figure()
    layout = dict(template="plotly_white", height=360, uirevision=UIREVISION, margin=dict(l=10, r=10, t=80, b=40),
                  legend=dict(orientation="h", y=-0.3), xaxis=dict(title="top sibling's share of the paths",
                                                                  range=[0, 1.02]),
                  yaxis=dict(title="fitted w", range=[-0.02, 1.05]))
    if not steps:
        return fig.update_layout(title="Single-threadedness (tick 'Measure faithfulness' and generate a run that "
                                       "branches)", **layout)
    fig.add_trace(go.Scatter(x=[0, 1], y=[1, 1], mode="lines", name="w = 1: follows its top sibling only",
                             line=dict(color=PRUNED, dash="dash"), hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="w = share: a faithful mixture",
                             line=dict(color=PATH, dash="dot"), hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=[s["top_share"] for s in steps], y=[s["w"] for s in steps], mode="markers+text",
                             text=[str(s["step"]) for s in steps], textposition="top center", name="step",
                             marker=dict(size=9, color="#1f77b4"), hoverinfo="text",
                             hovertext=[f"step {s['step']}: w {s['w']:.3f}, top share {s['top_share']:.3f}"
                                        for s in steps]))
    return fig.update_layout(title=dict(text=(f"Single-threadedness — mean w {f['mean_w']:.2f}<br><sup>vs the top "
                                              f"sibling's mean share {f['mean_top_share']:.2f} over "
                                              f"{len(steps)} steps</sup>"), y=0.93, yanchor="top"), **layout)
