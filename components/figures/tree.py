"""The token tree as a plain Plotly dict (no validation: cheap enough to rebuild at every frame), readable at 200
steps on 1280x800 and changing little from one frame to the next, so that Gradio's streaming diff sends only what
changed: one column per logical step, near misses greyed under each set, stretches of single candidates collapsed
into one node (click to expand), the view following the newest steps with a range slider over the whole run,
labels only where they fit."""

from __future__ import annotations

import html
from dataclasses import dataclass, field

from tempo_core.trace import Candidate, Step, Trace

from .style import (MISS, PATH, PRUNED, UIREVISION, empty_figure, fate, main_path, prob_colour, seen_by_next_step,
                    show_token)

WINDOW = 25  # steps in view at once (the newest; the range slider under the tree shows them all)
COLLAPSE_MIN = 3  # this many single-candidate steps in a row become one node
LABEL_PROB = 0.15  # below this (and off the main path) a candidate's label is on hover only


@dataclass(frozen=True)
class Unit:
    """A column of the tree: one step, or a stretch of single-candidate steps `first..last` drawn as one node."""
    first: int
    last: int

    @property
    def collapsed(self) -> bool:
        return self.last > self.first

    @property
    def id(self) -> str:
        return f"run:{self.first}-{self.last}"


def units(trace: Trace, expanded: frozenset[int] = frozenset()) -> list[Unit]:
    """Steps grouped into columns. A stretch of >= COLLAPSE_MIN alive single-candidate steps is one unit unless
    its first step is in `expanded`."""
    out: list[Unit] = []
    steps = trace.steps
    i = 0
    while i < len(steps):
        j = i
        while j < len(steps) and len(steps[j].candidates) == 1 and steps[j].candidates[0].alive:
            j += 1
        if j - i >= COLLAPSE_MIN and i not in expanded:
            out.append(Unit(i, j - 1))
            i = j
        else:
            out.append(Unit(i, i))
            i += 1
    return out


def _hover(st: Step, c: Candidate, mode: str) -> str:
    att = "—" if c.attention is None else f"{c.attention:.4f}"
    thr = "—" if st.pruning_threshold is None else f"{st.pruning_threshold:.4f}"
    extra = f"<br>MCTS visits {c.visits}, value {c.value:.3f}" if c.visits is not None else ""
    piece = "<br>(a piece of a multi-byte character)" if c.display is not None else ""
    return (f"<b>{html.escape(show_token(c.shown))}</b> (id {c.token_id}){piece}<br>p = {c.prob:.4f}<br>step {st.step}, "
            f"position {st.position}<br>selection threshold {st.selection_threshold:.3f}, pruning threshold {thr}"
            f"<br>attention received {att}<br>{fate(c, mode)}{extra}")


@dataclass
class _Nodes:
    x: list = field(default_factory=list)
    y: list = field(default_factory=list)
    text: list = field(default_factory=list)
    hover: list = field(default_factory=list)
    ids: list = field(default_factory=list)
    colour: list = field(default_factory=list)
    size: list = field(default_factory=list)
    symbol: list = field(default_factory=list)
    ring: list = field(default_factory=list)
    pos: list = field(default_factory=list)

    def add(self, x, y, text, hover, node_id, colour, size, symbol="circle", ring=0.5, pos="top center"):
        for name, v in zip(("x", "y", "text", "hover", "ids", "colour", "size", "symbol", "ring", "pos"),
                           (x, y, text, hover, node_id, colour, size, symbol, ring, pos)):
            getattr(self, name).append(v)


def tree_view(trace: Trace, selected: str | None = None, expanded: frozenset[int] = frozenset(),
              live: bool = False, height: int = 470, labelled: frozenset[int] = frozenset()) -> dict:
    """The token tree as a Plotly figure dict, showing the newest WINDOW steps (a range slider for the rest).
    `expanded`: first steps of collapsed stretches the user opened; `live`: leave room for the next steps;
    `labelled`: steps whose every candidate is labelled (a lesson's outlined set), however improbable."""
    if not trace.steps:
        return empty_figure("Token tree", height, "press Generate (or load a trace) to grow it")
    nodes, misses, runs, edges = _tree_parts(trace, units(trace, expanded), labelled)
    data = [
        {"type": "scatter", "x": edges[False][0], "y": edges[False][1], "mode": "lines", "hoverinfo": "skip",
         "line": {"color": "rgba(120,120,140,0.35)", "width": 1}, "name": "seen by next step"},
        {"type": "scatter", "x": edges[True][0], "y": edges[True][1], "mode": "lines", "hoverinfo": "skip",
         "line": {"color": PATH, "width": 3}, "name": "main path"},
        _scatter(nodes, "candidate"), _scatter(misses, "near miss"), _scatter(runs, "one-candidate steps"),
        _labels(nodes, "candidate", 11, "#222"), _labels(misses, "near miss", 9, "#999"),
        _labels(runs, "one-candidate steps", 11, "#222"),
    ]
    if selected and selected in nodes.ids:
        i = nodes.ids.index(selected)
        data.append({"type": "scatter", "x": [nodes.x[i]], "y": [nodes.y[i]], "mode": "markers", "hoverinfo": "skip",
                     "marker": {"size": 34, "color": "rgba(0,0,0,0)", "line": {"width": 3, "color": "#1f77b4"}},
                     "name": "selected"})
    return {"data": data, "layout": _tree_layout(trace, height, live)}


