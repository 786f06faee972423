"""Two runs aligned step by step: branches that appear, vanish or are pruned differently."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from tempo_core.trace import Trace

from .style import PATH, PRUNED, UIREVISION, show_token


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
