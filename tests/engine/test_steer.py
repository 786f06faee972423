"""Steering: a forced branch against a run from scratch and against plain transformers greedy decoding."""

import pytest
import torch
from tiny import tiny_llama

from tempo_core import build_settings, run
from tempo_core.config import SettingsError
from tempo_core.engine import tempo_events
from tempo_core.steer import JOIN_MARGIN, continue_from, joins_at, lower_threshold_preview, rerun_at

pytestmark = pytest.mark.floor  # also run on the oldest transformers allowed (make test-floor)

TOL = 1e-5


@pytest.fixture(scope="module")
def lm():
    return tiny_llama(seed=0)


def last(events):
    event = None
    for event in events:
        pass
    return event.trace


def greedy(lm, ids, n):
    ids = torch.tensor([ids])
    out = lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                            temperature=None, top_p=None, top_k=None)
    return out[0, ids.shape[1]:].tolist()


def branching_node(trace):
    """A step with several candidates, and the index of a candidate other than the most probable."""
    for st in trace.steps[1:]:
        if len(st.candidates) > 1:
            return st.step, len(st.candidates) - 1
    raise AssertionError("the run never branched")


@pytest.mark.parametrize("pruning", [False, True])
def test_continue_from_equals_a_run_from_scratch_forced_at_that_step(lm, pruning):
    s = build_settings(dict(prompt="once upon a time", max_tokens=14, selection_threshold=0.08,
                            use_retroactive_pruning=pruning, attention_threshold=0.05))
    original = run(lm, s)
    step, index = branching_node(original)
    token = original.steps[step].candidates[index].token_id

    resumed = last(continue_from(lm, original, step, index))
    scratch = last(tempo_events(lm, s, force={step: [token]}))

    assert resumed.stats["reused_steps"] == step  # the shared prefix was fed in one forward, not re-decoded
    assert resumed.stats["forward_passes"] < scratch.stats["forward_passes"]
    assert resumed.stats["forced_step"] == step == scratch.stats["forced_step"]
    assert [c.token_id for c in resumed.steps[step].candidates] == [token]
    assert len(resumed.steps) == len(scratch.steps)
    for a, b in zip(resumed.steps, scratch.steps):
        assert [c.token_id for c in a.candidates] == [c.token_id for c in b.candidates]
        assert [c.pruned_at for c in a.candidates] == [c.pruned_at for c in b.candidates]
        for ca, cb in zip(a.candidates, b.candidates):
            assert abs(ca.prob - cb.prob) < TOL
    # the earlier steps are the original's (before any pruning decided after the fork)
    for a, b in zip(resumed.steps[:step], original.steps[:step]):
        assert [c.token_id for c in a.candidates] == [c.token_id for c in b.candidates]
    assert original.steps[step].candidates[index].token_id == token  # the original run is untouched


def test_forced_run_at_threshold_one_is_greedy_decoding_of_prompt_plus_forced_token(lm):
    s = build_settings(dict(prompt="the cat sat on the mat", max_tokens=16, selection_threshold=1.0,
                            raw_prompt=True, use_retroactive_pruning=True))
    plain = run(lm, s)
    step = 4
    forced = plain.steps[step].alternatives[1]["token_id"]  # a token greedy would not pick
    trace = last(tempo_events(lm, s, force={step: [forced]}))
    ours = [st.candidates[0].token_id for st in trace.steps]
    assert all(len(st.candidates) == 1 for st in trace.steps)
    head = [st.candidates[0].token_id for st in plain.steps[:step]]
    assert ours[:step + 1] == head + [forced]
    expected = greedy(lm, trace.prompt_token_ids + head + [forced], s.max_tokens - step - 1)
    rest = ours[step + 1:]
    if trace.stop_reason == "eos":
        assert expected[len(rest)] in lm.eos_ids
        expected = expected[:len(rest)]
    assert rest == expected and rest


def test_forced_probability_is_the_models_probability_for_that_token(lm):
    s = build_settings(dict(prompt="once upon a time", max_tokens=6, selection_threshold=1.0))
    plain = run(lm, s)
    alt = plain.steps[2].alternatives[0]
    trace = last(tempo_events(lm, s, force={2: [alt["token_id"]]}))
    assert abs(trace.steps[2].candidates[0].prob - alt["prob"]) < TOL
    assert trace.steps[2].candidates[0].token_id not in [a["token_id"] for a in trace.steps[2].alternatives]


def test_continue_from_refuses_a_missing_node_and_other_modes(lm):
    s = build_settings(dict(prompt="once upon a time", max_tokens=4, selection_threshold=0.1))
    trace = run(lm, s)
    with pytest.raises(SettingsError, match="node"):
        continue_from(lm, trace, 9, 0)
    with pytest.raises(SettingsError, match="node"):
        continue_from(lm, trace, 0, 7)
    baseline = run(lm, s.replace(default_mode=True))
    with pytest.raises(SettingsError, match="mode"):
        continue_from(lm, baseline, 0, 0)


def test_lower_threshold_preview_lists_the_set_and_its_near_misses_by_probability(lm):
    s = build_settings(dict(prompt="once upon a time", max_tokens=3, selection_threshold=0.3))
    trace = run(lm, s)
    rows = lower_threshold_preview(trace, 1)
    probs = [r["prob"] for r in rows]
    assert probs == sorted(probs, reverse=True)
    assert sum(r["kept"] for r in rows) == len(trace.steps[1].candidates)
    assert len(rows) == len(trace.steps[1].candidates) + len(trace.steps[1].alternatives)


