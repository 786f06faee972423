"""The "Compare" tab: the session's recent runs, any two side by side (trees, texts, key numbers) and overlaid
as one tree diff. After every run A is the newest and B the one before, so changing a setting and generating
again shows the difference at once."""

from __future__ import annotations

import html
from typing import Any

import gradio as gr

from tempo_core.trace import Trace

from .inspect import read_upload
from .research import diff_figure
from .views import text_view, tree_view
from .widgets import branching_text, plotly_view

HISTORY = 6  # runs kept per session (plain traces, no tensors)


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
               ("stopped by", lambda t: t.stop_reason.replace("_", " "))]


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


def compare(history: list[dict] | None, a_id: Any, b_id: Any):
    """(tree A, tree B, text A, text B, numbers, overlay) for two runs of the history."""
    a, b = find(history, a_id), find(history, b_id)
    if a is None or b is None:
        note = "Generate twice (or upload a trace) to compare two runs."
        return (gr.skip(), gr.skip(), gr.skip(), gr.skip(), note, gr.skip())
    return (tree_view(a, height=380), tree_view(b, height=380), text_view(a), text_view(b), numbers_table(a, b),
            diff_figure(a, b))


def build_compare_tab(app: Any, history: gr.State) -> dict:
    """Lays out the tab and wires its events; returns what the page updates after a run."""
    with gr.Tab("Compare", id="compare"):
        gr.Markdown("Pick two of this session's runs (newest first; up to six are kept). Change a setting and "
                    "generate again: A becomes the new run, B the one before it.")
        with gr.Row():
            pick_a = gr.Dropdown([], label="Run A", elem_id="compare-a")
            pick_b = gr.Dropdown([], label="Run B", elem_id="compare-b")
            upload = gr.File(label="Add a JSON trace to the list", file_types=[".json"], elem_id="compare-upload")
        numbers = gr.Markdown("Generate twice (or upload a trace) to compare two runs.", elem_id="compare-numbers")
        with gr.Row(equal_height=False):
            with gr.Column(min_width=300):
                tree_a = plotly_view(elem_id="compare-tree-a")
                text_a = branching_text("compare-text-a")
            with gr.Column(min_width=300):
                tree_b = plotly_view(elem_id="compare-tree-b")
                text_b = branching_text("compare-text-b")
        overlay = gr.Plot(label="Overlay: one tree, differences marked", elem_id="compare-diff")
    outputs = [tree_a, tree_b, text_a, text_b, numbers, overlay]

    def newest_pair(hist):
        ids = [h["id"] for h in reversed(hist or [])]
        a = ids[0] if ids else None
        b = ids[1] if len(ids) > 1 else None
        return (gr.update(choices=choices(hist), value=a), gr.update(choices=choices(hist), value=b),
                *compare(hist, a, b))

    def add_upload(hist, file):
        if file is None:
            return (gr.skip(),) * (3 + len(outputs))
        try:
            trace = read_upload(file, app.limits.max_tokens, app.limits.max_parallel_tokens)
        except ValueError as exc:
            return (gr.skip(), gr.skip(), gr.skip(), *[gr.skip()] * 4, f"**Error:** {html.escape(str(exc))}",
                    gr.skip())
        hist = add_run(hist, trace.to_plain(), source="uploaded")
        return (hist, *newest_pair(hist))

    view = {"concurrency_id": "views", "concurrency_limit": app.view_concurrency, "api_visibility": "private"}
    pick_a.input(compare, [history, pick_a, pick_b], outputs, **view)
    pick_b.input(compare, [history, pick_a, pick_b], outputs, **view)
    upload.upload(add_upload, [history, upload], [history, pick_a, pick_b, *outputs], **view)
    return {"refresh": newest_pair, "refresh_outputs": [pick_a, pick_b, *outputs]}
