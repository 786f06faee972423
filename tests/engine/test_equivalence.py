"""TEMPO against plain transformers on a tiny random Llama: the proofs the engine is built on."""

import pytest
import torch
from tiny import tiny_llama

from tempo_core import build_settings, run
from tempo_core.selection import mixture, to_probs
from tempo_core.sequence import ParallelSequence

pytestmark = pytest.mark.floor  # also run on the oldest transformers allowed (make test-floor)

TOL = 1e-4


@pytest.fixture(scope="module")
def lm():
    return tiny_llama(seed=0)


def plain_logits(lm, ids):
    with torch.inference_mode():
        return lm.model(torch.tensor([ids])).logits[0, -1]


def settings(**kw):
    base = dict(prompt="the cat sat on the mat", max_tokens=12, raw_prompt=True)
    return build_settings({**base, **kw})


def prompt_ids(lm):
    return lm.tokenizer("the cat sat on the mat")["input_ids"]


@pytest.mark.parametrize("prompt,chat", [("the cat sat on the mat", False), ("once upon a time", True)])
@pytest.mark.parametrize("pruning", [False, True])
def test_never_branching_run_equals_greedy_generate(lm, prompt, chat, pruning):
    s = build_settings(dict(prompt=prompt, max_tokens=20, selection_threshold=1.0, raw_prompt=not chat,
                            use_retroactive_pruning=pruning))
    trace = run(lm, s)
    assert all(len(st.candidates) == 1 for st in trace.steps)
    ids = torch.tensor([trace.prompt_token_ids])
    out = lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, do_sample=False,
                            temperature=None, top_p=None, top_k=None)[0, ids.shape[1]:].tolist()
    ours = [st.candidates[0].token_id for st in trace.steps]
    if trace.stop_reason == "eos":
        assert out[len(ours)] in lm.eos_ids
        out = out[:len(ours)]
    assert ours == out and len(ours) > 0


@pytest.mark.parametrize("k", [2, 3, 4, 8])  # 3 rows are padded to 4 on CPU
def test_isolated_siblings_get_the_logits_they_would_get_alone(lm, k):
    prompt = prompt_ids(lm)
    seq = ParallelSequence(lm, settings(), prompt)
    first = seq.prefill()
    siblings = first.topk(k).indices.tolist()
    rows, logits, _ = seq.feed(siblings, len(prompt))
    assert rows == list(range(len(prompt), len(prompt) + k))
    for tok, got in zip(siblings, logits):
        assert (got - plain_logits(lm, prompt + [tok])).abs().max() < TOL
    # one level deeper: siblings after a single token still match their own single path
    seq2 = ParallelSequence(lm, settings(), prompt)
    seq2.prefill()
    seq2.feed([siblings[0]], len(prompt))
    _, deeper, _ = seq2.feed(siblings, len(prompt) + 1)
    for tok, got in zip(siblings, deeper):
        assert (got - plain_logits(lm, prompt + [siblings[0], tok])).abs().max() < TOL


def test_visible_siblings_do_see_each_other(lm):
    prompt = prompt_ids(lm)
    seq = ParallelSequence(lm, settings(allow_intraset_token_visibility=True), prompt)
    siblings = seq.prefill().topk(3).indices.tolist()
    _, logits, _ = seq.feed(siblings, len(prompt))
    diffs = [(got - plain_logits(lm, prompt + [tok])).abs().max() for tok, got in zip(siblings, logits)]
    assert max(diffs) > 1e-2


def test_mixture_after_first_set_equals_mixture_of_separate_runs(lm):
    trace = run(lm, settings(selection_threshold=0.0, max_parallel_tokens=3, max_tokens=2))
    first, second = trace.steps
    assert len(first.candidates) == 3
    prompt = trace.prompt_token_ids
    per_branch = torch.stack([to_probs(plain_logits(lm, prompt + [c.token_id]), 1.0) for c in first.candidates])
    expected = mixture(per_branch, [c.prob for c in first.candidates])
    for c in second.candidates:
        assert abs(c.prob - float(expected[c.token_id])) < 1e-5
    assert [c.token_id for c in second.candidates] == expected.topk(3).indices.tolist()


