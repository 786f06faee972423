"""Research views, each a pure function of traces (plus, for faithfulness and baselines, data the engine made).

faithfulness_figure  KL(explicit paths || TEMPO) and top-token agreement per step
positions_figure     physical row vs logical position of every token, and the mask a step's queries used
rewind_figure        who paid a pruned candidate how much attention, against the threshold at the time
diff_trees           two runs aligned step by step: branches that appear, vanish or are pruned differently
sweep_figure         width, pruning, faithfulness and clean text across selection thresholds
"""

from __future__ import annotations

import html
import math
from typing import Any

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from tempo_core.layout import step_mask
from tempo_core.trace import Trace

from .views import PATH, PRUNED, UIREVISION, show_token


def faithfulness_figure(trace: Trace) -> go.Figure:
    f = trace.faithfulness
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    if not f:
        fig.update_layout(title="Faithfulness (tick 'Measure faithfulness' and generate)", template="plotly_white",
                          height=320, uirevision=UIREVISION)
        return fig
    steps = f["steps"]
    x = [s["step"] for s in steps]
    fig.add_trace(go.Bar(x=x, y=[s["kl"] for s in steps], name="KL(explicit paths ‖ TEMPO), nats",
                         marker_color=["#1f77b4" if s["top_agree"] else PRUNED for s in steps],
                         hovertext=[f"step {s['step']}: KL {s['kl']:.4f}, top token {'agrees' if s['top_agree'] else 'differs'}, "
                                    f"set overlap {s['set_jaccard']:.2f}, {s['paths']} paths cover {s['coverage']:.0%}"
                                    for s in steps], hoverinfo="text"), secondary_y=False)
    fig.add_trace(go.Scatter(x=x, y=[s["set_jaccard"] for s in steps], name="selected-set overlap (Jaccard)",
                             mode="lines+markers", line=dict(color=PATH)), secondary_y=True)
    ppl = lambda v: "n/a" if v is None or not math.isfinite(v) else f"{v:.2f}"  # noqa: E731 - no text: no perplexity
    # short lines: the title must fit a phone
    fig.update_layout(title=dict(text=(f"Faithfulness — mean KL {f['mean_kl']:.3f}<br><sup>top token agrees "
                                       f"{sum(s['top_agree'] for s in steps)}/{len(steps)}<br>perplexity "
                                       f"{ppl(f['clean_ppl'])} (clean text) vs {ppl(f['greedy_ppl'])} (greedy)</sup>"),
                                 y=0.93, yanchor="top"),
                      template="plotly_white", height=390, uirevision=UIREVISION, margin=dict(l=10, r=10, t=105, b=30),
                      legend=dict(orientation="h", y=-0.25))
    fig.update_xaxes(title="logical step (red bar: the top tokens differ)")
    fig.update_yaxes(title="KL (nats)", secondary_y=False, rangemode="tozero")
    fig.update_yaxes(title="overlap", range=[0, 1.05], dtick=0.25, secondary_y=True, showgrid=False)
    return fig


def threads_figure(trace: Trace) -> go.Figure:
    """Single-threadedness: each step's fitted w against its top sibling's share of the paths, between the two
    readings: w = 1 (the merged step follows its top sibling only) and w = share (a faithful mixture)."""
    f = trace.faithfulness or {}
    steps = [s for s in f.get("steps", []) if s.get("w") is not None]
    fig = go.Figure()
    layout = dict(template="plotly_white", height=360, uirevision=UIREVISION, margin=dict(l=10, r=10, t=80, b=40),
                  legend=dict(orientation="h", y=-0.3), xaxis=dict(title="top sibling's share of the paths",
                                                                  range=[0, 1.02]),
                  yaxis=dict(title="fitted w", range=[-0.02, 1.05]))
    if not steps:
        return fig.update_layout(title="Single-threadedness (tick 'Measure faithfulness' and generate a run that "
                                       "branches)", **layout)
    fig.add_trace(go.Scatter(x=[0, 1], y=[1, 1], mode="lines", name="w = 1: follows its top sibling only",
                             line=dict(color=PRUNED, dash="dash"), hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="w = share: a faithful mixture",
                             line=dict(color=PATH, dash="dot"), hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=[s["top_share"] for s in steps], y=[s["w"] for s in steps], mode="markers+text",
                             text=[str(s["step"]) for s in steps], textposition="top center", name="step",
                             marker=dict(size=9, color="#1f77b4"), hoverinfo="text",
                             hovertext=[f"step {s['step']}: w {s['w']:.3f}, top share {s['top_share']:.3f}"
                                        for s in steps]))
    return fig.update_layout(title=dict(text=(f"Single-threadedness — mean w {f['mean_w']:.2f}<br><sup>vs the top "
                                              f"sibling's mean share {f['mean_top_share']:.2f} over "
                                              f"{len(steps)} steps</sup>"), y=0.93, yanchor="top"), **layout)


