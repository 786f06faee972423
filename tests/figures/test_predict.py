"""Predict then reveal: the choices give nothing away, the scoring marks each choice, the reveal says what happened."""

import pytest

from components.figures.predict import prediction_choices, reflection_question, reveal_markdown, score_prediction
from tempo_core import build_settings, run
from tiny import tiny_llama


@pytest.fixture(scope="module")
def lm():
    return tiny_llama(seed=0)


def settings(**kw):
    return build_settings({"prompt": "once upon a time", "max_tokens": 10, "selection_threshold": 0.08,
                           "use_retroactive_pruning": True, "attention_threshold": 0.05, **kw})


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
    from components.figures.predict import Score
    trace = run(lm, settings(max_tokens=6))
    i = next(i for i, st in enumerate(trace.steps) if len(st.candidates) > 1)
    st = trace.steps[i]
    text = reveal_markdown(st, score_prediction(st, []), Score(3, 8))
    assert f"Step {st.step}" in text and "3/8" in text and "not kept" in text
    question = reflection_question(trace, i)
    assert "share position" in question or "pruned" in question


def test_a_token_kept_below_the_threshold_is_called_the_fallback_and_greedy_asks_for_its_pick(lm):
    """At threshold 1 nothing passes: the most probable token is kept alone, and the reveal says so instead of
    calling it a token at or above the threshold; a greedy run asks which token greedy decoding picks."""
    from components.figures.predict import Score, prediction_question
    trace = run(lm, settings(selection_threshold=1.0, max_tokens=3))
    st = trace.steps[0]
    top = st.candidates[0]
    assert top.prob < 1.0 and len(st.candidates) == 1
    text = reveal_markdown(st, score_prediction(st, []), Score())
    line = next(line for line in text.splitlines() if f"p = {top.prob:.3f}" in line)
    assert "nothing passed the threshold, so the most probable token is kept" in line
    assert "which tokens pass the selection threshold 1?" in prediction_question("tempo", st)
    greedy = run(lm, settings(mode="default", max_tokens=2))
    assert "which token will greedy decoding pick?" in prediction_question("default", greedy.steps[0])
    assert "threshold" not in prediction_question("default", greedy.steps[0])
