"""Step mode and predict-then-reveal."""

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from components.classroom import (SteppedRuns, prediction_choices, reflection_question, reveal_markdown,
                                  score_prediction)
from tempo_core import build_settings, generate, run
from tiny import tiny_llama


@pytest.fixture(scope="module")
def lm():
    return tiny_llama(seed=0)


@pytest.fixture()
def runs():
    pool = ThreadPoolExecutor(1)
    yield SteppedRuns(pool, max_runs=3, idle_s=60)
    pool.shutdown()


def settings(**kw):
    return build_settings({"prompt": "once upon a time", "max_tokens": 10, "selection_threshold": 0.08,
                           "use_retroactive_pruning": True, "attention_threshold": 0.05, **kw})


def test_stepping_one_step_at_a_time_makes_the_trace_generate_makes(lm, runs):
    s = settings()
    stepped = runs.start("a", lambda: generate(lm, s))
    seen = []
    while not stepped.done:
        trace = runs.advance(stepped)
        seen.append(len(trace.steps))
    whole = run(lm, s)
    assert seen[:len(whole.steps)] == list(range(1, len(whole.steps) + 1))  # one step per press
    assert [[(c.token_id, c.pruned_at) for c in st.candidates] for st in trace.steps] == \
           [[(c.token_id, c.pruned_at) for c in st.candidates] for st in whole.steps]
    assert [c.prob for st in trace.steps for c in st.candidates] == \
           pytest.approx([c.prob for st in whole.steps for c in st.candidates], abs=1e-6)
    assert trace.stop_reason == whole.stop_reason
    assert runs.advance(stepped) is trace  # past the end nothing more happens


def test_runs_are_per_session_bounded_and_freed_when_idle(lm, runs):
    s = settings(max_tokens=4)
    for key in "abcd":
        runs.start(key, lambda: generate(lm, s))
    assert len(runs) == 3 and runs.get("a") is None  # the least recently used went first
    first = runs.get("b")
    runs.advance(first)
    assert runs.start("b", lambda: generate(lm, s)) is not first  # a new run replaces the session's old one
    runs.idle_s = 0.05
    time.sleep(0.1)
    assert len(runs) == 0 and runs.get("c") is None
    runs.drop("nobody")  # no error


def test_prediction_choices_hide_the_order_and_scoring_marks_each_choice(lm):
    trace = run(lm, settings(max_tokens=6))
    st = next(st for st in trace.steps if len(st.candidates) > 1)
    choices = prediction_choices(st)
    assert choices == sorted(choices)
    assert len(choices) == len(st.candidates) + len(st.alternatives) == len(set(choices))
    kept = [c for c in choices if c in {m[0] for m in score_prediction(st, []).marks if m[2]}]
    perfect = score_prediction(st, kept)
    assert perfect.right == perfect.total == len(choices)
    nothing = score_prediction(st, [])
    assert nothing.right == len(st.alternatives)  # every near miss correctly left out, every candidate missed
    everything = score_prediction(st, choices)
    assert everything.right == len(st.candidates)
    probs = [m[1] for m in everything.marks]
    assert probs == sorted(probs, reverse=True)


def test_reveal_and_reflection_say_what_happened(lm):
    from components.classroom import Score
    trace = run(lm, settings(max_tokens=6))
    i = next(i for i, st in enumerate(trace.steps) if len(st.candidates) > 1)
    st = trace.steps[i]
    text = reveal_markdown(st, score_prediction(st, []), Score(3, 8))
    assert f"Step {st.step}" in text and "3/8" in text and "not kept" in text
    question = reflection_question(trace, i)
    assert "share position" in question or "pruned" in question


# --- through the server, as the page and gradio_client call it --------------------------------------------------

def test_step_api_advances_one_step_per_call_and_continue_from_forces_a_node(lm):
    from gradio_client import Client

    from test_serving import serve
    with serve(lm) as (url, fastapi_app):
        client = Client(url + "/", verbose=False)
        form = dict(prompt="once upon a time", max_tokens=6, selection_threshold=0.08, use_retroactive_pruning=False)
        for n in (1, 2, 3):
            out = client.predict(predict=False, api_name="/step", **form)
            assert out[4].startswith(f"Paused (press Step or Play to go on) · at step {n - 1} ({n} step"), out[4]
        explorer = fastapi_app.state.explorer
        assert len(explorer.stepped) == 1  # one paused run for this session
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


def test_demo_mode_opens_on_the_learn_tab_with_lower_caps_and_expert_settings_hidden(lm, monkeypatch):
    import app as tempo_app
    from tempo_core.limits import Limits
    monkeypatch.setenv("TEMPO_DEMO", "1")
    limits = Limits.from_env()
    assert limits.demo and limits.max_tokens == 48 and limits.max_parallel_tokens == 6
    monkeypatch.setenv("TEMPO_APP_MAX_TOKENS", "30")  # an explicit cap still wins
    assert Limits.from_env().max_tokens == 30
    demo = tempo_app.build_demo(tempo_app.Explorer(lm, limits))
    components = {c.get("props", {}).get("elem_id"): c for c in demo.config["components"]}
    assert components["expert-settings"]["props"]["visible"] is False
    tabs = [c for c in demo.config["components"] if c["type"] == "tabs"]
    assert tabs[0]["props"]["selected"] == "learn"
    assert components["predict"]["props"]["value"] is True  # predict-then-reveal on for a class
    normal = tempo_app.build_demo(tempo_app.Explorer(lm, Limits()))
    ncomp = {c.get("props", {}).get("elem_id"): c for c in normal.config["components"]}
    assert ncomp["expert-settings"]["props"]["visible"] is True


def test_play_steps_to_the_end_and_pause_halts_it(lm):
    """Play yields one frame per step until the run ends (the trace Generate makes); Pause ends it early."""
    import threading
    from types import SimpleNamespace

    import app as tempo_app
    from tempo_core.limits import Limits
    explorer = tempo_app.Explorer(lm, Limits())
    form = dict(prompt="once upon a time", max_tokens=8, selection_threshold=0.08, use_retroactive_pruning=False)
    request = SimpleNamespace(session_hash="play-test")
    frames = list(explorer.play(request, 5.0, **form))
    assert "play_speed: must be a number in [0.5, 5]" in next(explorer.play(request, float("nan"), **form))[4]
    finished = frames[-1][5]
    whole = run(lm, explorer.settings(form))
    assert [[c["token_id"] for c in st["candidates"]] for st in finished["steps"]] == \
           [[c.token_id for c in st.candidates] for st in whole.steps]
    assert len(frames) >= len(whole.steps)  # a frame per step (and the end)
    # Pause from another thread while Play runs slowly: it stops before the run ends
    other = SimpleNamespace(session_hash="pause-test")
    slow = explorer.play(other, 2.0, **dict(form, max_tokens=40))
    next(slow)
    threading.Timer(0.2, explorer.pause, args=(other,)).start()
    rest = list(slow)
    paused = explorer.stepped.get(tempo_app.session_key(other))
    assert paused is not None and not paused.done and not paused.playing and len(rest) <= 3
