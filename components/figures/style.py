"""What every figure shares: colours, how a token is shown, a candidate's fate, the main path, and the empty
figure that stands in for one with nothing to draw yet."""

from __future__ import annotations

from tempo_core.trace import Candidate, Step, Trace

PRUNED = "#d62728"
PATH = "#ff7f0e"
MISS = "#b8b8c4"
UIREVISION = "tempo"
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


def empty_figure(title: str, height: int, hint: str = "") -> dict:
    """A figure with nothing to draw yet: its title, and under it (short lines, for a phone) what to do."""
    text = f"{title}<br><sup>{hint}</sup>" if hint else title
    return {"data": [], "layout": {"title": {"text": text, "font": {"size": 15}, "x": 0.01, "xanchor": "left"},
                                   "template": "plotly_white",
                                   "uirevision": UIREVISION, "height": height, "xaxis": {"visible": False},
                                   "yaxis": {"visible": False}}}
