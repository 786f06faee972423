"""The commitment strip: layers x steps under the tree, from a trace's `commitment` record
(tempo_core/analysis/commitment.py).

Top: how much the merged logit lens at each layer already gives the output's top token, the most probable token of
the distribution the next step is selected from (darker = more; not necessarily a token the run kept: the next set
may hold others, pruning may remove it, and after the last step nothing is chosen), with each step's commitment
layer marked (a diamond; grey when the prediction settles only at the output). Bottom, for steps with siblings: the
siblings' Jensen-Shannon divergence by layer and the first layer from which their top-1 predictions differ through
the output (layer 1: they never agree). A plain figure dict, for the page's Plotly widget.
"""

from __future__ import annotations

import html

from tempo_core.trace import Trace

from .style import UIREVISION, empty_figure

SETTLED, LATE, PART = "#e6550d", "#9e9e9e", "#54278f"
BLUES = [[0, "#f7fbff"], [0.5, "#6baed6"], [1, "#08306b"]]  # more probable = darker
ORANGES = [[0, "#fff5eb"], [0.5, "#fd8d3c"], [1, "#7f2704"]]  # siblings further apart = darker
# Where a prediction "commits" is a choice of definition (NDIF Workbench offers these three and says so): the first
# layer from which, through the output, the output's top token is the lens's top-1, is among its top 3, or has p > 0.5.
TOP1, TOP3, OVER_HALF = "top-1 and stays", "in the top 3 and stays", "p > 0.5 and stays"
DEFINITIONS = (TOP1, TOP3, OVER_HALF)
NO_STRIP = ("Commitment strip", 130, "turn on “Commitment strip (logit lens)” under Research options and "
            "generate: where each step's prediction settles, layer by layer")


def commit_layers(record: dict, definition: str = TOP1) -> list[int | None]:
    """Each step's commitment layer under `definition` (1 = the first layer; the number of layers: only at the
    output; None: the output's top token never meets it, e.g. p <= 0.5 even at the output). TOP1 is the engine's
    own `commit_layer`; the others follow from the record's `lens` (top-3 per layer) and `p_final`."""
    if definition not in DEFINITIONS:
        raise ValueError(f"definition: must be one of {', '.join(DEFINITIONS)}, got {definition!r}")
    out: list[int | None] = []
    for x in record["steps"]:
        if definition == TOP1:
            out.append(x["commit_layer"])
            continue
        holds = ([x["token"] in [tok for tok, _ in lens] for lens in x["lens"]] if definition == TOP3
                 else [p > 0.5 for p in x["p_final"]])
        first = len(holds)
        while first > 0 and holds[first - 1]:
            first -= 1
        out.append(first + 1 if first < len(holds) else None)
    return out


def commitment_strip(trace: Trace, step: int | None = None) -> dict:
    """The strip of `trace` (an empty figure with what to do when the run has no commitment record); `step`: the
    clicked node's step, outlined across both rows. Its commitment layers are TOP1's, and its title says so
    (`commit_layers` gives the other definitions')."""
    c = trace.commitment
    if not c or not c["steps"]:
        return empty_figure(*NO_STRIP)
    layers, rows = c["layers"], c["steps"]
    xs, ys = [x["step"] for x in rows], list(range(1, layers + 1))
    esc = lambda s: html.escape(s.replace("\n", "⏎"))  # noqa: E731
    hover = [[f"step {x['step']}: output's top token {esc(x['token'])}<br>layer {layer}: p = "
              f"{x['p_final'][layer - 1]:.3f}<br>lens: "
              + ", ".join(f"{esc(tok)} {p:.2f}" for tok, p in x["lens"][layer - 1]) for x in rows] for layer in ys]
    data: list[dict] = [
        {"type": "heatmap", "x": xs, "y": ys, "z": [[x["p_final"][layer - 1] for x in rows] for layer in ys],
         "zmin": 0, "zmax": 1, "colorscale": BLUES, "hovertext": hover, "hoverinfo": "text", "xaxis": "x",
         "yaxis": "y", "colorbar": {"title": {"text": "p(output top)"}, "len": 0.5, "y": 0.78, "thickness": 10}},
    ]
    at = list(zip(xs, commit_layers(c, TOP1)))
    data += [_marks([(s, layer) for s, layer in at if layer < layers], SETTLED, "commitment layer", "y"),
             _marks([(s, layer) for s, layer in at if layer == layers], LATE, "settles only at the output", "y")]
    mean = sum(layer for _, layer in at) / len(at)
    sets = [x for x in rows if x["js"] is not None]
    if sets:
        data += [{"type": "heatmap", "x": xs, "y": ys, "xaxis": "x", "yaxis": "y2", "colorscale": ORANGES,
                  "zmin": 0, "z": [[x["js"][layer - 1] if x["js"] is not None else None for x in rows] for layer in ys],
                  "hovertemplate": "step %{x}, layer %{y}<br>siblings' JS divergence %{z:.3f} nats<extra></extra>",
                  "colorbar": {"title": {"text": "JS"}, "len": 0.4, "y": 0.2, "thickness": 10}},
                 _marks([(x["step"], x["part_layer"]) for x in sets if x["part_layer"] is not None], PART,
                        "siblings' top-1 differ from here on", "y2")]
    layout = {"template": "plotly_white", "uirevision": UIREVISION, "height": 400 if sets else 270,
              "margin": {"l": 50, "r": 10, "t": 40, "b": 70}, "hovermode": "closest",
              "title": {"text": f"Commitment strip ({TOP1}): predictions settle at layer {mean:.1f} of {layers} on "
                                f"average", "font": {"size": 13}, "x": 0.01, "xanchor": "left"},
              "legend": {"orientation": "h", "y": -0.3 if sets else -0.45, "font": {"size": 10}},
              "xaxis": {"title": {"text": "logical step"}, "anchor": "y2" if sets else "y", "dtick": 5},
              "yaxis": {"title": {"text": "layer"}, "domain": [0.5, 1] if sets else [0, 1]},
              "shapes": []}
    if sets:
        layout["yaxis2"] = {"title": {"text": "siblings"}, "domain": [0, 0.42]}
    if step is not None and 0 <= step < len(rows):
        layout["shapes"].append({"type": "rect", "xref": "x", "yref": "paper", "x0": step - 0.5, "x1": step + 0.5,
                                 "y0": 0, "y1": 1, "line": {"color": "#111111", "width": 2}})
    return {"data": data, "layout": layout}


def _marks(points: list[tuple[int, int]], color: str, name: str, axis: str) -> dict:
    """Diamonds at (step, layer) `points`."""
    return {"type": "scatter", "mode": "markers", "name": name, "x": [s for s, _ in points],
            "y": [layer for _, layer in points], "xaxis": "x", "yaxis": axis, "hoverinfo": "skip",
            "marker": {"symbol": "diamond", "size": 7, "color": color, "line": {"color": "white", "width": 1}}}
