"""The trace the page holds (and offers for download) is the trace the engine made for the same request.

Every path that puts a trace on the page goes through the page's own handlers here: Generate (streamed through
the live replica), Step, Continue from here (at steps 0, 1 and a late one), Replay, an upload, a recorded
example, a lesson's "try it live" and the whole demo-mode walkthrough under the classroom caps. Each is compared
with the engine's own trace: step numbers, tokens, probabilities, pruning and the text.
"""

import json
from types import SimpleNamespace
from urllib.parse import unquote_plus

import gradio as gr
import pytest

import app as tempo_app
from components.figures.curve import curve_view
from components.figures.heatmap import heatmap_view
from components.figures.lessons import LESSONS
from components.figures.recordings import RECORDINGS, recorded
from components.figures.text import text_view
from components.figures.tree import tree_view
from components.server.forms import (RESEARCH_FIELDS, examples, form_values, page_defaults, research_examples,
                                     share_query)
from components.server.shared import Shared
from components.tabs.learn import lesson_node
from tempo_core import Trace, run
from tempo_core.serving.limits import DEMO_CAPS, Limits
from tempo_core.steer import continue_from
from tempo_core.trace import rewind
from tiny import tiny_llama

FORM = dict(prompt="the cat sat", max_tokens=24, selection_threshold=0.05, use_retroactive_pruning=True,
            attention_threshold=0.05, max_parallel_tokens=4)


@pytest.fixture(scope="module")
def lm():
    return tiny_llama(seed=3)


def _page(lm, limits: Limits):
    shared = Shared(lm, limits)
    yield tempo_app.build_demo(shared)  # the page's tabs, their handlers called here as Gradio would
    shared.close()  # paused runs end on the model thread before it stops


@pytest.fixture(scope="module")
def site(lm):
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


# How the server fed a run, not what the run is: a prompt prefix copied from another run's cache, a prompt in
# chunks (tempo_core/serving/, runtime/prefix.py). The trace's tokens, sets and pruning are the same; its numbers
# agree to float rounding (the same rows computed in a forward of another shape).
SERVING_STATS = {"prompt_rows_reused", "tokens_processed", "forward_passes"}


def same(page: dict, reference: Trace, tol: float = 1e-5) -> bool:
    """The page's copy of a trace says what the engine's `reference` says: every field, numbers to `tol`."""
    a, b = content(page), engine(reference)
    for d in (a, b):
        d["stats"] = {k: v for k, v in d["stats"].items() if k not in SERVING_STATS}
    return _close(a, b, tol)


def _close(a, b, tol: float) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], tol) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y, tol) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and abs(a - b) <= tol * max(1.0, abs(b))
    return a == b


def last(events):
    event = None
    for event in events:
        pass
    return event.trace


def finished(site, frames: list[dict]) -> dict:
    """The page's trace state after a streamed run: the last frame that set it."""
    data = [f[site.page.trace] for f in frames if site.page.trace in f]
    assert data, [f.get(site.page.view.status) for f in frames]
    return data[-1]


def names(site) -> list[str]:
    """The form's settings, in order."""
    return list(site.page.form)


def form_of(site, out: dict) -> dict:
    """The form's values after a handler filled it."""
    return {name: out[component] for name, component in site.page.form.items()}


def test_generate_puts_the_engines_trace_on_the_page(site, lm):
    frames = list(site.explore.run_stream(request("gen"), **FORM))
    data = finished(site, frames)
    reference = run(lm, site.page.shared.settings(FORM))
    assert same(data, reference)
    assert any(c.pruned_at is not None for st in reference.steps for c in st.candidates)  # pruning was compared
    assert [st["step"] for st in data["steps"]] == list(range(len(reference.steps)))
    # the text the page shows last is the text of that trace, and the download is the same trace
    assert frames[-1][site.page.view.text] == text_view(reference)
    replay = site.explore.replay
    run_id = replay.after_run(request("gen"), data)[replay.downloads].split("download/")[1].split("/")[0]
    assert same(json.loads(site.page.shared.store.get(run_id)), reference)


