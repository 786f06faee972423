"""The "Replay & export" tab: replay the trace on show step by step (no model needed), upload a JSON trace, download
the trace and its HTML report, and the link that opens a fresh page with the same settings (opening one fills the
form)."""

from __future__ import annotations

import html
from typing import Any

import gradio as gr

from tempo_core import SettingsError, Trace, build_settings
from tempo_core.config import echo_value
from tempo_core.trace import rewind

from ..figures.curve import curve_view
from ..figures.inspect import node_choices
from ..server.forms import page_defaults, settings_from_link, share_query
from ..server.sessions import session_key
from ..server.shared import Shared
from ..server.uploads import read_upload
from .page import After, Hook, Outputs, Page, arrival


def downloads_html(run_id: str | None) -> str:
    if run_id is None:
        return ""
    return (f'<div class="tempo-downloads"><a href="download/{run_id}/tempo-trace.json" download>Download JSON trace</a>'
            f' · <a href="download/{run_id}/tempo-report.html" download>Download HTML report</a>'
            f' <small>(kept for an hour)</small></div>')


class Replay:
    """Also refreshes the page's candidate list (`page.node_pick`) with every trace."""

    def __init__(self, shared: Shared, page: Page):
        self.shared, self.page, self.node_pick = shared, page, page.node_pick
        with gr.Tab("Replay & export", id="export"):
            self.slider = gr.Slider(0, 1, value=0, step=1, label="Replay: step (no model needed)")
            with gr.Row():
                self.upload = gr.File(label="Replay an uploaded JSON trace (fills the form)", file_types=[".json"],
                                      elem_id="trace-upload")
                with gr.Column():
                    self.downloads = gr.HTML("", elem_id="downloads")
                    self.share = gr.Textbox(label="Link with the settings of the run on show (opens a fresh page "
                                                  "with them)", interactive=False,
                                            elem_id="share-link", buttons=["copy"])
        view, form = page.view, list(page.form.values())
        listen = {"api_visibility": "private", **shared.view_events}
        self.slider.input(self.replay_to, [page.trace, self.slider], view.outputs, api_name="replay",
                          **shared.view_events)
        page.trace_arrived(self.upload.upload(self.load_trace, [self.upload],
                                              [*view.outputs, page.trace, page.arrived, *form], **listen))
        page.after_trace(After.LINKS, Hook(self.after_run, [page.trace],
                                           [self.slider, self.node_pick, self.downloads, self.share]))
        page.blocks.load(self.fill_from_link, None, [*form, view.curve], inputs_kwargs=page.form,
                         api_visibility="private")

    def replay_to(self, data: dict | None, step: Any) -> Outputs:
        """The views as they stood at `step`."""
        if not data:
            return gr.skip()
        n = len(data["steps"])
        try:
            at = int(step)
            if not 0 <= at < n:
                raise ValueError
        except (TypeError, ValueError, OverflowError):
            return {self.page.view.status: f"**Error:** replay step: must be an integer in [0, {n - 1}], "
                                            f"got {echo_value(step)}"}
        past = rewind(Trace.from_dict(data), at)
        return self.page.view.show(past, f"Replay: at step {at} (steps 0–{n - 1})", current=at)

    def after_run(self, request: gr.Request, data: dict | None) -> Outputs:
        """A trace arrived (the first hook): replay range, candidate list, download links, share link."""
        if not data:
            return gr.skip()
        trace = Trace.from_dict(data)
        n = len(trace.steps)
        run_id = self.shared.store.put(session_key(request), trace.to_json())
        # the page address (events arrive on the queue endpoint, so request.url is not the page)
        base = (request.headers.get("referer") or str(request.base_url)).split("?")[0] if request is not None else ""
        try:
            link = base + share_query(build_settings(trace.settings), page_defaults(self.shared.limits))
        except SettingsError:
            link = base
        return {self.slider: gr.update(maximum=max(1, n - 1), value=max(0, n - 1)),
                self.node_pick: gr.update(choices=node_choices(trace), value=None),
                self.downloads: downloads_html(run_id), self.share: link}

    def load_trace(self, file: Any) -> Outputs:
        """An uploaded trace: its views, its settings in the form, and an entry in Compare's history."""
        if file is None:
            return gr.skip()
        limits = self.shared.limits
        try:
            trace = read_upload(file, limits.max_tokens, limits.max_parallel_tokens)
        except ValueError as exc:
            return {self.page.view.status: f"**Error:** {html.escape(str(exc))}"}
        status = f"Loaded trace: {len(trace.steps)} steps, {html.escape(trace.model)}"
        return {**self.page.view.show(trace, status), **arrival(trace, "uploaded", self.page),
                **self.page.fill_form(limits.fit(build_settings(trace.settings)))}  # read_upload checked them

    def fill_from_link(self, request: gr.Request, **form: Any) -> Outputs:
        """Opening a shared link fills the form with its settings (a plain visit keeps the defaults)."""
        params = dict(request.query_params) if request is not None else {}
        try:  # the link's settings on top of the form's own defaults; only the fields it names change
            found = settings_from_link(params, form, self.shared.limits)
        except SettingsError as exc:
            gr.Warning(f"ignored link settings: {exc}")
            found = None
        if found is None:
            return self.page.view.preview(form, self.shared.limits)
        s, changed = found
        filled = self.page.fill_form(s)
        values = {c: filled[c] for name, c in self.page.form.items() if name in changed}
        return {**values, self.page.view.curve: curve_view(s)}
