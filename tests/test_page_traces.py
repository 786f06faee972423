"""The trace the page holds (and offers for download) is the trace the engine made for the same request.

Every path that puts a trace on the page goes through the page's own handlers here: Generate (streamed through
the live replica), Step, Continue from here (at steps 0, 1 and a late one), Replay, an upload, a recorded
example, a lesson's "try it live" and the whole demo-mode walkthrough under the classroom caps. Each is compared
with the engine's own trace: step numbers, tokens, probabilities, pruning and the text.
"""

import json
from types import SimpleNamespace
from urllib.parse import unquote_plus

import pytest

import app as tempo_app
from components.controls import RESEARCH_FIELDS, examples, form_values, page_defaults, research_examples
from components.learn import LESSONS, RECORDINGS, recorded
from components.views import curve_view, heatmap_view, text_view, tree_view
from tempo_core import Trace, run
from tempo_core.limits import DEMO_CAPS, Limits
from tempo_core.steer import continue_from
from tempo_core.trace import rewind
from tiny import tiny_llama

FORM = dict(prompt="the cat sat", max_tokens=24, selection_threshold=0.05, use_retroactive_pruning=True,
            attention_threshold=0.05, max_parallel_tokens=4)


@pytest.fixture(scope="module")
def lm():
    return tiny_llama(seed=3)


def _page(lm, limits: Limits):
    explorer = tempo_app.Explorer(lm, limits)
    tempo_app.build_demo(explorer)  # lays out the form (its names, in order)
    yield explorer
    explorer.stepped.close_all()  # paused runs end on the model thread before it stops
    explorer.executor.shutdown(wait=True)
    explorer.research_executor.shutdown(wait=True)


@pytest.fixture(scope="module")
def page(lm):
    yield from _page(lm, Limits())


def request(name: str) -> SimpleNamespace:
    return SimpleNamespace(session_hash=name, headers={}, base_url="http://test/", query_params={})


def content(data: dict) -> dict:
    """What a trace says, without what differs from one run to the next (times)."""
    out = json.loads(json.dumps(data))
    out.pop("timings", None)
    out["stats"] = {k: v for k, v in out.get("stats", {}).items() if not k.endswith("_ms")}
    for st in out["steps"]:
        st.pop("time_ms", None)
    return out


def engine(trace: Trace) -> dict:
    return content(trace.to_plain())


def last(events):
    event = None
    for event in events:
        pass
    return event.trace


def finished(frames: list[tuple]) -> dict:
    """The page's trace state after a streamed run: the last frame that set it."""
    data = [f[5] for f in frames if "steps" in f[5]]  # (gr.skip() is a dict without steps)
    assert data, [f[4] for f in frames]
    return data[-1]


def test_generate_puts_the_engines_trace_on_the_page(page, lm):
    frames = list(page.run_stream(request("gen"), [], **FORM))
    data = finished(frames)
    reference = run(lm, page.settings(FORM))
    assert content(data) == engine(reference)
    assert any(c.pruned_at is not None for st in reference.steps for c in st.candidates)  # pruning was compared
    assert [st["step"] for st in data["steps"]] == list(range(len(reference.steps)))
    # the text the page shows last is the text of that trace, and the download is the same trace
    assert frames[-1][3] == text_view(reference)
    run_id = page.after_run(request("gen"), data)[2].split("download/")[1].split("/")[0]
    assert content(json.loads(page.store.get(run_id))) == engine(reference)


@pytest.mark.parametrize("where", ["first", "second", "late"])
def test_continue_from_here_puts_the_engines_continued_trace_on_the_page(page, lm, where):
    original = finished(list(page.run_stream(request("cont"), [], **FORM)))
    branching = [st["step"] for st in original["steps"] if len(st["candidates"]) > 1]
    step = {"first": 0, "second": 1, "late": branching[-1]}[where]
    index = len(original["steps"][step]["candidates"]) - 1
    frames = list(page.continue_here(request("cont"), [], original, f"{step}:{index}"))
    data = finished(frames)
    reference = last(continue_from(lm, Trace.from_dict(original), step, index))
    assert content(data) == engine(reference)
    assert [st["step"] for st in data["steps"]] == list(range(len(reference.steps)))
    assert [c["token_id"] for c in data["steps"][step]["candidates"]] == \
           [original["steps"][step]["candidates"][index]["token_id"]]
    # the steps before it are the original's, and the page's figures show that trace
    for st in range(step):
        assert [c["token_id"] for c in data["steps"][st]["candidates"]] == \
               [c["token_id"] for c in original["steps"][st]["candidates"]]
    assert frames[-1][3] == text_view(reference)