def step_mask_rows(trace: Trace, step: int) -> tuple[torch.Tensor, list[int]]:
    """The boolean mask step `step`'s queries were given ([k, rows so far]) and the physical rows of the run."""
    st = trace.steps[step]
    start = st.candidates[0].row
    alive = [True] * start
    for r in st.hidden_rows:
        alive[r] = False
    k = len(st.candidates)
    visible = bool(trace.settings.get("allow_intraset_token_visibility"))
    return step_mask(alive, k, visible, torch.device("cpu"))[0, 0], list(range(start + k))


def row_labels(trace: Trace) -> dict[int, tuple[str, int, int]]:
    """physical row -> (token text, logical position, step or -1 for the prompt)."""
    out = {i: ("", i, -1) for i in range(len(trace.prompt_token_ids))}
    shared = trace.settings.get("use_custom_rope", True)  # off: siblings at consecutive positions
    for st in trace.steps:
        for i, c in enumerate(st.candidates):
            if c.row >= 0:
                out[c.row] = (c.text, st.position + (0 if shared else i), st.step)
    return out


def positions_figure(trace: Trace, step: int) -> go.Figure:
    if not trace.steps or trace.mode != "tempo":
        return go.Figure().update_layout(title="Positions & mask (a TEMPO run is needed)", template="plotly_white")
    step = max(0, min(step, len(trace.steps) - 1))
    mask, rows = step_mask_rows(trace, step)
    labels = row_labels(trace)
    fig = make_subplots(rows=1, cols=2, column_widths=[0.33, 0.67], horizontal_spacing=0.16,  # room: row labels
                        subplot_titles=("physical row → logical position",
                                        f"mask of step {step}'s queries (rows: its candidates)"))
    for kind, sel, colour in (("prompt", lambda r: labels[r][2] < 0, "#999"),
                              ("candidate", lambda r: labels[r][2] >= 0, "#440154")):
        rs = [r for r in rows if sel(r)]
        fig.add_trace(go.Scatter(x=rs, y=[labels[r][1] for r in rs], mode="markers", name=kind,
                                 marker=dict(color=colour, size=7),
                                 hovertext=[f"row {r}: {html.escape(show_token(labels[r][0]))} at position "
                                            f"{labels[r][1]}" for r in rs], hoverinfo="text"), row=1, col=1)
    st = trace.steps[step]
    ylabels = [f"{show_token(c.shown)[:10]} ({step}:{i})" for i, c in enumerate(st.candidates)]
    # prompt rows carry no token text in a trace: they are named "prompt"
    xlabels = [f"{r}:{show_token(labels[r][0])[:8] if labels[r][2] >= 0 else 'prompt'}@{labels[r][1]}" for r in rows]
    fig.add_trace(go.Heatmap(z=mask.int().tolist(), x=xlabels, y=ylabels, zmin=0, zmax=1, showscale=False,
                             colorscale=[[0, "#f4f4f4"], [1, "#3b528b"]], xgap=1, ygap=1,
                             hovertemplate="query %{y} → key %{x}: %{z}<extra></extra>"), row=1, col=2)
    for name, colour in (("mask: may attend", "#3b528b"), ("mask: hidden", "#e4e4e4")):  # legend entries
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=name,
                                 marker=dict(symbol="square", size=12, color=colour)), row=1, col=2)
    fig.update_xaxes(title="physical row", row=1, col=1)
    fig.update_yaxes(title="position id", row=1, col=1)
    fig.update_xaxes(showticklabels=len(rows) <= 60, tickangle=-60, automargin=True,
                     title="keys: physical row:token@position" + ("" if len(rows) <= 60 else " (hover)"), row=1, col=2)
    fig.update_layout(title=f"Positions & mask — step {step}: {len(st.candidates)} siblings share position "
                            f"{st.position}; {len(st.hidden_rows)} earlier rows hidden (pruned)",
                      template="plotly_white", height=490, margin=dict(l=10, r=10, t=60, b=40),
                      legend=dict(orientation="h", y=-0.42))  # below the rotated key labels and their title
    return fig