def _tree_parts(trace: Trace, cols: list, labelled: frozenset[int]) -> tuple[_Nodes, _Nodes, _Nodes, dict]:
    """The tree's candidates, near misses, collapsed stretches and edges ({on the main path: (xs, ys)}), one
    column per unit."""
    path = main_path(trace)
    nodes, misses, runs = _Nodes(), _Nodes(), _Nodes()
    edges = {False: ([], []), True: ([], [])}
    ins: list[list[tuple[float, float, str]]] = []  # per column: where edges from the previous column arrive
    outs: list[list[tuple[float, float, str]]] = []  # per column: where edges to the next column leave
    for u in cols:
        if u.collapsed:
            steps = trace.steps[u.first:u.last + 1]
            words = "".join(st.candidates[0].shown for st in steps)
            label = show_token(words)
            label = label if len(label) <= 18 else label[:17] + "…"
            runs.add((u.first + u.last) / 2, 0, label, f"<b>{html.escape(show_token(words))}</b><br>steps "
                     f"{u.first}–{u.last}: one candidate each (click to expand)", u.id, PATH, 14, "line-ew-open")
            ins.append([(u.first, 0, f"{u.first}:0")])
            outs.append([(u.last, 0, f"{u.last}:0")])
            _line(edges[True], (u.first, 0), (u.last, 0))  # the stretch is a thick segment of the main path
            continue
        st = trace.steps[u.first]
        here, leaving = [], []
        for i, c in enumerate(st.candidates):
            nid = f"{st.step}:{i}"
            on_path = nid in path
            label = show_token(c.shown)[:8] if on_path or c.prob >= LABEL_PROB or st.step in labelled else ""
            nodes.add(st.step, -i, label, _hover(st, c, trace.mode), nid,
                      PRUNED if not c.alive else prob_colour(c.prob), 8 + 20 * c.prob ** 0.5,
                      "x" if not c.alive else "circle", 3 if on_path else 0.5,
                      "top center" if st.step % 2 == 0 else "bottom center")
            here.append((st.step, -i, nid))
            if seen_by_next_step(st, c):
                leaving.append((st.step, -i, nid))
        k = len(st.candidates)
        for j, alt in enumerate(st.alternatives[:3] if trace.mode == "tempo" else []):
            # room for one near-miss label per pair of columns
            label = show_token(alt["text"])[:6] if j == 0 and st.step % 2 == 0 else ""
            misses.add(st.step, -(k + j), label,
                       f"not kept: <b>{html.escape(show_token(alt['text']))}</b> p = {alt['prob']:.4f} "
                       f"(below the selection threshold {st.selection_threshold:.3f} or past the set cap)",
                       f"miss:{st.step}:{j}", MISS, 7, "circle-open", 1, "bottom center")
        ins.append(here)
        outs.append(leaving)
    for leaving, arriving in zip(outs, ins[1:]):
        for a in leaving:
            for b in arriving:
                _line(edges[a[2] in path and b[2] in path], a[:2], b[:2])
    return nodes, misses, runs, edges


def _tree_layout(trace: Trace, height: int, live: bool) -> dict:
    """The newest WINDOW steps in view (a range slider for the rest); `live`: room for the next steps."""
    last = trace.steps[-1].step
    deepest = max(len(st.candidates) + (min(3, len(st.alternatives)) if trace.mode == "tempo" else 0)
                  for st in trace.steps)
    xaxis = {"title": {"text": "logical step (shared position)"}, "zeroline": False,
             "range": [max(-0.6, last - WINDOW + 0.5), max(8, last + 1.5) if live else last + 0.6]}
    if last >= WINDOW:
        xaxis["rangeslider"] = {"visible": True, "thickness": 0.07}
    n = sum(len(st.candidates) for st in trace.steps)
    layout = {"meta": "tempo-tree",  # the page narrows a tree's window on a phone (widgets.PHONE_STEPS)
              "title": {"text": f"Token tree — {trace.mode}, {last + 1} steps, {n} candidates", "font": {"size": 14},
                        "x": 0.01, "xanchor": "left", "y": 0.98},
              "template": "plotly_white", "uirevision": UIREVISION, "hovermode": "closest", "height": height,
              "margin": {"l": 10, "r": 10, "t": 70, "b": 30}, "showlegend": True, "xaxis": xaxis,
              "legend": {"orientation": "h", "yanchor": "bottom", "y": 1.01, "x": 1, "xanchor": "right",
                         "font": {"size": 11}},
              "xaxis2": {"matches": "x", "overlaying": "x", "visible": False},  # the labels' axis (_labels)
              "yaxis": {"visible": False, "range": [-(deepest - 0.4), 0.9], "fixedrange": True}}
    return layout


def _line(xy: tuple[list, list], a: tuple[float, float], b: tuple[float, float]) -> None:
    xy[0].extend((a[0], b[0], None))
    xy[1].extend((a[1], b[1], None))


def _scatter(n: _Nodes, name: str) -> dict:
    return {"type": "scatter", "x": n.x, "y": n.y, "mode": "markers", "customdata": n.ids, "hovertext": n.hover,
            "hoverinfo": "text", "name": name, "cliponaxis": False,
            "marker": {"size": n.size, "color": n.colour, "symbol": n.symbol,
                       "line": {"width": n.ring, "color": [PATH if w == 3 else "#333" for w in n.ring]}}}


def _labels(n: _Nodes, name: str, font: int, colour: str) -> dict:
    """The nodes' labels as a trace of their own on `x2`, an invisible axis that follows x's range: the range
    slider under the tree draws only x's traces, so its overview is not a band of repeated labels."""
    keep = [i for i, t in enumerate(n.text) if t]
    return {"type": "scatter", "xaxis": "x2", "x": [n.x[i] for i in keep], "y": [n.y[i] for i in keep],
            "mode": "text", "text": [n.text[i] for i in keep], "customdata": [n.ids[i] for i in keep],
            "textposition": [n.pos[i] for i in keep], "textfont": {"size": font, "color": colour},
            "hoverinfo": "skip", "name": f"{name} labels", "showlegend": False, "cliponaxis": False}
