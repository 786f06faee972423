"""Explore's step mode: Step / Play / Pause through a run one logical step at a time, and predict-then-reveal
(the student ticks the tokens they think pass the threshold before the step is shown). The runs themselves live
in server/stepping.py, the scoring in figures/predict.py."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterator

import gradio as gr

from tempo_core import SettingsError, generate
from tempo_core.config import echo_value
from tempo_core.trace import rewind

from ..figures.predict import (prediction_choices, prediction_question, reflection_question, reveal_markdown,
                               score_prediction)
from ..figures.text import status_line
from ..server.sessions import session_key
from ..server.shared import Shared
from ..server.stepping import SteppedRun
from .page import Outputs, Page

PLAY_SPEEDS = (0.5, 5.0)  # steps a second


def play_speed(value: Any) -> float:
    """The Play speed slider's value, checked (SettingsError names it and its range)."""
    lo, hi = PLAY_SPEEDS
    try:
        speed = float(value)
    except (TypeError, ValueError, OverflowError):
        speed = float("nan")
    if not lo <= speed <= hi:  # NaN fails too
        raise SettingsError("play_speed",
                            f"must be a number in [{lo:g}, {hi:g}] steps a second, got {echo_value(value)}")
    return speed


def hidden_choices() -> dict:
    """The prediction choices, emptied and hidden (no step waits for a prediction)."""
    return gr.update(choices=[], value=[], visible=False)


@dataclass
class StepControls:
    """The step-mode buttons, laid out right under the prompt (above the fold on a laptop and a phone)."""
    step: gr.Button
    play: gr.Button
    pause: gr.Button
    speed: gr.Slider
    predict: gr.Checkbox
    choices: gr.CheckboxGroup
    reveal: gr.Button
    reveal_md: gr.Markdown
    question: gr.Markdown

    @classmethod
    def lay_out(cls, classroom: bool) -> "StepControls":
        with gr.Accordion("Step by step · predict first", open=classroom, elem_id="step-mode"):
            with gr.Row():
                step = gr.Button("Step", elem_id="step", min_width=60)
                play = gr.Button("Play", elem_id="play", min_width=60)
                pause = gr.Button("Pause", elem_id="pause", min_width=60)
            speed = gr.Slider(*PLAY_SPEEDS, value=1, step=0.5, label="Play speed (steps a second)")
            predict = gr.Checkbox(value=classroom, label="Predict before each step", elem_id="predict")
            choices = gr.CheckboxGroup([], label="Which tokens pass the threshold?", visible=False,
                                       elem_id="predict-choices")
            reveal = gr.Button("Reveal", elem_id="reveal", size="sm")
            reveal_md = gr.Markdown("", elem_id="reveal-result")
            question = gr.Markdown("", elem_id="reflection")
        return cls(step, play, pause, speed, predict, choices, reveal, reveal_md, question)

    def cleared(self) -> Outputs:
        """No prediction pending (a new trace replaces the stepped one)."""
        return {self.reveal_md: "", self.question: "", self.choices: hidden_choices()}