@pytest.mark.parametrize("where", ["first", "second", "late"])
def test_continue_from_here_puts_the_engines_continued_trace_on_the_page(site, lm, where):
    original = finished(site, list(site.explore.run_stream(request("cont"), **FORM)))
    branching = [st["step"] for st in original["steps"] if len(st["candidates"]) > 1]
    step = {"first": 0, "second": 1, "late": branching[-1]}[where]
    index = len(original["steps"][step]["candidates"]) - 1
    frames = list(site.explore.inspector.continue_here(request("cont"), original, f"{step}:{index}"))
    data = finished(site, frames)
    reference = last(continue_from(lm, Trace.from_dict(original), step, index))
    assert same(data, reference)
    assert [st["step"] for st in data["steps"]] == list(range(len(reference.steps)))
    assert [c["token_id"] for c in data["steps"][step]["candidates"]] == \
           [original["steps"][step]["candidates"][index]["token_id"]]
    # the steps before it are the original's, and the page's figures show that trace
    for st in range(step):
        assert [c["token_id"] for c in data["steps"][st]["candidates"]] == \
               [c["token_id"] for c in original["steps"][st]["candidates"]]
    assert frames[-1][site.page.view.text] == text_view(reference)



def test_a_rerun_at_a_stated_threshold_puts_the_engines_rerun_on_the_page(site, lm):
    """The what-if table's promise, run from the page: the earlier steps as they were, the step on at the stated
    threshold; the page holds the trace the engine makes for it, and the promised token is in the step's set."""
    from tempo_core.steer import lower_threshold_preview, rerun_at
    original = finished(site, list(site.explore.run_stream(request("rerun"), **dict(FORM, max_tokens=10))))
    trace = Trace.from_dict(original)
    step, row = next((st.step, r) for st in trace.steps[1:] for r in lower_threshold_preview(trace, st.step)
                     if r["status"] == "joins" and not r["needs_cap"])
    frames = list(site.explore.inspector.rerun_here(request("rerun"), original, f"{step}:0", row["joins_at"]))
    data = finished(site, frames)
    assert same(data, last(rerun_at(lm, trace, step, row["joins_at"])))
    assert row["text"] in [c["text"] for c in data["steps"][step]["candidates"]]
    status = site.page.view.status
    bad = list(site.explore.inspector.rerun_here(request("rerun"), original, f"{step}:0", 1.5))
    assert bad[-1][status].startswith("**Error:** selection_threshold: must be")
    unpicked = list(site.explore.inspector.rerun_here(request("rerun"), original, "", 0.1))
    assert "pick a candidate" in unpicked[-1][status]

def test_step_mode_builds_the_engines_trace_a_step_at_a_time(site, lm):
    req = request("stepper")
    form = dict(FORM, max_tokens=10)
    out = None
    stepper = site.explore.step_mode
    for n in range(1, 12):
        out = stepper.step(req, False, **form)
        if stepper.finished in out:
            break
        assert out[site.page.view.text]["n"] == n  # the text shows every step made so far
    reference = run(lm, site.page.shared.settings(form))
    assert same(out[stepper.finished], reference)


def test_replay_shows_the_trace_as_it_stood_at_the_step(site, lm):
    reference = run(lm, site.page.shared.settings({**FORM, "commitment": True}))
    data = reference.to_plain()
    view = site.page.view
    for at in (0, 5, len(reference.steps) - 1):
        out = site.explore.replay.replay_to(data, at)
        tree, heat, curve, text, status, strip = (out[c] for c in view.outputs)
        past = rewind(reference, at)
        assert text == text_view(past) and tree == tree_view(past) and heat == heatmap_view(past)
        assert curve == curve_view(past, at)
        # the strip shows the engine's lens numbers of the steps up to `at`, none after
        assert strip["data"][0]["x"] == list(range(at + 1))
        assert strip["data"][0]["z"][-1] == [x["p_final"][-1] for x in reference.commitment["steps"][:at + 1]]
        assert status == f"Replay: at step {at} (steps 0–{len(reference.steps) - 1})"
    for bad in (float("nan"), -1, len(reference.steps), "x"):
        assert site.explore.replay.replay_to(data, bad)[view.status].startswith(
            "**Error:** replay step: must be an integer in [0, ")