def test_step_mode_builds_the_engines_trace_a_step_at_a_time(page, lm):
    req = request("stepper")
    form = dict(FORM, max_tokens=10)
    out = None
    for n in range(1, 12):
        out = page.step(req, False, **form)
        if "steps" in out[5]:
            break
        assert out[3]["n"] == n  # the text shows every step made so far
    reference = run(lm, page.settings(form))
    assert content(out[5]) == engine(reference)


def test_replay_shows_the_trace_as_it_stood_at_the_step(page, lm):
    reference = run(lm, page.settings(FORM))
    data = reference.to_plain()
    for at in (0, 5, len(reference.steps) - 1):
        tree, heat, curve, text, status = tempo_app.replay_to(data, at)
        past = rewind(reference, at)
        assert text == text_view(past) and tree == tree_view(past) and heat == heatmap_view(past)
        assert curve == curve_view(past, at)
        assert status == f"Replay: at step {at} (steps 0–{len(reference.steps) - 1})"
    for bad in (float("nan"), -1, len(reference.steps), "x"):
        assert tempo_app.replay_to(data, bad)[4].startswith("**Error:** replay step: must be an integer in [0, ")


def test_an_uploaded_trace_is_shown_as_it_was_made(page, lm, tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    reference = run(lm, page.settings(FORM))
    f = tmp_path / "abc" / "trace.json"
    f.parent.mkdir()
    f.write_text(reference.to_json())
    out = page.load_trace([], str(f))
    assert content(out[5]) == engine(reference) and out[3] == text_view(reference)
    form = dict(zip(page.form_names, out[7:]))
    assert page.settings(form) == page.settings(FORM)  # the form now holds the trace's settings


@pytest.mark.parametrize("elsewhere", ["outside", "missing", "directory", "link"])
def test_the_upload_handler_reads_nothing_gradio_did_not_receive(page, lm, tmp_path, monkeypatch, elsewhere):
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(uploads))
    secret = tmp_path / "config.json"
    secret.write_text(run(lm, page.settings(dict(FORM, max_tokens=2))).to_json())  # a valid trace, even
    path = {"outside": secret, "missing": uploads / "nope.json", "directory": uploads}.get(elsewhere)
    if elsewhere == "link":
        path = uploads / "x.json"
        path.symlink_to(secret)
    for handler in (lambda p: page.load_trace([], p)[4], lambda p: page.load_trace([], {"path": p})[4]):
        assert handler(str(path)) == "**Error:** not a TEMPO trace: the upload could not be read"


def test_a_recorded_example_is_the_recorded_trace(page):
    for name in RECORDINGS:
        out = page.show_recorded([], name)
        assert content(out[5]) == engine(recorded(name)) and out[3] == text_view(recorded(name))


# --- demo mode: the whole walkthrough under the classroom caps ------------------------------------------------

@pytest.fixture(scope="module")
def classroom(lm):
    yield from _page(lm, Limits.from_env({"TEMPO_DEMO": "1"}))


def _generate_and_step(explorer, lm, form: dict, who: str) -> None:
    s = explorer.settings(form)  # within the classroom caps, or SettingsError
    assert s.max_parallel_tokens <= DEMO_CAPS["max_parallel_tokens"] and s.max_tokens <= DEMO_CAPS["max_tokens"]
    frames = list(explorer.run_stream(request(who), [], **form))
    assert content(finished(frames)) == engine(run(lm, s)), frames[-1][4]
    stepped = explorer.step(request(who + "-step"), False, **form)
    assert not stepped[4].startswith("**Error"), stepped[4]


