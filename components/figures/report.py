"""Figures of a recorded trace as Plotly `Figure`s and HTML, for reports, the CLI and the research views.

The figures themselves are built as plain dicts (tree.py, heatmap.py, curve.py: what the live page streams); here
they become validated `go.Figure`s. `tree_graph` is the tree as a networkx graph (nodes = candidates, edges =
visibility).
"""

from __future__ import annotations

import html
from pathlib import Path

import networkx as nx
import plotly.graph_objects as go

from tempo_core.analysis.report import faithfulness_line
from tempo_core.text import clean_token_ids
from tempo_core.trace import Trace

from .curve import curve_view
from .commitment_strip import commitment_strip
from .faithfulness import faithfulness_figure, threads_figure
from .heatmap import heatmap_view
from .style import main_path, seen_by_next_step
from .text import text_view
from .tree import tree_view


def node_id(step: int, idx: int) -> str:
    return f"{step}:{idx}"


def tree_graph(trace: Trace) -> nx.DiGraph:
    """Nodes = candidates; an edge joins every candidate to each candidate of the next step that could see it.
    (For the tree as it stood at an earlier step, pass `tempo_core.trace.rewind(trace, step)`.)"""
    steps = trace.steps
    g = nx.DiGraph()
    path = main_path(trace)
    for st in steps:
        for i, c in enumerate(st.candidates):  # most probable first: they end up on top of the layer
            g.add_node(node_id(st.step, i), step=st.step, idx=i, cand=c, on_path=node_id(st.step, i) in path)
    for prev, nxt in zip(steps, steps[1:]):
        for i, c in enumerate(prev.candidates):
            if not seen_by_next_step(prev, c):
                continue
            for j, _ in enumerate(nxt.candidates):
                g.add_edge(node_id(prev.step, i), node_id(nxt.step, j))
    return g


def tree_figure(trace: Trace, selected: str | None = None, expanded: frozenset[int] = frozenset()) -> go.Figure:
    return go.Figure(tree_view(trace, selected, expanded))


def attention_figure(trace: Trace) -> go.Figure:
    return go.Figure(heatmap_view(trace))


def threshold_figure(trace_or_settings, current_step: int | None = None) -> go.Figure:
    return go.Figure(curve_view(trace_or_settings, current_step))


def text_html(trace: Trace) -> str:
    """The run as HTML: sets in brackets, underline colour by probability, pruned alternatives struck through."""
    v = text_view(trace)
    body = "".join(v["steps"]) or "<em>no tokens yet</em>"
    return (f'<div class="tempo-text"><div class="branching">{body}</div>'
            f'<div class="clean"><b>Most probable surviving path:</b> {v["clean"]}</div></div>')


def faithfulness_html(trace: Trace) -> str:
    """The measured faithfulness in one paragraph (empty when it was not measured)."""
    if not trace.faithfulness:
        return ""
    return f"<h2>Faithfulness</h2><p>{html.escape(faithfulness_line(trace.faithfulness))}</p>"


def report_html(trace: Trace) -> str:
    """One self-contained HTML file: settings, text and the figures the page shows of the run (plotly.js inlined
    once): the tree with its commitment strip when measured, the heatmap and the curve, then, when measured, the
    faithfulness section (its numbers, its figure and single-threadedness w)."""
    figs = [tree_figure(trace)]
    if trace.commitment:
        figs.append(go.Figure(commitment_strip(trace)))
    figs += [attention_figure(trace), threshold_figure(trace)]
    divs = [f.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, f in enumerate(figs)]
    if trace.faithfulness:  # measured: its numbers above its figures, after the run's own
        divs.append(faithfulness_html(trace))
        divs += [f.to_html(full_html=False, include_plotlyjs=False)
                 for f in (faithfulness_figure(trace), threads_figure(trace))]
    esc = lambda v: html.escape(str(v), quote=True)  # noqa: E731 - every trace string is escaped
    rows = "".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in trace.settings.items() if k != "prompt")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>TEMPO report</title>"
            f"<style>body{{font-family:sans-serif;max-width:1100px;margin:auto}} .pruned{{text-decoration:line-through;"
            f"opacity:.6}} .set{{background:#f3f0ff}} td{{padding:0 8px}}</style></head><body>"
            f"<h1>TEMPO run</h1><p><b>Model</b> {esc(trace.model)} · <b>mode</b> {esc(trace.mode)} · "
            f"<b>stop</b> {esc(trace.stop_reason)}</p><p><b>Prompt</b> {esc(trace.prompt)}</p>"
            f"{text_html(trace)}{''.join(divs)}<h2>Settings</h2><table>{rows}</table>"
            f"</body></html>")


def save_figures(trace: Trace, out: Path) -> list[str]:
    """Write the figures as HTML next to the trace; returns the file names written."""
    out = Path(out)
    figs = {"tree.html": tree_figure(trace), "attention.html": attention_figure(trace),
            "threshold.html": threshold_figure(trace)}
    for name, fig in figs.items():
        fig.write_html(out / name, include_plotlyjs="directory")
    (out / "report.html").write_text(report_html(trace))
    return [*figs, "plotly.min.js", "report.html"]


__all__ = ["tree_figure", "attention_figure", "threshold_figure", "text_html", "report_html", "save_figures",
           "tree_graph", "clean_token_ids"]
