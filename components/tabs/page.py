"""What the tabs offer each other: the trace on show, the Explore figures that show it, the settings form, and
"a trace arrived" hooks. app.py makes one `Page`; each tab reads what it needs from it and adds what it offers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import gradio as gr

from tempo_core import SettingsError, Trace
from tempo_core.config import TempoSettings
from tempo_core.serving.limits import Limits

from ..figures.commitment_strip import commitment_strip
from ..figures.curve import curve_view
from ..figures.heatmap import heatmap_view
from ..figures.text import text_view
from ..figures.tree import tree_view
from ..server.forms import form_values, settings_from_form
from ..server.shared import Shared

Component = gr.components.Component
Outputs = dict[Component, Any]  # a listener's answer: only the components it names change


@dataclass
class TraceView:
    """The Explore tab's main view of a trace: the status line, the branching text and three figures."""
    status: gr.Markdown
    text: gr.HTML
    tree: Component
    heatmap: Component
    curve: Component
    strip: Component  # the commitment strip under the tree

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
    """A listener a tab asks to run after another tab's event."""
    fn: Callable[..., Any]
    inputs: list[Component]
    outputs: list[Component]


@dataclass
class Page:
    """The states every tab may read or set, and what the tabs offer each other."""
    shared: Shared
    blocks: gr.Blocks
    top: gr.Tabs | None = None  # Learn and Explore (app.py opens them)
    trace: gr.State = field(default_factory=lambda: gr.State(None))  # the trace on show, a plain dict
    # where the trace on show came from ("run", "uploaded", ...) until Compare has filed it in its history
    arrived: gr.State = field(default_factory=lambda: gr.State(None))
    expanded: gr.State = field(default_factory=lambda: gr.State([]))  # tree stretches opened (their first steps)
    view: TraceView | None = None  # set by Explore
    form: dict[str, Component] = field(default_factory=dict)  # the settings form by setting name (Explore)
    on_trace: list[Hook] = field(default_factory=list)  # run after a trace arrives, the first one first
    _form_waiters: list[Callable[[dict[str, Component]], None]] = field(default_factory=list)
    _producers: list[Any] = field(default_factory=list)  # events that put a trace on show (trace_arrived)

    def when_form_ready(self, wire: Callable[[dict[str, Component]], None]) -> None:
        """`wire(form)` now if the form exists, else as soon as Explore lays it out (Learn comes first on a
        classroom server)."""
        if self.form:
            wire(self.form)
        else:
            self._form_waiters.append(wire)

    def set_form(self, form: dict[str, Component]) -> None:
        self.form = form
        for wire in self._form_waiters:
            wire(form)
        self._form_waiters.clear()

    def fill_form(self, s: TempoSettings) -> Outputs:
        """The form showing `s` (each setting that has a control)."""
        return dict(zip(self.form.values(), form_values(s, list(self.form))))

    def trace_arrived(self, event: Any) -> None:
        """`event` may put a new trace on show (it sets `trace` and `arrived`): the hooks run after it."""
        self._producers.append(event)

    def connect(self) -> None:
        """Chain every hook after every event that puts a trace on show: downloads and links first (the first
        hook), then the tabs that redraw from the trace. Called once, when every tab is laid out (app.py), so the
        order in which tabs are built does not matter."""
        view = {"api_visibility": "private", **self.shared.view_events}
        first, *rest = self.on_trace
        for event in self._producers:
            done = event.then(first.fn, first.inputs, first.outputs, **view)
            for hook in rest:
                done.then(hook.fn, hook.inputs, hook.outputs, **view)
        self._producers.clear()


def arrival(trace: Trace, source: str, page: Page) -> Outputs:
    """The page's states for a trace that has just arrived from `source`."""
    return {page.trace: trace.to_plain(), page.arrived: source}