def test_an_uploaded_trace_is_shown_as_it_was_made(site, lm, tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    settings = site.page.shared.settings
    reference = run(lm, settings(FORM))
    f = tmp_path / "abc" / "trace.json"
    f.parent.mkdir()
    f.write_text(reference.to_json())
    out = site.explore.replay.load_trace(str(f))
    assert same(out[site.page.trace], reference) and out[site.page.view.text] == text_view(reference)
    assert settings(form_of(site, out)) == settings(FORM)  # the form now holds the trace's settings


@pytest.mark.parametrize("elsewhere", ["outside", "missing", "directory", "link"])
def test_the_upload_handler_reads_nothing_gradio_did_not_receive(site, lm, tmp_path, monkeypatch, elsewhere):
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(uploads))
    secret = tmp_path / "config.json"
    secret.write_text(run(lm, site.page.shared.settings(dict(FORM, max_tokens=2))).to_json())  # a valid trace, even
    path = {"outside": secret, "missing": uploads / "nope.json", "directory": uploads}.get(elsewhere)
    if elsewhere == "link":
        path = uploads / "x.json"
        path.symlink_to(secret)
    load, status = site.explore.replay.load_trace, site.page.view.status
    for handler in (lambda p: load(p)[status], lambda p: load({"path": p})[status]):
        assert handler(str(path)) == "**Error:** not a TEMPO trace: the upload could not be read"


def test_a_recorded_example_is_the_recorded_trace(site):
    for name in RECORDINGS:
        out = site.explore.show_recorded(name)
        assert same(out[site.page.trace], recorded(name))
        assert out[site.page.view.text] == text_view(recorded(name))



@pytest.mark.parametrize("research", [False, True], ids=["examples", "research presets"])
def test_an_example_row_sets_every_setting_it_does_not_name_back_to_the_pages_defaults(site, research):
    """After the "Threshold curve" recording filled the form (a Bezier schedule hidden behind Advanced), a click on
    an Examples row fills the whole form: the row's values, and the page's defaults for everything else. The
    listener is on each table's click, with the whole form as its outputs."""
    curve = form_of(site, site.explore.show_recorded("curve"))
    assert curve["dynamic_threshold"] is True and curve["final_threshold"] == 0.3
    rows, fields = (research_examples(site.page.shared.limits), RESEARCH_FIELDS) if research else \
        (examples(site.page.shared.limits), ["prompt", "selection_threshold", "max_tokens", "mode"])
    defaults = dict(zip(names(site), form_values(page_defaults(site.page.shared.limits), names(site))))
    for index, row in enumerate(rows):
        filled = form_of(site, site.explore.fill_example((index, row), research))
        assert filled == {**defaults, **dict(zip(fields, row))}, index
    assert site.explore.fill_example((len(rows), None), research) == gr.skip()  # the browser's index is checked
    tables = [f for f in site.blocks.fns.values() if getattr(f.fn, "__name__", "") == "<lambda>"
              and {c._id for c in site.page.form.values()} <= {o._id for o in f.outputs}
              and f.inputs and type(f.inputs[0]).__name__ == "Dataset"]
    assert len(tables) == 2  # the Examples and the research presets

# --- demo mode: the whole walkthrough under the classroom caps ------------------------------------------------

@pytest.fixture(scope="module")
def classroom(lm):
    yield from _page(lm, Limits.from_env({"TEMPO_DEMO": "1"}))


def _generate_and_step(site, lm, form: dict, who: str) -> None:
    s = site.page.shared.settings(form)  # within the classroom caps, or SettingsError
    assert s.max_parallel_tokens <= DEMO_CAPS["max_parallel_tokens"] and s.max_tokens <= DEMO_CAPS["max_tokens"]
    frames = list(site.explore.run_stream(request(who), **form))
    assert same(finished(site, frames), run(lm, s)), frames[-1].get(site.page.view.status)
    stepped = site.explore.step_mode.step(request(who + "-step"), False, **form)[site.page.view.status]
    assert not stepped.startswith("**Error"), stepped