def test_siblings_share_one_position_id_and_prompt_is_fed_once(lm):
    seen = []
    hook = lm.model.model.rotary_emb.register_forward_hook(
        lambda mod, args, kwargs, out: seen.append(kwargs.get("position_ids", args[1] if len(args) > 1 else None)
                                                   .tolist()), with_kwargs=True)
    try:
        trace = run(lm, settings(selection_threshold=0.0, max_parallel_tokens=4, max_tokens=5))
    finally:
        hook.remove()
    p = len(trace.prompt_token_ids)
    assert seen[0] == [list(range(p))]  # the prompt, exactly once
    for step, pos in zip(trace.steps, seen[1:]):
        assert pos == [[p + step.step] * len(step.candidates)]
    assert trace.stats["tokens_processed"] == p + trace.stats["physical_tokens"]
    assert trace.stats["forward_passes"] == len(trace.steps) + 1


def test_pad_rows_are_counted_apart_from_the_tokens_fed(lm):
    """On CPU fp32 a set of 3 is fed as 4 rows (fastpath.rows_to_feed): the pad row is work, not a token."""
    trace = run(lm, settings(selection_threshold=0.0, max_parallel_tokens=3, max_tokens=5, min_steps=5))
    assert [len(st.candidates) for st in trace.steps] == [3] * 5
    assert trace.stats["padded_rows"] == 5
    assert trace.stats["tokens_processed"] == len(trace.prompt_token_ids) + 15


def test_pruned_token_is_the_same_as_physically_deleting_it(lm):
    prompt = prompt_ids(lm)
    p = len(prompt)
    s = settings()
    seq = ParallelSequence(lm, s, prompt)
    a, b, c = seq.prefill().topk(3).indices.tolist()
    rows, _, _ = seq.feed([a, b, c], p)
    seq.layout.kill(rows[1])
    _, pruned, _ = seq.feed([a, c], p + 1)  # later tokens (any ids) at the next position
    ref = ParallelSequence(lm, s, prompt)
    ref.prefill()
    ref.feed([a, c], p)
    _, deleted, _ = ref.feed([a, c], p + 1)
    assert (pruned - deleted).abs().max() < TOL
    # and the pruned row really mattered before it was hidden
    keep = ParallelSequence(lm, s, prompt)
    keep.prefill()
    keep.feed([a, b, c], p)
    _, unpruned, _ = keep.feed([a, c], p + 1)
    assert (unpruned - deleted).abs().max() > 1e-3


@pytest.mark.parametrize("extra", [dict(), dict(use_retroactive_pruning=True, attention_threshold=0.08),
                                   dict(allow_intraset_token_visibility=True)])
def test_disable_kv_cache_gives_the_cached_candidates(lm, extra):
    s = settings(selection_threshold=0.05, max_tokens=10, **extra)
    cached, recomputed = run(lm, s), run(lm, s.replace(disable_kv_cache=True))
    assert len(cached.steps) == len(recomputed.steps)
    for x, y in zip(cached.steps, recomputed.steps):
        assert [c.token_id for c in x.candidates] == [c.token_id for c in y.candidates]
        assert [c.pruned_at for c in x.candidates] == [c.pruned_at for c in y.candidates]
        assert max(abs(c.prob - d.prob) for c, d in zip(x.candidates, y.candidates)) < 1e-5
    if extra.get("use_retroactive_pruning"):
        assert cached.stats["pruned"] > 0
    assert recomputed.stats["tokens_processed"] > cached.stats["tokens_processed"]


def test_pruning_hides_rows_from_later_steps_and_changes_the_run(lm):
    s = settings(selection_threshold=0.05, max_tokens=10)
    pruned_run = run(lm, s.replace(use_retroactive_pruning=True, attention_threshold=0.1))
    plain_run = run(lm, s)
    pruned = [(st.step, c) for st in pruned_run.steps for c in st.candidates if not c.alive]
    assert pruned, "threshold 0.1 on a 2-layer model must prune something"
    for step, c in pruned:
        assert c.pruned_at > step and c.pruned_at - step <= s.pruning_window
        assert c.attention < 0.1
        for later in pruned_run.steps[c.pruned_at + 1:]:
            assert c.row in later.hidden_rows
    assert "~~" in pruned_run.text
    later_ids = lambda tr: [[c.token_id for c in st.candidates] for st in tr.steps]  # noqa: E731
    assert later_ids(pruned_run) != later_ids(plain_run)


