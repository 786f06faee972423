"""Plotly figures built from a recorded trace (never from live model state).

tree_figure       the parallel-token tree, one layer per logical step (networkx multipartite layout)
attention_figure  attention later steps paid each candidate of each parallel set, with the threshold in force
threshold_figure  the pruning-threshold schedule with set sizes and pruning counts overlaid
text_html         the `[a/b]` text, candidates coloured by probability, pruned ones struck through
"""

from __future__ import annotations

import html
from pathlib import Path

import networkx as nx
import plotly.graph_objects as go
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots

from tempo_core.config import build_settings
from tempo_core.schedule import threshold_curve
from tempo_core.trace import Candidate, Trace, clean_token_ids

COLORSCALE = "Viridis"
PRUNED = "#d62728"
PATH = "#ff7f0e"
UIREVISION = "tempo"  # constant: zoom and pan survive live updates (Plotly.react)


def node_id(step: int, idx: int) -> str:
    return f"{step}:{idx}"


def show_token(text: str) -> str:
    """Whitespace made visible, so ' the' and 'the' and '\\n' are told apart."""
    return text.replace("\n", "⏎").replace(" ", "·") or "∅"


def _fate(c: Candidate, mode: str) -> str:
    if c.pruned_at is not None:
        return "not chosen by search" if mode == "mcts" else f"pruned after step {c.pruned_at}"
    return "kept (set failed; kept unattended)" if c.unattended else "alive"


def tree_graph(trace: Trace) -> nx.DiGraph:
    """Nodes = candidates; an edge joins every candidate to each candidate of the next step that could see it.
    (For the tree as it stood at an earlier step, pass `components.inspect.trace_at(trace, step)`.)"""
    steps = trace.steps
    g = nx.DiGraph()
    clean = set()
    for st in steps:
        alive = st.alive
        if alive:
            clean.add(node_id(st.step, st.candidates.index(max(alive, key=lambda c: c.prob))))
    for st in steps:
        for i, c in enumerate(st.candidates):  # most probable first: they end up on top of the layer
            g.add_node(node_id(st.step, i), step=st.step, idx=i, cand=c, on_path=node_id(st.step, i) in clean)
    for prev, nxt in zip(steps, steps[1:]):
        for i, c in enumerate(prev.candidates):
            visible = c.row >= 0 and (c.pruned_at is None or c.pruned_at > prev.step)
            if not visible:
                continue
            for j, _ in enumerate(nxt.candidates):
                g.add_edge(node_id(prev.step, i), node_id(nxt.step, j))
    return g


