"""The pruning heatmap: the attention later steps paid the candidates that were ever at risk of pruning, in a
bounded height."""

from __future__ import annotations

import html

from tempo_core.trace import Candidate, Trace

from .style import BLUES, PRUNED, UIREVISION, empty_figure, show_token


def at_risk(trace: Trace) -> list[tuple[int, int, Candidate]]:
    """Candidates that were ever at risk of pruning: pruned, or scored below twice the threshold in force. A step's
    only candidate is never at risk while `preserve_isolated_tokens` keeps such steps out of pruning."""
    thr = {st.step: st.pruning_threshold or 0.0 for st in trace.steps}
    isolated_safe = trace.settings.get("preserve_isolated_tokens", True)
    out = []
    for st in trace.steps:
        if isolated_safe and len(st.candidates) == 1:
            continue
        for i, c in enumerate(st.candidates):
            if c.pruned_at is not None and trace.mode != "mcts":
                out.append((st.step, i, c))
            elif c.attention is not None and c.attention_by_step and c.attention < 2 * max(
                    thr.get(s, 0.0) for s in c.attention_by_step):  # its score came within 2x the threshold
                out.append((st.step, i, c))
    return out


def heatmap_view(trace: Trace) -> dict:
    """Attention each later step paid the candidates that were ever at risk of pruning: one row per candidate,
    one column per step after it (1 .. pruning window), so the grid stays as narrow as the window at any run
    length and its height grows by one short row per candidate (the page scrolls it)."""
    if trace.mode != "tempo" or not trace.settings.get("use_retroactive_pruning"):
        return empty_figure("Pruning heatmap", 300, "retroactive pruning is off: tick 'Prune by later "
                                                    "attention'<br>(Retroactive pruning) and generate")
    rows = at_risk(trace)
    if not rows:
        return empty_figure("Pruning heatmap", 300, "no candidate has come near the pruning threshold yet<br>"
                                                    "(raise the attention threshold to prune more)")
    thr = {st.step: st.pruning_threshold or 0.0 for st in trace.steps}
    window = max((s - st for st, _, c in rows for s in c.attention_by_step), default=1)
    cols = list(range(1, window + 1))
    labels = [f"s{st} {show_token(c.shown)[:10]}{' ✗' if c.pruned_at is not None else ''} ({st}:{i})"
              for st, i, c in rows]
    z, hover, below_x, below_y = [], [], [], []
    for (st, i, c), label in zip(rows, labels):
        z.append([c.attention_by_step.get(st + d) for d in cols])
        hover.append([])
        for d in cols:
            v = c.attention_by_step.get(st + d)
            if v is None:
                hover[-1].append("")
                continue
            t = thr.get(st + d, 0.0)
            hover[-1].append(f"{html.escape(show_token(c.shown))} (step {st}) ← step {st + d}: {v:.4f}<br>threshold "
                             f"then {t:.4f}" + (" — below" if v < t else ""))
            if v < t:
                below_x.append(d)
                below_y.append(label)
    crosses = [(c.pruned_at - st, label, f"{st}:{i}") for (st, i, c), label in zip(rows, labels)
               if c.pruned_at is not None]
    data = [{"type": "heatmap", "x": cols, "y": labels, "z": z, "colorscale": BLUES, "zmin": 0,
             "hovertext": hover, "hoverinfo": "text", "xgap": 2, "ygap": 2, "name": "attention paid",
             "customdata": [[f"{st}:{i}"] * len(cols) for st, i, _ in rows],
             "colorbar": {"title": {"text": "attention"}, "thickness": 10, "len": min(1.0, 300 / (80 + 20 * len(rows)))}},
            {"type": "scatter", "x": below_x, "y": below_y, "mode": "markers", "hoverinfo": "skip",
             "marker": {"symbol": "square-open", "size": 16, "color": PRUNED, "line": {"width": 2}},
             "name": "below the threshold then"},
            {"type": "scatter", "x": [x for x, _, _ in crosses], "y": [lab for _, lab, _ in crosses],
             "mode": "markers", "marker": {"symbol": "x", "size": 11, "color": PRUNED},
             "name": "pruned here (click: its rewind)", "customdata": [n for _, _, n in crosses], "hoverinfo": "skip"}]
    lo, hi = min(thr.values(), default=0.0), max(thr.values(), default=0.0)
    shown = f"{lo:.3f}" if abs(hi - lo) < 1e-9 else f"{lo:.3f}–{hi:.3f} (see Threshold curve)"
    plot = 20 * len(rows)  # px of rows; the title, the legend and the column labels sit above them
    height = plot + 150
    layout = {"meta": "tempo-heatmap",  # the page names it as a click's source (a pruned cross opens its rewind)
              "title": {"text": f"Attention paid to the {len(rows)} candidates ever at risk<br>"
                                f"<sup>pruning threshold {shown}</sup>",
                        "font": {"size": 14}, "x": 0.01, "xanchor": "left", "y": 1 - 12 / height, "yanchor": "top"},
              "template": "plotly_white", "uirevision": UIREVISION, "height": height,
              "margin": {"l": 10, "r": 10, "t": 120, "b": 30},
              "legend": {"orientation": "h", "yanchor": "bottom", "y": 1 + 42 / plot, "x": 0, "xanchor": "left",
                         "font": {"size": 11}},
              "xaxis": {"tickvals": cols, "ticktext": [f"{d} step{'s' if d > 1 else ''} later" for d in cols],
                        "side": "top", "fixedrange": True},
              # an explicit range: autorange pads for the markers (hundreds of px on a tall grid)
              "yaxis": {"range": [len(rows) - 0.5, -0.5], "automargin": True, "type": "category",
                        "categoryorder": "array", "categoryarray": labels, "fixedrange": True}}
    return {"data": data, "layout": layout}
