"""What the tabs share: the trace on show, the views that show it, the settings form, the candidate picked, and
"a trace arrived" hooks. app.py makes one `Page` before any tab; it creates the shared views and the form (not yet
placed), each tab places what it shows and adds what it offers, and `connect` chains the hooks at the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Callable

import gradio as gr

from tempo_core import SettingsError, Trace
from tempo_core.config import TempoSettings
from tempo_core.serving.limits import Limits

from ..figures.commitment_strip import commitment_strip
from ..figures.curve import curve_view
from ..figures.heatmap import heatmap_view
from ..figures.style import empty_figure
from ..figures.text import text_view
from ..figures.tree import tree_view
from ..server.forms import form_values, settings_from_form
from ..server.shared import Shared
from .controls import make_form
from .widgets import branching_text, plotly_view

Component = gr.components.Component
Outputs = dict[Component, Any]  # a listener's answer: only the components it names change
NO_TRACE = Trace("", "tempo", {}, "", "", [])  # what the page shows before any run


@dataclass
class TraceView:
    """The Explore tab's main view of a trace: the status line, the branching text and three figures."""
    status: gr.Markdown
    text: gr.HTML
    tree: Component
    heatmap: Component
    curve: Component
    strip: Component  # the commitment strip under the tree

    @classmethod
    def create(cls, ready: str) -> "TraceView":
        """The views, not yet placed (the Explore tab places them); `ready`: the status line before any run."""
        unplaced = {"render": False}
        return cls(status=gr.Markdown(ready, elem_id="status", **unplaced), text=branching_text(**unplaced),
                   tree=plotly_view(tree_view(NO_TRACE), elem_id="tempo-tree", **unplaced),
                   heatmap=plotly_view(empty_figure("Pruning heatmap", 300, "press Generate (with pruning on) to fill "
                                                    "it"), elem_id="tempo-heatmap", max_height=620, **unplaced),
                   curve=plotly_view(elem_id="tempo-curve", **unplaced),
                   strip=plotly_view(commitment_strip(NO_TRACE), elem_id="commitment-strip", **unplaced))

    @property
    def outputs(self) -> list[Component]:
        return [self.tree, self.heatmap, self.curve, self.text, self.status, self.strip]

    def show(self, trace: Trace, status: str | None = None, *, selected: str | None = None,
             current: int | None = None, expanded: frozenset[int] = frozenset(), live: bool = False) -> Outputs:
        """The four views of `trace` (and `status`); `live`: a run still growing; `current`: the replayed step."""
        out: Outputs = {self.tree: tree_view(trace, selected, expanded, live=live), self.heatmap: heatmap_view(trace),
                        self.curve: curve_view(trace, len(trace.steps) - 1 if current is None else current),
                        self.text: text_view(trace), self.strip: commitment_strip(trace)}
        if status is not None:
            out[self.status] = status
        return out

    def preview(self, form: dict[str, Any], limits: Limits) -> Outputs:
        """The threshold curve of the form's settings, before any run (nothing while the form is invalid)."""
        try:
            return {self.curve: curve_view(settings_from_form(form, limits))}
        except SettingsError:
            return gr.skip()


@dataclass(frozen=True)
class Hook:
    """A listener a tab asks to run after another tab's event. `queued` False: it costs nothing (no model, no
    figure), so it runs at once, outside the queue, taking none of the session's share of it."""
    fn: Callable[..., Any]
    inputs: list[Component]
    outputs: list[Component]
    queued: bool = True


class After(IntEnum):
    """Where a tab's "trace arrived" hook runs, in this order whichever tab was built first."""
    LINKS = 0  # downloads, the share link, the candidate list: what a person reaches for at once
    PICK = 1  # the details and what-if of a candidate of the trace before are cleared
    HISTORY = 2  # Compare files the run in the session's history
    RESEARCH = 3  # the research views redraw from the trace


class Page:
    """The states every tab may read or set, the views and form they share, and what the tabs offer each other."""

    def __init__(self, shared: Shared, blocks: gr.Blocks):
        """Inside `blocks`, outside any Tabs (a State among tabs shows as a phantom tab)."""
        self.shared, self.blocks = shared, blocks
        self.top: gr.Tabs | None = None  # Learn and Explore (app.py opens them)
        self.trace = gr.State(None)  # the trace on show, a plain dict
        # where the trace on show came from ("run", "uploaded", ...) until Compare has filed it in its history
        self.arrived = gr.State(None)
        self.expanded = gr.State([])  # tree stretches opened (their first steps)
        self.view = TraceView.create(f"Ready: model **{shared.lm.name}** on {shared.lm.device}.")
        self.form = make_form(shared.limits)  # {setting name: control}, placed by Explore
        # the candidate picked in the tree (any value is accepted here and checked by find_node: API callers name one)
        self.node_pick = gr.Dropdown([], label="Inspect candidate", scale=1, allow_custom_value=True, render=False)
        self._hooks: list[tuple[After, Hook]] = []
        self._producers: list[Any] = []  # events that put a trace on show (trace_arrived)
        self._rewind_pick: Component | None = None
        self._rewind_path: list[tuple[gr.Tabs, str]] = []  # the tabs selected on the way to a rewind

    def fill_form(self, s: TempoSettings) -> Outputs:
        """The form showing `s` (each setting that has a control)."""
        return dict(zip(self.form.values(), form_values(s, list(self.form))))

    def offer_rewind(self, pick: Component, tabs: gr.Tabs, tab_id: str) -> None:
        """Where a pruned candidate's rewind opens: `pick` names it, and `tabs` select `tab_id` to show it (the tab
        that holds `tabs` adds its own way there with `rewind_via`)."""
        self._rewind_pick = pick
        self._rewind_path.append((tabs, tab_id))

    def rewind_via(self, tabs: gr.Tabs, tab_id: str) -> None:
        self._rewind_path.insert(0, (tabs, tab_id))

    @property
    def rewind_outputs(self) -> list[Component]:
        return [self._rewind_pick, *(tabs for tabs, _ in self._rewind_path)] if self._rewind_pick else []

    def open_rewind(self, node: str, show: bool) -> Outputs:
        """The rewind of pruned candidate `node` picked; `show`: its tab opened too."""
        if self._rewind_pick is None:
            return {}
        out: Outputs = {self._rewind_pick: node}
        if show:
            out |= {tabs: gr.Tabs(selected=tab_id) for tabs, tab_id in self._rewind_path}
        return out

    def after_trace(self, order: After, hook: Hook) -> None:
        """Run `hook` after every event that puts a trace on show, in the place `order` gives it."""
        self._hooks.append((order, hook))

    def trace_arrived(self, event: Any) -> None:
        """`event` may put a new trace on show (it sets `trace` and `arrived`): the hooks run after it."""
        self._producers.append(event)

    def connect(self) -> None:
        """Chain the hooks after every event that puts a trace on show: the first in `After` order right after it,
        the others after that one. Called once, when every tab is laid out (app.py)."""
        view = {"api_visibility": "private", **self.shared.view_events}
        first, *rest = [hook for _, hook in sorted(self._hooks, key=lambda item: item[0])]
        for event in self._producers:
            done = event.then(first.fn, first.inputs, first.outputs, **view)
            for hook in rest:
                done.then(hook.fn, hook.inputs, hook.outputs,
                          **(view if hook.queued else {"api_visibility": "private", "queue": False}))
        self._producers.clear()


def arrival(trace: Trace, source: str, page: Page) -> Outputs:
    """The page's states for a trace that has just arrived from `source`."""
    return {page.trace: trace.to_plain(), page.arrived: source}