def tree_figure(trace: Trace, selected: str | None = None) -> go.Figure:
    g = tree_graph(trace)
    fig = go.Figure()
    if g.number_of_nodes() == 0:
        fig.update_layout(title="Token tree (no steps yet)", uirevision=UIREVISION, template="plotly_white")
        return fig
    # Layered by logical step like nx.multipartite_layout, but that one does not keep the order inside a
    # layer; here every set hangs from the top row, most probable first, so the main path reads as a line.
    pos = {n: (g.nodes[n]["step"], -g.nodes[n]["idx"]) for n in g.nodes}
    ex, ey, px, py = [], [], [], []
    for a, b in g.edges:
        on_path = g.nodes[a]["on_path"] and g.nodes[b]["on_path"]
        xs, ys = (px, py) if on_path else (ex, ey)
        xs += [pos[a][0], pos[b][0], None]
        ys += [pos[a][1], pos[b][1], None]
    fig.add_trace(go.Scatter(x=ex, y=ey, mode="lines", line=dict(color="rgba(120,120,140,0.35)", width=1),
                             hoverinfo="skip", name="visible to next step"))
    fig.add_trace(go.Scatter(x=px, y=py, mode="lines", line=dict(color=PATH, width=3), hoverinfo="skip",
                             name="most probable surviving path"))
    for pruned in (False, True):
        nodes = [n for n in g.nodes if (g.nodes[n]["cand"].pruned_at is not None) == pruned]
        if not nodes:
            continue
        cands = [g.nodes[n]["cand"] for n in nodes]
        step_of = {st.step: st for st in trace.steps}
        hover = []
        for n, c in zip(nodes, cands):
            st = step_of[g.nodes[n]["step"]]
            att = "—" if c.attention is None else f"{c.attention:.4f}"
            thr = "—" if st.pruning_threshold is None else f"{st.pruning_threshold:.4f}"
            extra = f"<br>MCTS visits {c.visits}, value {c.value:.3f}" if c.visits is not None else ""
            hover.append(f"<b>{html.escape(show_token(c.text))}</b> (id {c.token_id})<br>p = {c.prob:.4f}"
                         f"<br>step {st.step}, position {st.position}<br>selection threshold "
                         f"{st.selection_threshold:.3f}, pruning threshold {thr}<br>attention received {att}"
                         f"<br>{_fate(c, trace.mode)}{extra}")
        fig.add_trace(go.Scatter(
            x=[pos[n][0] for n in nodes], y=[pos[n][1] for n in nodes], mode="markers+text",
            text=[show_token(c.text)[:12] for c in cands],
            textposition=["top center" if g.nodes[n]["step"] % 2 == 0 else "bottom center" for n in nodes],
            textfont=dict(size=11, color="#888" if pruned else "#222"),
            customdata=nodes, hovertext=hover, hoverinfo="text", name="pruned" if pruned else "candidate",
            marker=dict(size=[8 + 22 * c.prob ** 0.5 for c in cands],
                        color=PRUNED if pruned else [c.prob for c in cands],
                        colorscale=None if pruned else COLORSCALE, cmin=0, cmax=1,
                        symbol="x" if pruned else "circle",
                        showscale=not pruned, colorbar=dict(title="p", thickness=10, len=0.6) if not pruned else None,
                        line=dict(width=[3 if g.nodes[n]["on_path"] else 0.5 for n in nodes],
                                  color=[PATH if g.nodes[n]["on_path"] else "#333" for n in nodes]))))
    if selected and selected in pos:
        fig.add_trace(go.Scatter(x=[pos[selected][0]], y=[pos[selected][1]], mode="markers", hoverinfo="skip",
                                 marker=dict(size=36, color="rgba(0,0,0,0)", line=dict(width=3, color="#1f77b4")),
                                 name="selected"))
    last = max(g.nodes[n]["step"] for n in g.nodes)
    fig.update_layout(
        title=f"Token tree — {trace.mode}, {last + 1} logical steps, {g.number_of_nodes()} candidates",
        template="plotly_white", uirevision=UIREVISION, hovermode="closest", margin=dict(l=10, r=10, t=70, b=30),
        title_font_size=15, legend=dict(orientation="h", yanchor="bottom", y=1.0, x=1, xanchor="right"), height=480,
        xaxis=dict(title="logical step (shared position)", range=[-0.5, max(8, last + 1.5)], zeroline=False),
        yaxis=dict(visible=False))
    return fig


def scored_candidates(trace: Trace) -> list[tuple[int, int, Candidate]]:
    return [(st.step, i, c) for st in trace.steps for i, c in enumerate(st.candidates) if c.attention_by_step]


def attention_figure(trace: Trace) -> go.Figure:
    rows = scored_candidates(trace)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.18, 0.82], vertical_spacing=0.04)
    if not rows:
        fig.update_layout(title="Pruning attention (enable retroactive pruning to record it)",
                          template="plotly_white", uirevision=UIREVISION, height=420)
        return fig
    later = sorted({s for _, _, c in rows for s in c.attention_by_step})
    thr = {st.step: st.pruning_threshold for st in trace.steps}
    fig.add_trace(go.Scatter(x=later, y=[thr.get(s) for s in later], mode="lines+markers", name="threshold in force",
                             line=dict(color=PRUNED, dash="dash")), row=1, col=1)
    labels = [f"s{s} {show_token(c.text)[:10]}{' ✗' if c.pruned_at is not None else ''} ({s}:{i})"
              for s, i, c in rows]
    z = [[c.attention_by_step.get(s) for s in later] for _, _, c in rows]
    hover = [[(f"{html.escape(show_token(c.text))} (step {st}) ← step {s}: {c.attention_by_step[s]:.4f}"
               f"<br>threshold {thr.get(s) or 0:.4f}" + (" — below" if c.attention_by_step[s] < (thr.get(s) or 0)
                                                         else ""))
              if s in c.attention_by_step else "" for s in later] for st, _, c in rows]
    fig.add_trace(go.Heatmap(x=later, y=labels, z=z, colorscale="Blues", hovertext=hover, hoverinfo="text",
                             colorbar=dict(title="attention", thickness=10, len=0.7, y=0.38),
                             customdata=[[f"{s}:{i}"] * len(later) for s, i, _ in rows]), row=2, col=1)
    px = [c.pruned_at for _, _, c in rows if c.pruned_at is not None]
    py = [lab for (_, _, c), lab in zip(rows, labels) if c.pruned_at is not None]
    fig.add_trace(go.Scatter(x=px, y=py, mode="markers", marker=dict(symbol="x", size=10, color=PRUNED),
                             name="pruned here", hoverinfo="skip"), row=2, col=1)
    fig.update_layout(title="Attention later steps paid each parallel candidate", template="plotly_white",
                      uirevision=UIREVISION, height=max(420, 120 + 18 * len(rows)), margin=dict(l=10, r=10, t=40, b=30),
                      legend=dict(orientation="h", y=-0.1))
    fig.update_yaxes(autorange="reversed", row=2, col=1)
    fig.update_yaxes(title="threshold", rangemode="tozero", row=1, col=1)
    fig.update_xaxes(title="later logical step", row=2, col=1)
    return fig