def rewind_figure(trace: Trace, node: str) -> go.Figure:
    """Why a candidate was pruned: attention from each later step (and, with multi-scale weighting, from each
    layer) against the threshold then in force."""
    try:
        s, i = (int(x) for x in node.split(":"))
        c = trace.steps[s].candidates[i]
    except (ValueError, IndexError, AttributeError):
        return go.Figure().update_layout(title="Pruning rewind: select a pruned candidate", template="plotly_white")
    later = sorted(c.attention_by_step)
    thr = {st.step: st.pruning_threshold for st in trace.steps}
    layered = bool(c.attention_by_layer)
    fig = make_subplots(rows=1, cols=2 if layered else 1, column_widths=[0.55, 0.45] if layered else None,
                        subplot_titles=("per later step", "per layer (multi-scale)") if layered else None)
    for j, sib in enumerate(trace.steps[s].candidates):
        xs = sorted(sib.attention_by_step)
        fig.add_trace(go.Scatter(x=xs, y=[sib.attention_by_step[k] for k in xs], mode="lines+markers",
                                 name=f"{show_token(sib.shown)}" + (" (this)" if j == i else ""),
                                 line=dict(width=4 if j == i else 1.5, dash="solid" if sib.alive else "dot")),
                      row=1, col=1)
    # the threshold as a short level at each later step, so that a decision resting on one step reads clearly
    tx, ty = [], []
    for k in later:
        tx += [k - 0.35, k + 0.35, None]
        ty += [thr.get(k), thr.get(k), None]
    fig.add_trace(go.Scatter(x=tx, y=ty, mode="lines", name="threshold in force", line=dict(color=PRUNED, width=3)),
                  row=1, col=1)
    if c.pruned_at is not None:
        fig.add_vline(x=c.pruned_at, line=dict(color=PRUNED, dash="dot"),
                      annotation_text=f"pruned after step {c.pruned_at}", row=1, col=1)
    if later:
        fig.update_xaxes(range=[min(later) - 1, max(max(later) + 1, min(later) + 2)], dtick=1, row=1, col=1)
    fig.update_traces(marker=dict(size=10), selector=dict(mode="lines+markers"))
    if layered:
        steps_ = sorted(c.attention_by_layer)
        layers = sorted({layer for per in c.attention_by_layer.values() for layer in per})
        fig.add_trace(go.Heatmap(x=steps_, y=[f"layer {layer}" for layer in layers], colorscale="Blues",
                                 z=[[c.attention_by_layer[k].get(layer) for k in steps_] for layer in layers],
                                 colorbar=dict(title="attention", thickness=10), name="per layer"), row=1, col=2)
    fate = f"pruned after step {c.pruned_at}" if c.pruned_at is not None else "kept"
    fig.update_layout(title=f"Pruning rewind — {show_token(c.shown)!s} at step {s} ({fate}); mean attention "
                            f"{(c.attention or 0):.4f}", template="plotly_white", height=360 if not layered else 420,
                      margin=dict(l=10, r=10, t=60, b=30))
    fig.update_xaxes(title="later logical step")
    fig.update_yaxes(title="attention paid (mean over heads and rows)", rangemode="tozero", row=1, col=1)
    return fig


def diff_trees(a: Trace, b: Trace) -> list[dict[str, Any]]:
    """Align two runs step by step; for each step the tokens only in A, only in B, and pruned differently."""
    out = []
    for n in range(max(len(a.steps), len(b.steps))):
        sa = {c.token_id: c for c in a.steps[n].candidates} if n < len(a.steps) else {}
        sb = {c.token_id: c for c in b.steps[n].candidates} if n < len(b.steps) else {}
        both = sa.keys() & sb.keys()
        out.append({"step": n, "only_a": [sa[t].text for t in sa.keys() - sb.keys()],
                    "only_b": [sb[t].text for t in sb.keys() - sa.keys()],
                    "pruned_differently": [sa[t].text for t in both if (sa[t].pruned_at is None) != (sb[t].pruned_at is None)],
                    "same": [sa[t].text for t in both]})
    return out


DIFF_GROUPS = {"same in both": ("same", "#888", "circle"), "only in A": ("only_a", PRUNED, "square"),
               "only in B": ("only_b", "#2ca02c", "diamond")}


def diff_layout(d: list[dict[str, Any]]) -> dict[str, list[tuple[int, int, str]]]:
    """Where each token of the diff sits: {group: [(step, row, text)]}. In each step's column the tokens in both
    come first, then those only in A, then those only in B, each on a row of its own (nothing drawn over
    anything else)."""
    out: dict[str, list[tuple[int, int, str]]] = {name: [] for name in DIFF_GROUPS}
    for r in d:
        row = 0
        for name, (key, _, _) in DIFF_GROUPS.items():
            for text in r[key]:
                out[name].append((r["step"], -row, text))
                row += 1
    return out


