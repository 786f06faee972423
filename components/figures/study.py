"""The study's figure: a forest plot, one panel per unit, every estimate with its 95% interval."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TEMPO_COLOR, SOFT_COLOR, OTHER_COLOR = "#1f77b4", "#d62728", "#7f7f7f"
UPSTREAM_CLAIM = (0.36, 0.61)  # the upstream TEMPO's parallel / ordinary attention (one prompt)


def study_panels(result: dict[str, Any]) -> list[tuple[str, float | None, list[tuple[str, dict[str, Any], str]]]]:
    """The forest plot's panels, one unit each: (title, reference value, [(row label, estimate, colour)])."""
    s = result["summary"]
    a, c = s["attention"]["all"], s["commitment"]
    per = s["by_threshold"]
    both = lambda key: [row for thr, x in per.items() for row in (  # noqa: E731
        (f"TEMPO @{thr}", x["tempo"][key], TEMPO_COLOR), (f"soft @{thr}", x["soft"][key], SOFT_COLOR))]
    return [("a. attention received, parallel / ordinary row (1 = no difference)", 1.0,
             [("TEMPO", a["ratio"], TEMPO_COLOR), ("same steps, greedy", a["control_ratio"], OTHER_COLOR)]),
            ("b. KL to the branches' mixture (nats)", None, both("mean_kl")),
            ("b. w minus the top sibling's share (0 = a faithful mixture)", 0.0, both("w_minus_share")),
            ("c. samples whose first tokens lie on the sets (share)", None, both("coverage")),
            (f"d. commitment layer (of {c['layers']}): set minus single token", 0.0,
             [("paired difference", c["set_minus_single"], TEMPO_COLOR)])]


def study_figure(result: dict[str, Any]) -> dict:
    """A forest plot (a Plotly figure dict) in one panel per unit: every estimate with its 95% interval; the
    reference line of no effect where there is one, and the upstream claim's range on the attention panel."""
    panels = study_panels(result)
    sizes = [len(rows) for _, _, rows in panels]
    gap, total = 0.06, sum(sizes)
    room = 1 - gap * (len(panels) - 1)
    data, layout_axes, shapes, notes = [], {}, [], []
    top = 1.0
    for n, ((title, reference, rows), size) in enumerate(zip(panels, sizes), start=1):
        bottom = max(0.0, top - room * size / total)
        rows = [r for r in rows if r[1]["mean"] is not None][::-1]  # the first row on top
        x, y = f"x{n if n > 1 else ''}", f"y{n if n > 1 else ''}"
        data.append({"type": "scatter", "mode": "markers", "name": title, "xaxis": x, "yaxis": y,
                     "x": [r[1]["mean"] for r in rows], "y": [r[0] for r in rows],
                     "marker": {"color": [r[2] for r in rows], "size": 8}, "showlegend": False,
                     "error_x": {"type": "data", "symmetric": False, "thickness": 1.5,
                                 "array": [r[1]["high"] - r[1]["mean"] if r[1]["high"] is not None else 0 for r in rows],
                                 "arrayminus": [r[1]["mean"] - r[1]["low"] if r[1]["low"] is not None else 0
                                                for r in rows]},
                     "hovertemplate": "%{y}: %{x:.3f}<extra></extra>"})
        layout_axes[f"xaxis{n if n > 1 else ''}"] = {"anchor": y, "zeroline": False}
        layout_axes[f"yaxis{n if n > 1 else ''}"] = {"domain": [bottom, top], "anchor": x, "automargin": True,
                                                     "tickfont": {"size": 10}}
        if reference is not None:
            shapes.append({"type": "line", "xref": x, "yref": f"{y} domain", "x0": reference, "x1": reference,
                           "y0": 0, "y1": 1, "line": {"color": "#555", "dash": "dot", "width": 1}})
        if n == 1:
            shapes.append({"type": "rect", "xref": x, "yref": f"{y} domain", "x0": UPSTREAM_CLAIM[0],
                           "x1": UPSTREAM_CLAIM[1], "y0": 0, "y1": 1, "fillcolor": "#fdd49e", "opacity": 0.5,
                           "line": {"width": 0}, "layer": "below"})
            notes.append({"text": "upstream claim", "xref": x, "yref": f"{y} domain", "x": sum(UPSTREAM_CLAIM) / 2,
                          "y": 0.5, "yanchor": "middle", "showarrow": False, "font": {"size": 9, "color": "#a63603"}})
        notes.append({"text": title, "xref": "paper", "yref": "paper", "x": 0, "y": top, "xanchor": "left",
                      "yanchor": "bottom", "showarrow": False, "font": {"size": 11}})
        top = bottom - gap
    s = result["summary"]
    return {"data": data, "layout": {
        "title": {"text": f"Study: {s['prompts']} prompts, mean and 95% bootstrap interval over prompts",
                  "font": {"size": 13}, "x": 0.01, "xanchor": "left"},
        "template": "plotly_white", "height": 160 + 24 * total + 40 * len(panels),
        "margin": {"l": 110, "r": 10, "t": 60, "b": 30}, "shapes": shapes, "annotations": notes, **layout_axes}}


def write_study_html(result: dict[str, Any], path: Path) -> None:
    """The figure as a self-contained page (what `python cli.py study` writes beside the numbers)."""
    import plotly.io as pio

    pio.write_html(study_figure(result), path, include_plotlyjs=True, full_html=True)