def threshold_figure(trace_or_settings, current_step: int | None = None) -> go.Figure:
    """The pruning schedule over the run; with a trace, set sizes and pruning counts per step as bars."""
    trace = trace_or_settings if isinstance(trace_or_settings, Trace) else None
    settings = build_settings(trace.settings if trace else trace_or_settings.to_dict())
    curve = threshold_curve(settings)
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    if trace and trace.steps:
        sizes = [len(st.candidates) for st in trace.steps]
        pruned = [sum(1 for st2 in trace.steps for c in st2.candidates if c.pruned_at == st.step)
                  for st in trace.steps]
        fig.add_trace(go.Bar(x=list(range(len(sizes))), y=sizes, name="set size", marker_color="rgba(68,1,84,0.35)"),
                      secondary_y=True)
        fig.add_trace(go.Bar(x=list(range(len(sizes))), y=pruned, name="pruned at step",
                             marker_color="rgba(214,39,40,0.6)"), secondary_y=True)
    fig.add_trace(go.Scatter(x=list(range(len(curve))), y=curve, mode="lines", name="pruning threshold",
                             line=dict(color="#1f77b4", width=3)), secondary_y=False)
    if current_step is not None and 0 <= current_step < len(curve):
        fig.add_trace(go.Scatter(x=[current_step], y=[curve[current_step]], mode="markers", name="current step",
                                 marker=dict(size=12, color=PATH)), secondary_y=False)
    kind = ("ReLU" if settings.use_relu else "Bezier") if settings.dynamic_threshold else "constant"
    fig.update_layout(title=f"Pruning threshold schedule ({kind})", template="plotly_white", barmode="overlay",
                      uirevision=UIREVISION, height=320, margin=dict(l=10, r=10, t=40, b=30),
                      legend=dict(orientation="h", y=-0.2))
    fig.update_xaxes(title="logical step")
    fig.update_yaxes(title="attention threshold", secondary_y=False, rangemode="tozero")
    fig.update_yaxes(title="tokens", secondary_y=True, rangemode="tozero", showgrid=False)
    return fig


def _prob_colour(p: float) -> str:
    return sample_colorscale(COLORSCALE, [max(0.0, min(1.0, p))])[0]


def text_html(trace: Trace) -> str:
    """The run as HTML: sets in brackets, background by probability, pruned alternatives struck through."""
    parts = []
    for st in trace.steps:
        spans = []
        for i, c in enumerate(st.candidates):
            tok = html.escape(c.text).replace("\n", "⏎<br>")
            style = f"border-bottom:3px solid {_prob_colour(c.prob)}"
            cls = "tok pruned" if c.pruned_at is not None else "tok"
            title = html.escape(f"p={c.prob:.3f}; {_fate(c, trace.mode)}")
            spans.append(f'<span class="{cls}" style="{style}" title="{title}" data-node="{st.step}:{i}">{tok}</span>')
        parts.append(spans[0] if len(spans) == 1 else '<span class="set">[' + "/".join(spans) + "]</span>")
    body = "".join(parts) or "<em>no tokens yet</em>"
    clean = html.escape(trace.clean_text)
    return (f'<div class="tempo-text"><div class="branching">{body}</div>'
            f'<div class="clean"><b>Most probable surviving path:</b> {clean}</div></div>')


def report_html(trace: Trace) -> str:
    """One self-contained HTML file: settings, text and the three figures (plotly.js inlined once)."""
    figs = [tree_figure(trace), attention_figure(trace), threshold_figure(trace)]
    divs = [f.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, f in enumerate(figs)]
    esc = lambda v: html.escape(str(v), quote=True)  # noqa: E731 - every trace string is escaped
    rows = "".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in trace.settings.items() if k != "prompt")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>TEMPO report</title>"
            f"<style>body{{font-family:sans-serif;max-width:1100px;margin:auto}} .pruned{{text-decoration:line-through;"
            f"opacity:.6}} .set{{background:#f3f0ff}} td{{padding:0 8px}}</style></head><body>"
            f"<h1>TEMPO run</h1><p><b>Model</b> {esc(trace.model)} · <b>mode</b> {esc(trace.mode)} · "
            f"<b>stop</b> {esc(trace.stop_reason)}</p><p><b>Prompt</b> {esc(trace.prompt)}</p>"
            f"{text_html(trace)}{''.join(divs)}<h2>Settings</h2><table>{rows}</table></body></html>")


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
