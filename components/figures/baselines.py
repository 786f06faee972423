"""The baselines beside a run: the beam search tree, and the runs' texts aligned token by token."""

from __future__ import annotations

import html
from typing import Any

import plotly.graph_objects as go

from .style import show_token


def beam_tree_figure(beam: dict[str, Any]) -> go.Figure:
    """m-ric style: the returned beams as a prefix tree, each finished beam labelled with its score."""
    texts = beam["token_texts"]
    nodes: dict[tuple[int, ...], int] = {}
    fig = go.Figure()
    ex, ey = [], []
    order: dict[int, int] = {}
    pos: dict[tuple[int, ...], tuple[int, int]] = {}
    for rank, seq in enumerate(beam["sequences"]):
        for depth in range(1, len(seq) + 1):
            key = tuple(seq[:depth])
            if key not in pos:
                row = order.get(depth, 0)
                order[depth] = row + 1
                pos[key] = (depth - 1, -row)
                if depth > 1:
                    a, b = pos[key[:-1]], pos[key]
                    ex += [a[0], b[0], None]
                    ey += [a[1], b[1], None]
            nodes[key] = rank
    fig.add_trace(go.Scatter(x=ex, y=ey, mode="lines", line=dict(color="#bbb"), hoverinfo="skip", showlegend=False))
    keys = list(pos)
    fig.add_trace(go.Scatter(x=[pos[k][0] for k in keys], y=[pos[k][1] for k in keys], mode="markers+text",
                             text=[show_token(texts.get(k[-1], ""))[:10] for k in keys], textposition="top center",
                             marker=dict(size=9, color=["#ff7f0e" if nodes[k] == 0 else "#1f77b4" for k in keys]),
                             showlegend=False, hoverinfo="text",
                             hovertext=[f"beam {nodes[k] + 1}: {html.escape(show_token(texts.get(k[-1], '')))}"
                                        for k in keys]))
    for rank, (seq, score) in enumerate(zip(beam["sequences"], beam["scores"])):
        if not seq:  # a beam that ended at once
            continue
        end = pos[tuple(seq)]
        fig.add_annotation(x=end[0], y=end[1], text=f"#{rank + 1} score {score:.2f}", showarrow=False, xshift=55)
    fig.update_layout(title=f"Beam search ({beam['num_beams']} beams): returned beams as a tree, best in orange",
                      template="plotly_white", height=320, yaxis=dict(visible=False), xaxis_title="step",
                      margin=dict(l=10, r=80, t=50, b=30))
    return fig


def aligned_html(result: dict[str, Any]) -> str:
    """Greedy, best beam and TEMPO's clean path token by token; cells that differ from greedy are marked."""
    greedy = [st.candidates[0] for st in result["greedy"].steps]
    g_ids = [c.token_id for c in greedy]
    beam_ids = result["beam"]["best_ids"]
    texts = result["beam"]["token_texts"]
    tempo_steps = [max(st.alive, key=lambda c: c.prob) for st in result["tempo"].steps if st.alive]
    rows = {"greedy": [(c.token_id, c.text) for c in greedy],
            f"beam ({result['beam']['num_beams']})": [(t, texts.get(t, "")) for t in beam_ids],
            "TEMPO (clean path)": [(c.token_id, c.text) for c in tempo_steps]}
    n = max(len(r) for r in rows.values())
    out = ["<table class='aligned'><tr><th></th>" + "".join(f"<th>{i}</th>" for i in range(n)) + "</tr>"]
    for name, toks in rows.items():
        cells = []
        for i in range(n):
            if i >= len(toks):
                cells.append("<td></td>")
                continue
            tid, text = toks[i]
            differs = i >= len(g_ids) or tid != g_ids[i]
            style = " style='background:#ffe3c4'" if differs and name != "greedy" else ""
            cells.append(f"<td{style}>{html.escape(show_token(text))}</td>")
        out.append(f"<tr><th>{name}</th>{''.join(cells)}</tr>")
    first = {name: next((i for i, (t, _) in enumerate(toks) if i >= len(g_ids) or t != g_ids[i]), None)
             for name, toks in rows.items() if name != "greedy"}
    note = "; ".join(f"{k} diverges from greedy at step {v}" if v is not None else f"{k} equals greedy"
                     for k, v in first.items())
    cost = result["cost"]
    crow = "".join(f"<tr><th>{k}</th><td>{v['forward_passes']}</td><td>{v['tokens_processed']}</td>"
                   f"<td>{v['peak_kv_rows']} rows ({v['peak_kv_mb']:.1f} MB)</td><td>{v['wall_s']:.2f} s</td></tr>"
                   for k, v in cost.items())
    return (f"<div class='aligned-wrap' style='overflow-x:auto'><p>{html.escape(note)}</p>{''.join(out)}</table>"
            f"<h4>Compute</h4><table class='cost'><tr><th></th><th>forward passes</th><th>tokens processed</th>"
            f"<th>peak KV cache</th><th>wall time</th></tr>{crow}</table></div>")
