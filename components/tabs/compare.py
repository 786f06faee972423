"""The "Compare" tab: the session's recent runs, any two side by side (trees, texts, key numbers) and overlaid
as one tree diff. After every run A is the newest and B the one before, so changing a setting and generating
again shows the difference at once."""

from __future__ import annotations

import html
from typing import Any

import gradio as gr

from tempo_core.trace import Trace

from ..figures.diff import diff_figure
from ..figures.text import text_view
from ..figures.tree import tree_view
from ..server.shared import Shared
from ..server.uploads import read_upload
from .page import After, Hook, Page
from .widgets import branching_text, plotly_view

HISTORY = 6  # runs kept per session (plain traces, no tensors)
NOTHING_YET = "Generate twice (or upload a trace) to compare two runs."


def add_run(history: list[dict] | None, trace: dict, source: str = "run") -> list[dict]:
    """A new history with `trace` as the newest entry (at most HISTORY kept)."""
    history = list(history or [])
    number = (history[-1]["id"] + 1) if history else 1
    s = trace["settings"]
    prompt = trace["prompt"] if len(trace["prompt"]) <= 28 else trace["prompt"][:27] + "…"
    label = (f"#{number} {source} · {trace['mode']} · threshold {s.get('selection_threshold')} · "
             f"{len(trace['steps'])} steps · {prompt!r}")
    history.append({"id": number, "label": label, "trace": trace})
    return history[-HISTORY:]


def choices(history: list[dict] | None) -> list[tuple[str, int]]:
    return [(h["label"], h["id"]) for h in reversed(history or [])]


def find(history: list[dict] | None, run_id: Any) -> Trace | None:
    for h in history or []:
        if h["id"] == run_id:
            return Trace.from_dict(h["trace"])
    return None


KEY_NUMBERS = [("logical steps", lambda t: t.stats.get("steps", len(t.steps))),
               ("mean set size", lambda t: f"{t.stats.get('mean_set_size', 0):.2f}"),
               ("largest set", lambda t: t.stats.get("max_set_size", 0)),
               ("pruned", lambda t: t.stats.get("pruned", 0)),
               ("forward passes", lambda t: t.stats.get("forward_passes", "—")),
               ("tokens processed", lambda t: t.stats.get("tokens_processed", "—")),
               ("steps / s", lambda t: f"{t.timings.get('steps_per_s', 0):.1f}"),
               ("stopped by", lambda t: t.stop_reason.replace("_", " ")),
               # the faithfulness meter's answer, so TEMPO and Soft Thinking on one prompt read side by side
               ("faithfulness mean KL (nats)", lambda t: _measured(t, "mean_kl", "{:.4f}")),
               ("single-threadedness mean w", lambda t: _measured(t, "mean_w", "{:.2f}")),
               ("top sibling's mean share", lambda t: _measured(t, "mean_top_share", "{:.2f}"))]


def _measured(t: Trace, key: str, form: str) -> str:
    value = (t.faithfulness or {}).get(key)
    return "—" if value is None else form.format(value)


def numbers_table(a: Trace, b: Trace) -> str:
    """Key numbers of A and B, and the settings in which they differ."""
    rows = [f"| {name} | {f(a)} | {f(b)} |" for name, f in KEY_NUMBERS]
    differ = [k for k in sorted(set(a.settings) | set(b.settings)) if a.settings.get(k) != b.settings.get(k)]
    for k in differ:
        va, vb = (html.escape(str(t.settings.get(k)))[:60].replace("|", "¦").replace("\n", "⏎") for t in (a, b))
        rows.append(f"| setting `{k}` | {va} | {vb} |")
    if not differ:
        rows.append("| settings | same | same |")
    return "| | A | B |\n|---|---|---|\n" + "\n".join(rows)


class Compare:
    """The tab: two runs of the session's history, picked by the user; after every new trace, the newest two."""

    def __init__(self, shared: Shared, page: Page):
        self.limits = shared.limits
        with gr.Tab("Compare", id="compare"):
            self.history = gr.State([])  # the session's recent runs (add_run); only this tab writes it
            gr.Markdown("Pick two of this session's runs (newest first; up to six are kept). Change a setting and "
                        "generate again: A becomes the new run, B the one before it.")
            with gr.Row():
                self.pick_a = gr.Dropdown([], label="Run A", elem_id="compare-a")
                self.pick_b = gr.Dropdown([], label="Run B", elem_id="compare-b")
                self.upload = gr.File(label="Add a JSON trace to the list", file_types=[".json"],
                                      elem_id="compare-upload")
            self.numbers = gr.Markdown(NOTHING_YET, elem_id="compare-numbers")
            with gr.Row(equal_height=False):
                with gr.Column(min_width=300):
                    self.tree_a = plotly_view(elem_id="compare-tree-a")
                    self.text_a = branching_text("compare-text-a")
                with gr.Column(min_width=300):
                    self.tree_b = plotly_view(elem_id="compare-tree-b")
                    self.text_b = branching_text("compare-text-b")
            self.overlay = gr.Plot(label="Overlay: one tree, differences marked", elem_id="compare-diff")
        views = [self.tree_a, self.tree_b, self.text_a, self.text_b, self.numbers, self.overlay]
        picks = [self.pick_a, self.pick_b]
        listen = {"api_visibility": "private", **shared.view_events}
        for pick in picks:
            pick.input(self.compare, [self.history, *picks], views, **listen)
        self.upload.upload(self.add_upload, [self.history, self.upload], [self.history, *picks, *views], **listen)
        page.after_trace(After.HISTORY, Hook(self.file_arrival, [self.history, page.trace, page.arrived],
                                             [self.history, page.arrived, *picks, *views]))
        self.page = page

    def compare(self, history: list | None, a_id: Any, b_id: Any) -> dict:
        """Trees, texts, key numbers and the overlay of two runs of the history."""
        a, b = find(history, a_id), find(history, b_id)
        if a is None or b is None:
            return {self.numbers: NOTHING_YET}
        return {self.tree_a: tree_view(a, height=380), self.tree_b: tree_view(b, height=380),
                self.text_a: text_view(a), self.text_b: text_view(b), self.numbers: numbers_table(a, b),
                self.overlay: diff_figure(a, b)}

    def newest_pair(self, history: list | None) -> dict:
        """A = the newest run, B the one before it."""
        ids = [h["id"] for h in reversed(history or [])]
        a = ids[0] if ids else None
        b = ids[1] if len(ids) > 1 else None
        return {self.pick_a: gr.update(choices=choices(history), value=a),
                self.pick_b: gr.update(choices=choices(history), value=b), **self.compare(history, a, b)}

    def file_arrival(self, history: list | None, data: dict | None, source: str | None) -> dict:
        """A trace arrived on the page (the hook): filed in the history, shown as A."""
        if not data or not source:
            return gr.skip()
        history = add_run(history, data, source)
        return {self.history: history, self.page.arrived: None, **self.newest_pair(history)}

    def add_upload(self, history: list | None, file: Any) -> dict:
        if file is None:
            return gr.skip()
        try:
            trace = read_upload(file, self.limits.max_tokens, self.limits.max_parallel_tokens)
        except ValueError as exc:
            return {self.numbers: f"**Error:** {html.escape(str(exc))}"}
        history = add_run(history, trace.to_plain(), source="uploaded")
        return {self.history: history, **self.newest_pair(history)}
