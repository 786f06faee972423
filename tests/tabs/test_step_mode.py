"""Step mode on the page: /step advances one step per call, demo mode opens on Learn, Play steps to the end."""

import gradio as gr
import pytest
from tiny import tiny_llama

from tempo_core import run


@pytest.fixture(scope="module")
def lm():
    return tiny_llama(seed=0)


def test_step_api_advances_one_step_per_call_and_continue_from_forces_a_node(lm, live_server):
    from gradio_client import Client
    url, fastapi_app = live_server(lm)
    client = Client(url + "/", verbose=False)
    form = dict(prompt="once upon a time", max_tokens=6, selection_threshold=0.08, use_retroactive_pruning=False)
    for n in (1, 2, 3):
        out = client.predict(predict=False, api_name="/step", **form)
        assert out[4].startswith(f"Paused (press Step or Play to go on) · at step {n - 1} ({n} step"), out[4]
    assert len(fastapi_app.state.shared.stepped) == 1  # one paused run for this session
    # with predict on, the new step is hidden: choices offered, figures one step behind
    out = client.predict(predict=True, api_name="/step", **form)
    assert "Step 3: which tokens pass" in out[4]
    assert out[3]["n"] == 3  # the text (like every figure) still shows 3 steps of the 4 made
    # continue from here, through the page's own event, on the session's finished run
    *_, done = client.submit(api_name="/generate", **form)
    step = next(i for i, piece in enumerate(done[3]["steps"]) if 'class="set"' in piece)
    job = client.submit(f"{step}:1", api_name="/continue_from")
    *_, final = [*job] or [job.result()]
    assert final[4].startswith("Done"), final[4]
    forced = final[3]["steps"][step]  # the text: that step holds the original's second candidate alone
    assert 'class="set"' not in forced
    second = done[3]["steps"][step].split('data-node="%d:1">' % step)[1].split("</span>")[0]
    assert forced.split('data-node="%d:0">' % step)[1].split("</span>")[0] == second
    assert final[3]["steps"][:step] == done[3]["steps"][:step]  # the earlier steps are the original's


def test_demo_mode_opens_on_the_learn_tab_with_lower_caps_and_expert_settings_hidden(lm, monkeypatch, built_page):
    from tempo_core.serving.limits import Limits
    monkeypatch.setenv("TEMPO_DEMO", "1")
    limits = Limits.from_env()
    assert limits.demo and limits.max_tokens == 48 and limits.max_parallel_tokens == 6
    monkeypatch.setenv("TEMPO_APP_MAX_TOKENS", "30")  # an explicit cap still wins
    assert Limits.from_env().max_tokens == 30
    demo = built_page(lm, limits).blocks
    components = {c.get("props", {}).get("elem_id"): c for c in demo.config["components"]}
    assert components["expert-settings"]["props"]["visible"] is False
    tabs = [c for c in demo.config["components"] if c["type"] == "tabs"]
    assert tabs[0]["props"]["selected"] == "learn"
    assert components["predict"]["props"]["value"] is True  # predict-then-reveal on for a class
    normal = built_page(lm).blocks
    ncomp = {c.get("props", {}).get("elem_id"): c for c in normal.config["components"]}
    assert ncomp["expert-settings"]["props"]["visible"] is True


def test_play_steps_to_the_end_and_pause_halts_it(lm, built_page):
    """Play yields one frame per step until the run ends (the trace Generate makes); Pause ends it early."""
    import threading
    from types import SimpleNamespace

    from components.server.sessions import session_key
    site = built_page(lm)
    stepper, status = site.explore.step_mode, site.page.view.status
    form = dict(prompt="once upon a time", max_tokens=8, selection_threshold=0.08, use_retroactive_pruning=False)
    request = SimpleNamespace(session_hash="play-test")
    frames = list(stepper.play(request, 5.0, **form))
    assert "play_speed: must be a number in [0.5, 5]" in next(stepper.play(request, float("nan"), **form))[status]
    finished = frames[-1][stepper.finished]
    whole = run(lm, site.page.shared.settings(form))
    assert [[c["token_id"] for c in st["candidates"]] for st in finished["steps"]] == \
           [[c.token_id for c in st.candidates] for st in whole.steps]
    assert len(frames) >= len(whole.steps)  # a frame per step (and the end)
    # Pause from another thread while Play runs slowly: it stops before the run ends
    other = SimpleNamespace(session_hash="pause-test")
    slow = stepper.play(other, 2.0, **dict(form, max_tokens=40))
    next(slow)
    threading.Timer(0.2, stepper.pause, args=(other,)).start()
    rest = list(slow)
    paused = site.page.shared.stepped.get(session_key(other))
    assert paused is not None and not paused.done and not paused.playing and len(rest) <= 3


def test_a_press_after_the_form_changed_starts_a_new_run_from_the_form_and_says_so(lm, built_page):
    """A paused run belongs to the form it was made from: Step with other settings (an Examples row, a lesson's
    Try it live) ends it and steps a new run made from what the form shows, and the status says why."""
    from types import SimpleNamespace

    from components.server.sessions import session_key
    site = built_page(lm)
    stepper, status = site.explore.step_mode, site.page.view.status
    request = SimpleNamespace(session_hash="form-changed")
    first = dict(prompt="once upon a time", max_tokens=8, selection_threshold=1.0, use_retroactive_pruning=False)
    for _ in range(3):
        out = stepper.step(request, False, **first)
    assert "at step 2" in out[status] and "form changed" not in out[status]
    second = dict(first, prompt="the cat sat", selection_threshold=0.08)
    out = stepper.step(request, False, **second)
    assert out[status].startswith("The form changed: a new stepped run") and "at step 0" in out[status]
    run_now = site.page.shared.stepped.get(session_key(request))
    assert run_now.trace.prompt == "the cat sat" and run_now.trace.steps[0].selection_threshold == 0.08
    made = run(lm, site.page.shared.settings(second))
    assert [c.token_id for c in run_now.trace.steps[0].candidates] == [c.token_id for c in made.steps[0].candidates]
    out = stepper.step(request, False, **second)  # the same form again: the same run goes on, nothing to say
    assert "at step 1" in out[status] and "form changed" not in out[status]


def test_stop_ends_a_stepped_run_and_its_rate_counts_only_the_steps(lm, built_page):
    """Stop in step mode says where the run stopped and the next Step starts a new one (it used to leave
    "Generating" on screen and go on); the status's steps/s is the steps' own time, not the pauses between."""
    import time
    from types import SimpleNamespace

    from components.server.sessions import session_key
    site = built_page(lm)
    stepper, status = site.explore.step_mode, site.page.view.status
    request = SimpleNamespace(session_hash="stop-steps")
    form = dict(prompt="once upon a time", max_tokens=8, selection_threshold=0.08, use_retroactive_pruning=False)
    for _ in range(3):
        out = stepper.step(request, False, **form)
        time.sleep(0.3)  # a student reading between presses
    trace = site.page.shared.stepped.get(session_key(request)).trace
    per_step = 1e3 / (sum(st.time_ms for st in trace.steps) / len(trace.steps))
    assert f"{per_step:.1f} steps/s" in out[status]
    assert per_step > len(trace.steps) / (trace.timings["total_ms"] / 1e3)  # the pauses would have lowered it
    stopped = stepper.stopped(request)
    assert stopped[status].startswith("Stopped at step 2 (3 steps)")
    assert site.page.shared.stepped.get(session_key(request)) is None
    assert "at step 0" in stepper.step(request, False, **form)[status]  # a new run
    assert stepper.stopped(SimpleNamespace(session_hash="never-stepped")) == gr.skip()