def diff_figure(a: Trace, b: Trace) -> go.Figure:
    """The two runs' sets side by side, step by step: grey = in both, red squares = only in A, green diamonds =
    only in B, an orange ring = in both but pruned in one run only."""
    d = diff_trees(a, b)
    placed = diff_layout(d)
    fig = go.Figure()
    for name, (_, colour, symbol) in DIFF_GROUPS.items():
        cells = placed[name]
        fig.add_trace(go.Scatter(
            x=[s for s, _, _ in cells], y=[r for _, r, _ in cells], mode="markers+text", name=name,
            text=[show_token(t)[:8] for _, _, t in cells], hovertext=[show_token(t) for _, _, t in cells],
            hoverinfo="text", textposition=["top center" if s % 2 == 0 else "bottom center" for s, _, _ in cells],
            textfont=dict(size=10), cliponaxis=False, marker=dict(size=11, color=colour, symbol=symbol)))
    rings = [(s, r) for s, r, t in placed["same in both"]
             if t in next(x for x in d if x["step"] == s)["pruned_differently"]]
    fig.add_trace(go.Scatter(x=[s for s, _ in rings], y=[r for _, r in rings], mode="markers", hoverinfo="skip",
                             name="pruned in one run only",
                             marker=dict(size=19, color="rgba(0,0,0,0)", line=dict(width=2, color=PATH))))
    first = next((r["step"] for r in d if r["only_a"] or r["only_b"]), None)
    fig.update_layout(title="Tree diff A vs B" + (f" — first divergence at step {first}" if first is not None
                                                  else " — identical sets"),
                      template="plotly_white", height=380, yaxis=dict(visible=False), xaxis_title="logical step",
                      uirevision=UIREVISION, margin=dict(l=10, r=10, t=50, b=30),
                      legend=dict(orientation="h", y=-0.22, font=dict(size=11)))
    return fig


def sweep_figure(runs: list[Trace]) -> go.Figure:
    """Small multiples over a threshold sweep: width, pruned count, faithfulness, clean-text length."""
    thr = [t.settings["selection_threshold"] for t in runs]
    measured = any(t.faithfulness for t in runs)
    kl_title = "mean KL vs paths" if measured else "mean KL: faithfulness is off (Research options)"
    fig = make_subplots(rows=1, cols=3, subplot_titles=("mean set size", "pruned per run", kl_title))
    fig.add_trace(go.Scatter(x=thr, y=[t.stats.get("mean_set_size", 0) for t in runs], mode="lines+markers",
                             name="width"), row=1, col=1)
    fig.add_trace(go.Scatter(x=thr, y=[t.stats.get("pruned", 0) for t in runs], mode="lines+markers",
                             name="pruned"), row=1, col=2)
    fig.add_trace(go.Scatter(x=thr, y=[(t.faithfulness or {}).get("mean_kl") for t in runs], mode="lines+markers",
                             name="KL"), row=1, col=3)
    fig.update_xaxes(title="selection threshold")
    fig.update_layout(title="Threshold sweep", template="plotly_white", height=300, showlegend=False,
                      margin=dict(l=10, r=10, t=60, b=40))
    return fig


def sweep_multiples(runs: list[Trace]) -> go.Figure:
    """Small multiples: one panel per threshold, the tree's width at every step (pruned part in red)."""
    n = max(1, len(runs))
    fig = make_subplots(rows=1, cols=n, shared_yaxes=True,
                        subplot_titles=[f"threshold {t.settings['selection_threshold']}" for t in runs] or [""])
    for col, t in enumerate(runs, start=1):
        x = [st.step for st in t.steps]
        alive = [len(st.alive) for st in t.steps]
        dead = [len(st.candidates) - len(st.alive) for st in t.steps]
        fig.add_trace(go.Bar(x=x, y=alive, marker_color="#3b528b", name="alive", showlegend=col == 1,
                             hovertext=[show_token(c.text) for st in t.steps for c in st.alive[:1]]), row=1, col=col)
        fig.add_trace(go.Bar(x=x, y=dead, marker_color=PRUNED, name="pruned", showlegend=col == 1), row=1, col=col)
    fig.update_layout(barmode="stack", template="plotly_white", height=260, margin=dict(l=10, r=10, t=50, b=30),
                      title="Tree width per step, one panel per threshold")
    return fig


def _cell(text: str) -> str:
    """Text safe inside one markdown table cell: no line breaks, no column bars, no HTML."""
    return html.escape(text).replace("|", "¦").replace("\r", "").replace("\n", " ⏎ ")


def sweep_table(runs: list[Trace]) -> str:
    rows = "".join(
        f"| {t.settings['selection_threshold']} | {t.stats.get('mean_set_size', 0):.2f} | {t.stats.get('pruned', 0)} "
        f"| {t.stats.get('reused_steps', 0)} | "
        f"{'' if not t.faithfulness else format(t.faithfulness['mean_kl'], '.3f')} | "
        f"{_cell(t.clean_text.strip()[:80])} |\n" for t in runs)
    stopped = next((t.stop_reason for t in runs if t.stop_reason in ("stopped", "time_limit")), None)
    note = f"**Sweep stopped early ({stopped.replace('_', ' ')})**: the runs it made so far.\n\n" if stopped else ""
    return (note + "| threshold | mean set | pruned | steps reused | mean KL | clean text |\n|---|---|---|---|---|---|\n"
            + rows)


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
