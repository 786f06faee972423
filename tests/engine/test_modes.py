"""Default (transformers generate), MCTS, thinking / raw prompts, stopping, seeds."""

import threading

import pytest
import torch
from tiny import tiny_llama

from tempo_core import build_settings, generate, run

pytestmark = pytest.mark.floor  # also run on the oldest transformers allowed (make test-floor)


@pytest.fixture(scope="module")
def lm():
    return tiny_llama(seed=1)


def s(**kw):
    return build_settings({"prompt": "once upon a time", "max_tokens": 10, **kw})


def test_default_mode_is_greedy_generate_with_top_alternatives(lm):
    trace = run(lm, s(default_mode=True))
    ids = torch.tensor([trace.prompt_token_ids])
    ref = lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False,
                            temperature=None, top_p=None, top_k=None)[0, ids.shape[1]:].tolist()
    assert [st.candidates[0].token_id for st in trace.steps] == ref[:len(trace.steps)]
    assert trace.mode == "default" and all(len(st.candidates) == 1 for st in trace.steps)
    first = trace.steps[0]
    assert first.alternatives and all(a["prob"] <= first.candidates[0].prob + 1e-6 for a in first.alternatives)
    assert "[" not in trace.text


def test_default_mode_sampling_follows_the_seed(lm):
    a = run(lm, s(default_mode=True, do_sample=True, temperature=2.0, seed=1))
    b = run(lm, s(default_mode=True, do_sample=True, temperature=2.0, seed=1))
    c = run(lm, s(default_mode=True, do_sample=True, temperature=2.0, seed=2))
    tokens = lambda t: [st.candidates[0].token_id for st in t.steps]  # noqa: E731
    assert tokens(a) == tokens(b) != tokens(c)


def test_mcts_searches_and_records_visits(lm):
    trace = run(lm, s(use_mcts=True, selection_threshold=0.05, mcts_simulations=12, mcts_depth=3))
    assert trace.mode == "mcts" and len(trace.steps) == 10
    for st in trace.steps:
        chosen = [c for c in st.candidates if c.alive]
        assert len(chosen) == 1
        assert chosen[0].visits == max(c.visits for c in st.candidates)
        assert sum(c.visits for c in st.candidates) >= 12  # this step's simulations (plus reused subtree)
    assert any(len(st.candidates) > 1 and sum(c.visits > 0 for c in st.candidates) > 1 for st in trace.steps)
    assert trace.stats["forward_passes"] > len(trace.steps) + 1  # it really searched
    more = run(lm, s(use_mcts=True, selection_threshold=0.05, mcts_simulations=40, mcts_depth=3, mcts_c_puct=4.0))
    assert more.stats["forward_passes"] > trace.stats["forward_passes"]


def test_chat_template_thinking_and_raw_prompt(lm):
    chat = run(lm, s(max_tokens=1))
    assert chat.prompt_text.startswith("<|user|>once upon a time") and chat.prompt_text.endswith("<|assistant|>")
    think = run(lm, s(max_tokens=1, enable_thinking=True))
    assert think.prompt_text.startswith("<|system|>Enable deep thinking subroutine.</s><|user|>")
    raw = run(lm, s(max_tokens=1, raw_prompt=True))
    assert raw.prompt_text == "once upon a time"
    assert raw.prompt_token_ids == lm.tokenizer("once upon a time")["input_ids"]


def test_stop_event_ends_the_run_between_steps_and_keeps_what_was_made(lm):
    stop = threading.Event()
    seen = []
    for event in generate(lm, s(max_tokens=50, selection_threshold=0.05), stop):
        seen.append(event)
        if len(seen) == 3:
            stop.set()
    final = seen[-1]
    assert final.done and final.trace.stop_reason == "stopped" and len(final.trace.steps) == 3
    assert final.trace.text


def test_events_stream_one_per_step(lm):
    events, lengths = [], []
    for e in generate(lm, s(max_tokens=6, selection_threshold=0.05)):  # the trace grows live
        events.append(e)
        lengths.append(len(e.trace.steps))
    assert [e.index for e in events[:-1]] == list(range(6)) and events[-1].done
    assert lengths == [1, 2, 3, 4, 5, 6, 6]


def test_min_steps_postpones_eos(lm):
    eos = next(iter(lm.eos_ids))
    biased = tiny_llama(seed=1)
    with torch.no_grad():
        biased.model.lm_head.weight[eos] *= 0
        biased.model.lm_head.weight[eos] += 50 * biased.model.model.norm.weight.sign()  # EOS nearly always on top
    assert run(biased, s(max_tokens=10)).stop_reason == "eos"
    late = run(biased, s(max_tokens=10, min_steps=4))
    assert len(late.steps) >= 4 and all(c.token_id != eos for st in late.steps for c in st.candidates)
