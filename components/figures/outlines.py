"""Outlines drawn on a figure around the part a lesson talks about: a step's column, a row, a box."""

from __future__ import annotations


HIGHLIGHT = "#f5a623"


def _outline(fig: dict, shape: dict, note: dict, label: str) -> dict:
    """Add one highlight rectangle and its label to a figure dict (the shape and note give where)."""
    layout = fig["layout"]
    layout["shapes"] = [*layout.get("shapes", []),
                        {"type": "rect", "line": {"color": HIGHLIGHT, "width": 3}, **shape}]
    layout["annotations"] = [*layout.get("annotations", []),
                             {"text": f"<b>{label}</b>", "showarrow": False, "font": {"color": "#b36b00", "size": 12},
                              **note}]
    return fig


def outline_step(fig: dict, step: int, label: str) -> dict:
    """Outline one column (a logical step) of a figure whose x axis is the step."""
    _outline(fig, {"xref": "x", "yref": "paper", "x0": step - 0.45, "x1": step + 0.45, "y0": 0, "y1": 1,
                   "fillcolor": "rgba(245,166,35,0.12)", "layer": "below"},
             {"x": step, "y": 1.0, "xref": "x", "yref": "paper", "yanchor": "bottom",
              "bgcolor": "rgba(255,255,255,0.8)"}, label)
    xaxis = fig["layout"].setdefault("xaxis", {})
    if "range" in xaxis:  # keep the outlined step in view
        lo, hi = xaxis["range"]
        if not lo <= step <= hi:
            xaxis["range"] = [max(-0.6, step - 6), step + 6]
    return fig


def outline_row(fig: dict, row: int, label: str) -> dict:
    """Outline one row of a heatmap (rows are categories, numbered from 0)."""
    return _outline(fig, {"xref": "paper", "yref": "y", "x0": 0, "x1": 1, "y0": row - 0.5, "y1": row + 0.5,
                          "fillcolor": "rgba(0,0,0,0)"},
                    {"x": 1, "y": row, "xref": "paper", "yref": "y", "xanchor": "right",
                     "bgcolor": "rgba(255,255,255,0.85)"}, label)


def outline_box(fig: dict, xref: str, yref: str, x: tuple[float, float], y: tuple[float, float], label: str,
                label_left: bool = False) -> dict:
    """Outline a box in data coordinates of the axes `xref` / `yref`, its label above one of its corners."""
    return _outline(fig, {"xref": xref, "yref": yref, "x0": x[0], "x1": x[1], "y0": y[0], "y1": y[1],
                          "fillcolor": "rgba(245,166,35,0.15)"},
                    {"x": x[0] if label_left else x[1], "y": y[1], "xref": xref, "yref": yref,
                     "xanchor": "right" if label_left else "left", "yanchor": "bottom",
                     "bgcolor": "rgba(255,255,255,0.85)"}, label)


def one_panel(fig: dict, axis: str) -> dict:
    """Of the positions & mask figure's two panels, keep the one on x axis `axis` ("x": positions, "x2": the
    mask), full width: side by side they do not fit a phone. The panels' own titles go (the lesson titles the
    figure)."""
    fig["data"] = [tr for tr in fig["data"] if tr.get("xaxis", "x") == axis]
    fig["layout"][f"xaxis{axis[1:]}"]["domain"] = [0.0, 1.0]
    other = "x2" if axis == "x" else "x"
    fig["layout"][f"xaxis{other[1:]}"]["visible"] = False
    fig["layout"][f"yaxis{other[1:]}"]["visible"] = False
    fig["layout"]["annotations"] = [a for a in fig["layout"].get("annotations", []) if a.get("xref") != "paper"]
    return fig