class StepMode:
    def __init__(self, shared: Shared, page: Page, controls: StepControls, stop: gr.Button):
        """`stop`: the page's Stop button, which also ends a stepped run."""
        self.shared, self.page, self.ui = shared, page, controls
        self.finished = gr.State(None)  # a stepped run's trace once it has finished
        ui = controls
        outputs = [*page.view.outputs, self.finished, ui.choices, ui.reveal_md, ui.question]
        model = {"show_progress": "hidden", **shared.model_events}
        ui.step.click(self.step, [ui.predict], outputs, inputs_kwargs=page.form, api_name="step", **model)
        ui.play.click(self.play, [ui.speed], outputs, inputs_kwargs=page.form, api_visibility="private", **model)
        ui.pause.click(self.pause, None, None, queue=False, api_visibility="private")
        stop.click(self.stopped, None, [page.view.status, ui.choices], queue=False, api_visibility="private")
        ui.reveal.click(self.reveal, [ui.choices], outputs, api_visibility="private", show_progress="hidden",
                        **shared.view_events)
        page.trace_arrived(self.finished.change(self.arrived, [self.finished], [page.trace, page.arrived],
                                                api_visibility="private"))

    def _run(self, request: gr.Request, form: dict[str, Any]) -> SteppedRun:
        """The session's stepped run; a new one (from the form) when it has none, its run has ended, or the form no
        longer says what the paused run was made from (its `notice` then says so)."""
        key = session_key(request)
        s = self.shared.settings(form)
        run = self.shared.stepped.get(key)
        if run is None or run.done or run.settings != s:
            replaced = run is not None and not run.done
            graphs = self.shared.batcher.active == 0  # made before it joins the batcher (not counted yet)
            run = self.shared.stepped.start(key, lambda stop: generate(self.shared.lm, s, stop, cooperative=True,
                                                                       cuda_graphs=graphs))
            run.settings = s
            run.notice = "The form changed: a new stepped run with its settings. " if replaced else ""
        return run

    def step(self, request: gr.Request, predict: bool, **form: Any) -> Outputs:
        """Step: one logical step of the session's stepped run. With `predict`, the new step stays hidden and the
        student picks the tokens they think pass the threshold first."""
        try:
            run = self._run(request, form)
        except SettingsError as exc:
            return {self.page.view.status: f"**Error:** {exc}"}
        run.playing = False
        self.shared.stepped.advance(run)
        return self.frame(run, predict)

    def play(self, request: gr.Request, speed: float, **form: Any) -> Iterator[Outputs]:
        """Play: step on at `speed` steps a second (0.5 to 5) until Pause, the end, the server's time limit, or the
        session leaves."""
        try:
            speed = play_speed(speed)
            run = self._run(request, form)
        except SettingsError as exc:
            yield {self.page.view.status: f"**Error:** {exc}"}
            return
        run.playing = True
        ends = time.monotonic() + self.shared.limits.max_seconds  # Play is a long job too: it pauses at the limit
        while run.playing and not run.done and time.monotonic() < ends:
            t0 = time.monotonic()
            self.shared.stepped.advance(run)
            yield self.frame(run, False)
            time.sleep(max(0.0, 1.0 / speed - (time.monotonic() - t0)))
        run.playing = False

    def pause(self, request: gr.Request) -> None:
        self.shared.stepped.pause(session_key(request))

    def stopped(self, request: gr.Request) -> Outputs:
        """Stop was pressed: a stepped run (paused or playing) ends there, and the next Step starts a new one."""
        run = self.shared.stepped.end(session_key(request))
        if run is None or run.trace is None or not run.trace.steps:
            return gr.skip()
        return {self.page.view.status: f"Stopped at step {run.trace.steps[-1].step} ({len(run.trace.steps)} steps): "
                                       f"press Step or Play for a new run", self.ui.choices: hidden_choices()}

    def reveal(self, request: gr.Request, picked: list[str] | None) -> Outputs:
        """Reveal the hidden step: the picks marked right or wrong, the running score, then a question."""
        run = self.shared.stepped.get(session_key(request))
        if run is None or not run.hidden or run.trace is None:
            return {self.page.view.status: "Press **Step** (with *Predict* ticked) for a step to predict."}
        st = run.trace.steps[-1]
        result = score_prediction(st, list(picked or []))
        run.score.right += result.right
        run.score.total += result.total
        return {**self.frame(run, False), self.ui.reveal_md: reveal_markdown(st, result, run.score),
                self.ui.question: reflection_question(run.trace, st.step)}

    def frame(self, run: SteppedRun, predict: bool) -> Outputs:
        """The views of the run so far. With `predict`, the newest step is made but not shown: the views show
        the run just before it, and the choices ask which tokens pass."""
        trace, view, ui = run.trace, self.page.view, self.ui
        out: Outputs = {self.finished: trace.to_plain()} if run.done and trace is not None else {}
        if trace is None or not trace.steps:
            reason = trace.stop_reason if trace else "nothing to run"
            return {**out, **ui.cleared(), view.status: f"no steps ({reason})"}
        st = trace.steps[-1]
        if predict and not run.done:
            run.hidden = True
            ask = f"{run.notice}{prediction_question(trace.mode, st)} (Score so far: {run.score})"
            run.notice = ""
            return {**out, **view.show(rewind(trace, len(trace.steps) - 2), ask, live=True), ui.reveal_md: "",
                    ui.question: "", ui.choices: gr.update(choices=prediction_choices(st), value=[], visible=True)}
        run.hidden = False
        status = run.notice + status_line(trace, not run.done, paused=not run.playing and not run.done, stepped=True)
        run.notice = ""
        if run.done and run.score.total:
            status += f" · prediction score {run.score}"
        return {**out, **view.show(trace, status, live=not run.done), ui.choices: hidden_choices()}

    def arrived(self, data: dict | None) -> Outputs:
        """A stepped run finished: its trace is the one on show."""
        return {self.page.trace: data, self.page.arrived: "run"} if data else gr.skip()
