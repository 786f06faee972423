"""A pruned candidate's rewind: who paid it how much attention, against the pruning threshold at the time."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from tempo_core.trace import Trace

from .style import PRUNED, show_token


def rewind_figure(trace: Trace, node: str) -> go.Figure:
    """Why a candidate was pruned: attention from each later step (and, with multi-scale weighting, from each
    layer) against the threshold then in force."""
    try:
        s, i = (int(x) for x in node.split(":"))
        c = trace.steps[s].candidates[i]
    except (ValueError, IndexError, AttributeError):
        return go.Figure().update_layout(title="Pruning rewind: select a pruned candidate", template="plotly_white")
    later = sorted(c.attention_by_step)
    thr = {st.step: st.pruning_threshold for st in trace.steps}
    layered = bool(c.attention_by_layer)
    fig = make_subplots(rows=1, cols=2 if layered else 1, column_widths=[0.55, 0.45] if layered else None,
                        subplot_titles=("per later step", "per layer (multi-scale)") if layered else None)
    for j, sib in enumerate(trace.steps[s].candidates):
        xs = sorted(sib.attention_by_step)
        fig.add_trace(go.Scatter(x=xs, y=[sib.attention_by_step[k] for k in xs], mode="lines+markers",
                                 name=f"{show_token(sib.shown)}" + (" (this)" if j == i else ""),
                                 line=dict(width=4 if j == i else 1.5, dash="solid" if sib.alive else "dot")),
                      row=1, col=1)
    # the threshold as a short level at each later step, so that a decision resting on one step reads clearly
    tx, ty = [], []
    for k in later:
        tx += [k - 0.35, k + 0.35, None]
        ty += [thr.get(k), thr.get(k), None]
    fig.add_trace(go.Scatter(x=tx, y=ty, mode="lines", name="threshold in force", line=dict(color=PRUNED, width=3)),
                  row=1, col=1)
    if c.pruned_at is not None:
        fig.add_vline(x=c.pruned_at, line=dict(color=PRUNED, dash="dot"),
                      annotation_text=f"pruned after step {c.pruned_at}", row=1, col=1)
    if later:
        fig.update_xaxes(range=[min(later) - 1, max(max(later) + 1, min(later) + 2)], dtick=1, row=1, col=1)
    fig.update_traces(marker=dict(size=10), selector=dict(mode="lines+markers"))
    if layered:
        steps_ = sorted(c.attention_by_layer)
        layers = sorted({layer for per in c.attention_by_layer.values() for layer in per})
        fig.add_trace(go.Heatmap(x=steps_, y=[f"layer {layer}" for layer in layers], colorscale="Blues",
                                 z=[[c.attention_by_layer[k].get(layer) for k in steps_] for layer in layers],
                                 colorbar=dict(title="attention", thickness=10), name="per layer"), row=1, col=2)
    fate = f"pruned after step {c.pruned_at}" if c.pruned_at is not None else "kept"
    fig.update_layout(title=f"Pruning rewind — {show_token(c.shown)!s} at step {s} ({fate}); mean attention "
                            f"{(c.attention or 0):.4f}", template="plotly_white", height=360 if not layered else 420,
                      margin=dict(l=10, r=10, t=60, b=30))
    fig.update_xaxes(title="later logical step")
    fig.update_yaxes(title="attention paid (mean over heads and rows)", rangemode="tozero", row=1, col=1)
    return fig