def test_demo_mode_lessons_recorded_runs_and_examples_generate_and_step_within_the_caps(classroom, lm):
    limits = classroom.page.shared.limits
    start = dict(zip(names(classroom), form_values(page_defaults(limits), names(classroom))))
    for i, lesson in enumerate(LESSONS):
        out = classroom.learn.try_lesson(i)
        assert out[classroom.page.top].selected == "explore"
        _generate_and_step(classroom, lm, form_of(classroom, out), f"lesson-{i}")
    for name in RECORDINGS:
        out = classroom.explore.show_recorded(name)
        _generate_and_step(classroom, lm, form_of(classroom, out), f"recorded-{name}")
    for row in examples(limits):
        form = dict(start, **dict(zip(["prompt", "selection_threshold", "max_tokens", "mode"], row)))
        _generate_and_step(classroom, lm, form, f"example-{row[0][:8]}")
    for row in research_examples(limits):
        settings = classroom.page.shared.settings(dict(start, **dict(zip(RESEARCH_FIELDS, row))))
        assert settings.max_tokens <= DEMO_CAPS["max_tokens"]


def test_a_demo_cap_message_names_the_setting_and_says_it_is_a_classroom_limit(classroom):
    form = dict(zip(names(classroom), form_values(page_defaults(classroom.page.shared.limits), names(classroom))),
                max_parallel_tokens=8)
    out = list(classroom.explore.run_stream(request("too-big"), **form))
    assert out[-1][classroom.page.view.status] == ("**Error:** max_parallel_tokens: must be an integer in [1, 6] on this classroom server "
                          "(a demo limit, TEMPO_DEMO), got 8")


# --- share links ------------------------------------------------------------------------------------------------

def test_a_share_link_gives_back_every_setting_on_a_fresh_page(site):
    limits, settings = site.page.shared.limits, site.page.shared.settings
    fresh = dict(zip(names(site), form_values(page_defaults(limits), names(site))))
    presets = [dict(zip(RESEARCH_FIELDS, row)) for row in research_examples(limits)]
    for changed in [*presets, {"use_retroactive_pruning": False, "attention_threshold": 0.01},
                    {"max_tokens": 100, "mode": "MCTS"}, {"temperature": 0.5, "seed": 7, "num_layers_to_use": 2}]:
        s = settings({**fresh, **changed})
        link = share_query(s, page_defaults(limits))
        query = dict(pair.split("=", 1) for pair in link[1:].split("&")) if link != "?" else {}
        opened = request("link")
        opened.query_params = {k: unquote_plus(v) for k, v in query.items()}
        out = site.explore.replay.fill_from_link(opened, **fresh)
        form = {n: out.get(c, fresh[n]) for n, c in site.page.form.items()}  # a field left out keeps its value
        assert settings(form) == s, changed


def test_what_if_states_each_rows_threshold_as_the_engine_computed_it(site, lm):
    from tempo_core.steer import lower_threshold_preview
    reference = run(lm, site.page.shared.settings(dict(FORM, max_parallel_tokens=2, selection_threshold=0.02)))
    data = reference.to_plain()
    statuses = set()
    for st in reference.steps:
        table = site.explore.inspector.what_if_lower(data, f"{st.step}:0")
        lines = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| token")]
        rows = lower_threshold_preview(reference, st.step)
        assert len(lines) == len(rows)
        for line, r in zip(lines, rows):
            statuses.add(r["status"])
            assert f"| {r['prob']:.4f} |" in line if r["prob"] is not None else "| — |" in line
            if r["status"] == "joins":
                assert f"joins at a threshold ≤ {r['joins_at']:.4f}" in line
            elif r["status"] == "capped":
                assert "the set was full (max_parallel_tokens = 2); a lower threshold does not add it" in line
                assert "joins at a threshold" not in line
            if r["needs_cap"]:
                assert f"it joins once max_parallel_tokens is {r['needs_cap']} or more" in line
            assert "&#" not in line and "&amp;" not in line  # tokens shown as they are, no raw entities
    assert {"kept", "joins", "capped"} <= statuses


def test_a_token_clicked_in_a_lesson_figure_shows_its_details_from_the_lessons_run():
    from components.figures.inspect import node_details
    for i, lesson in enumerate(LESSONS):
        st = lesson.trace.steps[1]
        node = f"1:{len(st.candidates) - 1}"
        assert lesson_node(i, SimpleNamespace(_data={"node": node})) == node_details(lesson.trace, node)
        shown = lesson_node(i, SimpleNamespace(_data={"node": node}))
        assert f"token id {st.candidates[-1].token_id}" in shown
        assert isinstance(lesson_node(i, SimpleNamespace(_data={"node": "99:0"})), dict)  # ignored