def test_demo_mode_lessons_recorded_runs_and_examples_generate_and_step_within_the_caps(classroom, lm):
    names = list(classroom.form_names)
    start = dict(zip(names, form_values(page_defaults(classroom.limits), names)))
    for i, lesson in enumerate(LESSONS):
        values = classroom.try_lesson(i)[:-1]
        _generate_and_step(classroom, lm, dict(zip(names, values)), f"lesson-{i}")
    for name in RECORDINGS:
        values = classroom.show_recorded([], name)[7:]
        _generate_and_step(classroom, lm, dict(zip(names, values)), f"recorded-{name}")
    for row in examples(classroom.limits):
        form = dict(start, **dict(zip(["prompt", "selection_threshold", "max_tokens", "mode"], row)))
        _generate_and_step(classroom, lm, form, f"example-{row[0][:8]}")
    for row in research_examples(classroom.limits):
        settings = classroom.settings(dict(start, **dict(zip(RESEARCH_FIELDS, row))))
        assert settings.max_tokens <= DEMO_CAPS["max_tokens"]


def test_a_demo_cap_message_names_the_setting_and_says_it_is_a_classroom_limit(classroom):
    names = list(classroom.form_names)
    form = dict(zip(names, form_values(page_defaults(classroom.limits), names)), max_parallel_tokens=8)
    out = list(classroom.run_stream(request("too-big"), [], **form))
    assert out[-1][4] == ("**Error:** max_parallel_tokens: must be an integer in [1, 6] on this classroom server "
                          "(a demo limit, TEMPO_DEMO), got 8")


# --- share links ------------------------------------------------------------------------------------------------

def test_a_share_link_gives_back_every_setting_on_a_fresh_page(page):
    names = list(page.form_names)
    fresh = dict(zip(names, form_values(page_defaults(page.limits), names)))
    presets = [dict(zip(RESEARCH_FIELDS, row)) for row in research_examples(page.limits)]
    for changed in [*presets, {"use_retroactive_pruning": False, "attention_threshold": 0.01},
                    {"max_tokens": 100, "mode": "MCTS"}, {"temperature": 0.5, "seed": 7, "num_layers_to_use": 2}]:
        s = page.settings({**fresh, **changed})
        link = tempo_app.share_query(s, page_defaults(page.limits))
        query = dict(pair.split("=", 1) for pair in link[1:].split("&")) if link != "?" else {}
        opened = request("link")
        opened.query_params = {k: unquote_plus(v) for k, v in query.items()}
        values = page.fill_from_link(opened, **fresh)[:-1]
        form = {n: fresh[n] if isinstance(v, dict) else v for n, v in zip(names, values)}  # a skip keeps the form
        assert page.settings(form) == s, changed


def test_what_if_states_each_rows_threshold_as_the_engine_computed_it(page, lm):
    from tempo_core.steer import lower_threshold_preview
    reference = run(lm, page.settings(dict(FORM, max_parallel_tokens=2, selection_threshold=0.02)))
    data = reference.to_plain()
    statuses = set()
    for st in reference.steps:
        table = tempo_app.what_if_lower(data, f"{st.step}:0")
        lines = [line for line in table.splitlines() if line.startswith("| `")]
        rows = lower_threshold_preview(reference, st.step)
        assert len(lines) == len(rows)
        for line, r in zip(lines, rows):
            statuses.add(r["status"])
            assert f"| {r['prob']:.4f} |" in line
            if r["status"] == "joins":
                assert f"joins at a threshold ≤ {r['joins_at']:.4f}" in line
            elif r["status"] == "capped":
                assert "the set was full (max_parallel_tokens = 2)" in line and "joins" not in line
            if r["needs_cap"]:
                assert f"max_parallel_tokens ≥ {r['needs_cap']}" in line
    assert {"kept", "joins", "capped"} <= statuses


def test_a_token_clicked_in_a_lesson_figure_shows_its_details_from_the_lessons_run():
    from components.inspect import node_details
    for i, lesson in enumerate(LESSONS):
        st = lesson.trace.steps[1]
        node = f"1:{len(st.candidates) - 1}"
        assert tempo_app.lesson_node(i, SimpleNamespace(_data={"node": node})) == node_details(lesson.trace, node)
        shown = tempo_app.lesson_node(i, SimpleNamespace(_data={"node": node}))
        assert f"token id {st.candidates[-1].token_id}" in shown
        assert isinstance(tempo_app.lesson_node(i, SimpleNamespace(_data={"node": "99:0"})), dict)  # ignored
