"""The live figures as plain Plotly dicts (no validation: cheap enough to rebuild at every frame), made to stay
readable at 200 steps on 1280x800 and to change little from one frame to the next, so that Gradio's streaming
diff sends only what changed.

tree_view     the token tree: one column per logical step, near misses greyed under each set, stretches of
              single candidates collapsed into one node (click to expand), the view following the newest
              steps with a range slider over the whole run, labels only where they fit
heatmap_view  attention later steps paid the candidates that were ever at risk of pruning, bounded height
curve_view    the pruning threshold schedule, set sizes and pruning counts
text_view     the `[a/b]` text as one HTML piece per step (whitespace and newlines drawn, groups unbroken)
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

from tempo_core.config import build_settings
from tempo_core.schedule import threshold_curve
from tempo_core.trace import Candidate, Step, Trace

PRUNED = "#d62728"
PATH = "#ff7f0e"
MISS = "#b8b8c4"
UIREVISION = "tempo"
WINDOW = 25  # steps in view at once (the newest; the range slider under the tree shows them all)
COLLAPSE_MIN = 3  # this many single-candidate steps in a row become one node
LABEL_PROB = 0.15  # below this (and off the main path) a candidate's label is on hover only
# light (little attention) to dark (much), spelled out: plotly.js's own "Blues" runs the other way, and these
# dicts reach plotly.js unvalidated (Python's go.Figure would have swapped in its own light-to-dark "Blues")
BLUES = [[0.0, "#f7fbff"], [0.25, "#c6dbef"], [0.5, "#6baed6"], [0.75, "#2171b5"], [1.0, "#08306b"]]
# Viridis at 0, 0.1, ..., 1
_VIRIDIS = ["#440154", "#482878", "#3e4989", "#31688e", "#26828e", "#1f9e89", "#35b779", "#6ece58", "#b5de2b",
            "#fde725", "#fde725"]


def prob_colour(p: float) -> str:
    return _VIRIDIS[max(0, min(10, round(p * 10)))]


def show_token(text: str) -> str:
    """Whitespace made visible, so ' the' and 'the' and '\\n' are told apart."""
    return text.replace("\n", "⏎").replace("\t", "→").replace(" ", "·") or "∅"


def fate(c: Candidate, mode: str) -> str:
    if c.pruned_at is not None:
        return "not chosen by search" if mode == "mcts" else f"pruned after step {c.pruned_at}"
    return "kept (set failed; kept unattended)" if c.unattended else "alive"


def main_path(trace: Trace) -> set[str]:
    """Node ids of the most probable surviving candidate of each step."""
    out = set()
    for st in trace.steps:
        alive = [(i, c) for i, c in enumerate(st.candidates) if c.alive]
        if alive:
            out.add(f"{st.step}:{max(alive, key=lambda ic: ic[1].prob)[0]}")
    return out


def seen_by_next_step(st: Step, c: Candidate) -> bool:
    """Whether the next step's candidates could attend to `c` (fed, and not pruned at its own step)."""
    return c.row >= 0 and (c.pruned_at is None or c.pruned_at > st.step)


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


def empty_figure(title: str, height: int, hint: str = "") -> dict:
    """A figure with nothing to draw yet: its title, and under it (short lines, for a phone) what to do."""
    text = f"{title}<br><sup>{hint}</sup>" if hint else title
    return {"data": [], "layout": {"title": {"text": text, "font": {"size": 15}, "x": 0.01, "xanchor": "left"},
                                   "template": "plotly_white",
                                   "uirevision": UIREVISION, "height": height, "xaxis": {"visible": False},
                                   "yaxis": {"visible": False}}}


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
    layout = {"title": {"text": f"Attention paid to the {len(rows)} candidates ever at risk<br>"
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


def _token_html(c: Candidate) -> str:
    """A token for the text view: newlines as ⏎ and whitespace-only tokens as · (never a real line break)."""
    text = c.shown
    if text.strip() == "" or "\n" in text:
        return f'<span class="ws">{html.escape(show_token(text))}</span>'
    return html.escape(text)


def step_html(st: Step, mode: str) -> str:
    spans = []
    for i, c in enumerate(st.candidates):
        cls = "tok pruned" if c.pruned_at is not None else "tok"
        title = html.escape(f"p={c.prob:.3f}; {fate(c, mode)}")
        spans.append(f'<span class="{cls}" style="border-bottom:3px solid {prob_colour(c.prob)}" title="{title}" '
                     f'data-node="{st.step}:{i}">{_token_html(c)}</span>')
    body = spans[0] if len(spans) == 1 else '<span class="set">[' + "/".join(spans) + "]</span>"
    best = max(st.alive, key=lambda c: c.prob, default=None)
    return body + ("<br>" if best is not None and "\n" in best.text and len(st.candidates) == 1 else "")


def text_view(trace: Trace) -> dict:
    """The `[a/b]` text as one HTML piece per step (a frame changes only the pieces that changed)."""
    return {"steps": [step_html(st, trace.mode) for st in trace.steps], "clean": html.escape(trace.clean_text),
            "n": len(trace.steps)}


def status_line(trace: Trace, running: bool, paused: bool = False, progress: str | None = None) -> str:
    """One line under the prompt. Steps are named by their number in the trace (from 0), as in the tree, the
    node details, step mode and replay. `progress`: what a phase after the steps (faithfulness) is doing."""
    n = len(trace.steps)
    if n == 0:
        return "Starting…" if running else f"no steps ({trace.stop_reason})"
    last = trace.steps[-1]
    if running and progress:
        return f"Steps 0–{last.step} done · {progress}…"
    rate = trace.timings.get("steps_per_s", 0.0)
    pruned = trace.stats.get("pruned", 0)
    if paused:
        head = "Paused (press Step or Play to go on)"
    else:
        head = "Generating" if running else f"Done ({trace.stop_reason.replace('_', ' ')})"
    return (f"{head} · at step {last.step} ({n} step{'s' if n != 1 else ''}) · set size {len(last.candidates)} · "
            f"mean set {trace.stats.get('mean_set_size', 0):.2f} · {pruned} pruned · {rate:.1f} steps/s")