def test_what_if_thresholds_are_the_ones_a_run_selects_at(lm):
    """Every stated threshold, fed back to the engine at that step (earlier sets forced to the run's), selects
    the token; a token cut by the set cap is not promised to a lower threshold but to a larger cap."""
    s = build_settings(dict(prompt="once upon a time", max_tokens=6, selection_threshold=0.02, max_parallel_tokens=2))
    trace = run(lm, s)
    checked = capped = 0
    for st in trace.steps:
        rows = lower_threshold_preview(trace, st.step)
        earlier = {p.step: [c.token_id for c in p.candidates] for p in trace.steps[:st.step]}
        for r in rows:
            if r["status"] == "capped":
                capped += 1
                assert r["prob"] >= st.selection_threshold and r["joins_at"] is None and r["needs_cap"] > 2
            if r["status"] != "joins":
                continue
            assert r["joins_at"] <= r["prob"] - JOIN_MARGIN and r["prob"] - r["joins_at"] < 1e-4 + JOIN_MARGIN
            cap = r["needs_cap"] or 2
            again = last(tempo_events(lm, s.replace(selection_threshold=r["joins_at"], max_parallel_tokens=cap,
                                                     max_tokens=st.step + 1), force=earlier))
            assert r["text"] in [c.text for c in again.steps[st.step].candidates]
            checked += 1
    assert checked >= 3 and capped >= 1
    assert joins_at(0.0357002) == 0.0356 and joins_at(0.072846) == 0.0728  # a margin below, then rounded down
    # at a step chosen by hand, a token above the run's threshold is not said to need a lower one
    forced = last(continue_from(lm, trace, 1, len(trace.steps[1].candidates) - 1))
    rows = lower_threshold_preview(forced, 1)
    assert {r["status"] for r in rows if not r["kept"] and r["prob"] >= s.selection_threshold} <= {"by_hand"}
    assert any(r["status"] == "by_hand" for r in rows)


def test_a_dropped_eos_counts_in_the_sets_size_and_is_listed(lm):
    """Where end of text passed the threshold and was dropped (not first, or before min_steps), it took a place
    among the max_parallel_tokens the engine selects before the drop (selection.split_eos): a near miss needs a cap
    one larger than the set shows, a token the cap cut gets a cap too, and the view lists EOS."""
    trace = run(lm, build_settings(dict(prompt="once upon a time", max_tokens=3, selection_threshold=0.02,
                                        max_parallel_tokens=2)))
    st = trace.steps[1]
    st.dropped_eos = True
    st.candidates = st.candidates[:1]  # the set as shown: one token, EOS dropped beside it
    st.alternatives = [{"token_id": 7, "text": "x", "prob": st.selection_threshold + 0.01},
                       {"token_id": 8, "text": "y", "prob": st.selection_threshold / 2}]
    rows = {r["text"]: r for r in lower_threshold_preview(trace, 1)}
    assert rows["x"]["status"] == "capped" and rows["x"]["needs_cap"] == 3  # token, EOS, then x
    assert rows["y"]["status"] == "joins" and rows["y"]["needs_cap"] == 4
    assert rows["end of text (EOS)"]["status"] == "eos" and rows["end of text (EOS)"]["prob"] is None
    st.dropped_eos = False
    assert lower_threshold_preview(trace, 1)[1]["needs_cap"] is None  # x alone beside the token fits cap 2


def test_a_rerun_at_a_stated_threshold_keeps_the_earlier_steps_and_selects_the_token(lm):
    """What if promises a token at a threshold with the earlier steps as they were; rerun_at is that run: it equals
    a run from scratch at the lower threshold whose earlier sets are forced to the original's, keeps the earlier
    steps (sets, pruning, thresholds) as they were, and selects the promised token at the step."""
    s = build_settings(dict(prompt="once upon a time", max_tokens=7, selection_threshold=0.05,
                            use_retroactive_pruning=True, attention_threshold=0.05))
    trace = run(lm, s)
    checked = 0
    for st in trace.steps[1:]:
        for r in lower_threshold_preview(trace, st.step):
            if r["status"] != "joins" or r["needs_cap"]:
                continue
            again = last(rerun_at(lm, trace, st.step, r["joins_at"]))
            assert r["text"] in [c.text for c in again.steps[st.step].candidates]
            before = lambda x: [(c.token_id, c.pruned_at if c.pruned_at is not None and c.pruned_at < st.step  # noqa
                                 else None) for c in x.candidates]  # the sets, and what pruning did before the step
            for a, b in zip(trace.steps[:st.step], again.steps):
                assert before(a) == before(b) and a.selection_threshold == b.selection_threshold == 0.05
            earlier = {p.step: [c.token_id for c in p.candidates] for p in trace.steps[:st.step]}
            scratch = last(tempo_events(lm, s.replace(selection_threshold=r["joins_at"]), force=earlier))
            assert [[c.token_id for c in x.candidates] for x in again.steps] == \
                   [[c.token_id for c in x.candidates] for x in scratch.steps]
            assert again.stats["rerun_step"] == st.step and again.stats["rerun_threshold"] == r["joins_at"]
            checked += 1
            break
    assert checked >= 2
    with pytest.raises(SettingsError, match="selection_threshold"):
        rerun_at(lm, trace, 1, 1.5)
    with pytest.raises(SettingsError, match="step"):
        rerun_at(lm, trace, 99, 0.01)