def test_without_shared_positions_siblings_sit_at_consecutive_positions(lm):
    """The seeds' --use-custom-rope turned off: the research baseline. Siblings get consecutive position ids
    (each still masked from the others), so sibling j is the model at position p + j after the prompt."""
    prompt = prompt_ids(lm)
    s = settings(use_custom_rope=False)
    seq = ParallelSequence(lm, s, prompt)
    siblings = seq.prefill().topk(3).indices.tolist()
    _, logits, _ = seq.feed(siblings, seq.layout.next_position(0))
    assert seq.layout.positions[-3:] == [len(prompt), len(prompt) + 1, len(prompt) + 2]
    for j, (tok, got) in enumerate(zip(siblings, logits)):
        ids = torch.tensor([prompt + [tok]])
        pos = torch.tensor([list(range(len(prompt))) + [len(prompt) + j]])
        with torch.inference_mode():
            alone = lm.model(ids, position_ids=pos).logits[0, -1]
        assert (got - alone).abs().max() < TOL
    assert seq.layout.next_position(1) == len(prompt) + 3  # the next set comes after the last sibling
    trace = run(lm, settings(use_custom_rope=False, selection_threshold=0.05))
    branching = [st for st in trace.steps if len(st.candidates) > 1]
    assert branching and all(b.position == a.position + len(a.candidates) for a, b in zip(trace.steps, trace.steps[1:]))
    greedy = run(lm, settings(selection_threshold=1.0))
    assert [c.token_id for st in run(lm, settings(use_custom_rope=False, selection_threshold=1.0)).steps
            for c in st.candidates] == [c.token_id for st in greedy.steps for c in st.candidates]


@pytest.mark.parametrize("pruning", [False, True])
def test_a_static_cache_run_equals_the_dynamic_cache_run(lm, pruning):
    """The static-cache path (preallocated buffer, explicit cache positions, a mask over the whole buffer: what
    a captured CUDA graph replays) gives the dynamic-cache run's candidates, pruning and probabilities."""
    from tempo_core.engine import tempo_events
    s = settings(prompt="once upon a time", raw_prompt=False, max_tokens=16, selection_threshold=0.04,
                 use_retroactive_pruning=pruning, attention_threshold=0.05)
    dynamic = run(lm, s)
    static = None
    for event in tempo_events(lm, s, static_cache=True):
        static = event.trace
    assert any(len(st.candidates) in (3, 4, 8) for st in dynamic.steps)  # padded and unpadded sets both met
    if pruning:
        assert any(c.pruned_at is not None for st in dynamic.steps for c in st.candidates)
    assert [[(c.token_id, c.pruned_at) for c in st.candidates] for st in static.steps] == \
           [[(c.token_id, c.pruned_at) for c in st.candidates] for st in dynamic.steps]
    for a, b in zip(static.steps, dynamic.steps):
        for ca, cb in zip(a.candidates, b.candidates):
            assert abs(ca.prob - cb.prob) < 1e-5
            assert all(abs(ca.attention_by_step[k] - cb.attention_by_step[k]) < 1e-5 for k in cb.attention_by_step)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 8])  # 3 rows are padded to 4 on CPU (fastpath.rows_to_feed)
def test_static_cache_feeds_give_the_dynamic_cache_logits_and_attention(lm, k):
    prompt = prompt_ids(lm)
    s = settings(use_retroactive_pruning=True)
    dyn, sta = ParallelSequence(lm, s, prompt), ParallelSequence(lm, s, prompt, static_cache=True)
    first = dyn.prefill()
    assert (sta.prefill() - first).abs().max() < TOL
    siblings = first.topk(k).indices.tolist()
    for depth in range(2):  # a set, then one token after it
        ids = siblings if depth == 0 else siblings[:1]
        _, a_logits, a_attn = dyn.feed(ids, dyn.layout.next_position(depth))
        _, b_logits, b_attn = sta.feed(ids, sta.layout.next_position(depth))
        assert a_logits.shape == b_logits.shape and (a_logits - b_logits).abs().max() < TOL
        for layer in a_attn:
            width = a_attn[layer].shape[-1]  # a static cache's attention runs over its whole buffer
            assert (a_attn[layer] - b_attn[layer][:, :width]).abs().max() < TOL
            assert b_attn[layer][:, width:].abs().max() == 0  # nothing beyond the filled slots
