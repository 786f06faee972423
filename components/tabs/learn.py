"""The "Learn" tab: the guided walkthrough. A lesson's text beside its figure (both from a recorded run, so no
model is needed), Prev / Next, token details on click, and "try it live", which fills the form with the lesson's
settings and opens Explore."""

from __future__ import annotations

from typing import Any

import gradio as gr

from tempo_core import build_settings

from ..figures.inspect import find_node, node_details
from ..figures.lessons import GLOSSARY, LESSONS, lesson_view
from ..server.shared import Shared
from .page import Outputs, Page
from .widgets import plotly_view

LESSON_DETAILS = "*Click a token in the figure for its details.*"


def lesson_at(index: Any) -> int:
    """A lesson number from the page (clamped to the lessons there are)."""
    return max(0, min(len(LESSONS) - 1, int(index or 0)))


def lesson_node(index: int, evt: gr.EventData) -> Any:
    """A token clicked in a lesson's figure: its details, from the lesson's recorded run."""
    node = str((getattr(evt, "_data", None) or {}).get("node") or "")
    trace = LESSONS[lesson_at(index)].trace
    return node_details(trace, node) if find_node(trace, node) else gr.skip()


class Learn:
    def __init__(self, shared: Shared, page: Page):
        self.limits, self.page = shared.limits, page
        text, figure, where = lesson_view(0)
        with gr.Tab("Learn", id="learn"):
            self.lesson = gr.State(0)
            with gr.Row(equal_height=False):
                with gr.Column(scale=2, min_width=300):
                    self.text = gr.Markdown(text, elem_id="lesson-text")
                    with gr.Row():
                        self.prev = gr.Button("◀ Prev", elem_id="lesson-prev", min_width=70, interactive=False)
                        self.next = gr.Button("Next ▶", elem_id="lesson-next", variant="primary", min_width=70)
                    self.where = gr.Markdown(where, elem_id="lesson-where")
                    self.details = gr.Markdown(LESSON_DETAILS, elem_id="lesson-details")
                    self.try_live = gr.Button("Try it live with these settings", elem_id="lesson-try", size="sm")
                with gr.Column(scale=3, min_width=320):
                    self.plot = plotly_view(figure, elem_id="lesson-figure")
            with gr.Accordion("Glossary", open=False):
                gr.Markdown(GLOSSARY)
        shown = [self.lesson, self.text, self.plot, self.where, self.prev, self.next, self.details]
        quick = {"queue": False, "api_visibility": "private"}
        self.prev.click(lambda i: self.go(i, -1), self.lesson, shown, **quick)
        self.next.click(lambda i: self.go(i, 1), self.lesson, shown, **quick)
        self.plot.click(lesson_node, self.lesson, self.details, api_visibility="private", **shared.view_events)
        self.try_live.click(self.try_lesson, self.lesson, [*page.form.values(), page.top], **quick)

    def go(self, index: Any, delta: int) -> Outputs:
        """The lesson `delta` away: its text, figure and place, Prev / Next clickable only where there is one."""
        i = lesson_at(lesson_at(index) + delta)
        text, figure, where = lesson_view(i)
        return {self.lesson: i, self.text: text, self.plot: figure, self.where: where,
                self.prev: gr.Button(interactive=i > 0), self.next: gr.Button(interactive=i < len(LESSONS) - 1),
                self.details: LESSON_DETAILS}

    def try_lesson(self, index: Any) -> Outputs:
        """A lesson's "try it live": its settings in the form (within this server's caps), then the Explore tab."""
        s = self.limits.fit(build_settings(LESSONS[lesson_at(index)].settings()))
        return {**self.page.fill_form(s), self.page.top: gr.Tabs(selected="explore")}
