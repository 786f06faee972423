"""The run as text: the `[a/b]` text as one HTML piece per step (whitespace and newlines drawn, groups unbroken),
and the status line above it."""

from __future__ import annotations

import html

from tempo_core.trace import Candidate, Step, Trace

from .style import fate, prob_colour, show_token


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


def status_line(trace: Trace, running: bool, paused: bool = False, progress: str | None = None,
                stepped: bool = False) -> str:
    """One line under the prompt. Steps are named by their number in the trace (from 0), as in the tree, the
    node details, step mode and replay. `progress`: what a phase after the steps (faithfulness) is doing.
    `stepped`: a run made a step per press, whose rate counts the steps' own time, not the pauses between."""
    n = len(trace.steps)
    if n == 0:
        return "Starting…" if running else f"no steps ({trace.stop_reason})"
    last = trace.steps[-1]
    if running and progress:
        return f"Steps 0–{last.step} done · {progress}…"
    rate = trace.timings.get("steps_per_s", 0.0)
    if stepped:
        mean_ms = trace.timings.get("mean_step_ms", 0.0)
        rate = 1e3 / mean_ms if mean_ms > 0 else 0.0
    pruned = trace.stats.get("pruned", 0)
    if paused:
        head = "Paused (press Step or Play to go on)"
    else:
        head = "Generating" if running else f"Done ({trace.stop_reason.replace('_', ' ')})"
    return (f"{head} · at step {last.step} ({n} step{'s' if n != 1 else ''}) · set size {len(last.candidates)} · "
            f"mean set {trace.stats.get('mean_set_size', 0):.2f} · {pruned} pruned · {rate:.1f} steps/s")
