"""The threshold curve: the pruning threshold's schedule over the run (a constant, a Bezier or a ReLU curve), with
each step's set size and the candidates pruned at it."""

from __future__ import annotations

from tempo_core.config import build_settings
from tempo_core.schedule import threshold_curve
from tempo_core.trace import Trace

from .style import PATH, UIREVISION


def curve_view(trace_or_settings, current_step: int | None = None) -> dict:
    """The pruning threshold schedule; with a trace, set sizes and pruning counts per step as bars."""
    trace = trace_or_settings if isinstance(trace_or_settings, Trace) else None
    s = build_settings(trace.settings if trace else trace_or_settings.to_dict())
    curve = threshold_curve(s)
    data = []
    if trace and trace.steps:
        sizes = [len(st.candidates) for st in trace.steps]
        pruned_at = [0] * len(sizes)
        for st in trace.steps:
            for c in st.candidates:
                if c.pruned_at is not None and c.pruned_at < len(sizes) and trace.mode == "tempo":
                    pruned_at[c.pruned_at] += 1
        x = list(range(len(sizes)))
        data += [{"type": "bar", "x": x, "y": sizes, "name": "set size", "marker": {"color": "rgba(68,1,84,0.35)"},
                  "yaxis": "y2"},
                 {"type": "bar", "x": x, "y": pruned_at, "name": "pruned at step",
                  "marker": {"color": "rgba(214,39,40,0.6)"}, "yaxis": "y2"}]
    data.append({"type": "scatter", "x": list(range(len(curve))), "y": curve, "mode": "lines",
                 "name": "pruning threshold", "line": {"color": "#1f77b4", "width": 3}})
    if current_step is not None and 0 <= current_step < len(curve):
        data.append({"type": "scatter", "x": [current_step], "y": [curve[current_step]], "mode": "markers",
                     "name": "current step", "marker": {"size": 12, "color": PATH}})
    kind = ("ReLU" if s.use_relu else "Bezier") if s.dynamic_threshold else "constant"
    note = "" if s.use_retroactive_pruning and s.mode == "tempo" else (
        " — no effect: retroactive pruning is off" if s.mode == "tempo" else f" — no effect in {s.mode} mode")
    most = max((max(bar["y"], default=0) for bar in data if bar["type"] == "bar"), default=1)
    layout = {"title": {"text": f"Pruning threshold schedule ({kind}){note}", "font": {"size": 15}},
              "template": "plotly_white", "barmode": "overlay", "uirevision": UIREVISION, "height": 320,
              "margin": {"l": 10, "r": 10, "t": 40, "b": 30}, "legend": {"orientation": "h", "y": -0.25},
              "xaxis": {"title": {"text": "logical step"}, "automargin": True},
              "yaxis": {"title": {"text": "attention threshold"}, "rangemode": "tozero", "automargin": True},
              # token counts are whole numbers: ticks 0, 1, 2, ... (every few when sets are large)
              "yaxis2": {"title": {"text": "tokens"}, "overlaying": "y", "side": "right", "rangemode": "tozero",
                         "showgrid": False, "automargin": True, "tick0": 0, "dtick": max(1, -(-most // 5)),
                         "tickformat": "d"}}
    return {"data": data, "layout": layout}
