"""The faithfulness meter against an independent brute-force computation on a tiny model."""

import itertools
import math

import pytest
import torch
from tiny import tiny_llama

from tempo_core import build_settings, run
from tempo_core.analysis.faithfulness import measure, top_paths, visible_sets
from tempo_core.analysis.replay import merged_distributions

pytestmark = pytest.mark.floor  # also run on the oldest transformers allowed (make test-floor)


@pytest.fixture(scope="module")
def lm():
    return tiny_llama(seed=5)


def brute_force_mixture(lm, trace, t):
    """Every explicit path through the sets visible at step t, each run alone, weighted by its probability."""
    sets = [[c for c in st.candidates if c.pruned_at is None or c.pruned_at >= t] for st in trace.steps[:t + 1]]
    sets = [s for s in sets if s]
    total = torch.zeros(len(lm.tokenizer), dtype=torch.float64)
    for combo in itertools.product(*sets):
        w = math.prod(c.prob / sum(x.prob for x in s) for c, s in zip(combo, sets))
        ids = torch.tensor([trace.prompt_token_ids + [c.token_id for c in combo]])
        with torch.inference_mode():
            total += w * torch.softmax(lm.model(ids).logits[0, -1].double(), -1)
    return total


@pytest.mark.parametrize("extra", [{}, {"use_retroactive_pruning": True, "attention_threshold": 0.1}])
def test_meter_matches_an_independent_computation(lm, extra):
    s = build_settings(dict(prompt="the cat", max_tokens=4, selection_threshold=0.0, max_parallel_tokens=2,
                            raw_prompt=True, **extra))
    trace = run(lm, s)
    merged = merged_distributions(lm, trace)
    # the replayed merged distribution is the one the next step's candidates were selected from
    for t in range(len(trace.steps) - 1):
        for c in trace.steps[t + 1].candidates:
            assert abs(float(merged[t][c.token_id]) - c.prob) < 1e-5
    result = measure(lm, trace, max_paths=64)  # 2^4 paths at most: all of them
    assert trace.faithfulness is result
    for t, step in enumerate(result["steps"]):
        truth = brute_force_mixture(lm, trace, t)
        p = merged[t].double().clamp_min(1e-30)
        expected_kl = float((truth * (truth.clamp_min(1e-300).log() - p.log())).sum())
        assert step["kl"] == pytest.approx(expected_kl, abs=1e-5, rel=1e-4)
        assert step["top_agree"] == (int(truth.argmax()) == int(merged[t].argmax()))
        assert step["coverage"] == pytest.approx(1.0)
    assert result["steps"][0]["kl"] < 1e-6  # one set over a single-path prefix: exact
    assert result["mean_kl"] > 1e-4  # deeper superposition is not exact
    ids = torch.tensor([trace.prompt_token_ids + [c.token_id for c in [max(s.alive, key=lambda c: c.prob)
                                                                         for s in trace.steps]]])
    with torch.inference_mode():
        logp = torch.log_softmax(lm.model(ids).logits[0].float(), -1)
    p0 = len(trace.prompt_token_ids)
    nll = -sum(float(logp[p0 - 1 + i, int(ids[0, p0 + i])]) for i in range(len(trace.steps))) / len(trace.steps)
    assert result["clean_ppl"] == pytest.approx(math.exp(nll), rel=1e-4)


def test_top_paths_is_the_exact_top_m():
    from tempo_core.trace import Candidate
    sets = [[Candidate(1, "a", 0.6), Candidate(2, "b", 0.4)], [Candidate(3, "c", 0.9), Candidate(4, "d", 0.1)],
            [], [Candidate(5, "e", 0.5), Candidate(6, "f", 0.5)]]
    paths, weights, covered = top_paths(sets, 3)
    every = sorted(((list(p), math.prod(c.prob for c in p)) for p in itertools.product(*[s for s in sets if s])),
                   key=lambda x: -x[1])
    assert weights == pytest.approx([w for _, w in every[:3]])
    assert covered == pytest.approx(sum(w for _, w in every[:3]))
    assert [len(p) for p in paths] == [3, 3, 3]


def test_visible_sets_respect_pruning_time():
    lm_ = tiny_llama(seed=5)
    trace = run(lm_, build_settings(dict(prompt="the cat", max_tokens=8, selection_threshold=0.05, raw_prompt=True,
                                         use_retroactive_pruning=True, attention_threshold=0.1)))
    pruned = [(st.step, c) for st in trace.steps for c in st.candidates if c.pruned_at is not None]
    assert pruned
    step, c = pruned[0]
    assert c in visible_sets(trace, c.pruned_at)[step]
    if c.pruned_at + 1 < len(trace.steps):
        assert c not in visible_sets(trace, c.pruned_at + 1)[step]


def test_meter_is_wired_into_runs_and_refuses_other_modes(lm):
    trace = run(lm, build_settings(dict(prompt="the cat", max_tokens=3, selection_threshold=0.05,
                                        faithfulness=True, faithfulness_paths=4)))
    assert trace.faithfulness["max_paths"] == 4 and len(trace.faithfulness["steps"]) == 3
    assert "faithfulness_ms" in trace.timings
    greedy = run(lm, build_settings(dict(prompt="the cat", max_tokens=3, default_mode=True)))
    with pytest.raises(ValueError, match="TEMPO and soft runs"):
        measure(lm, greedy)


def test_the_meter_compares_shared_and_consecutive_positions(lm):
    """The position trick's research baseline: the meter replays each run with its own positions, so the two
    layouts are measured against the same explicit paths and can be compared."""
    s = build_settings(dict(prompt="once upon a time", max_tokens=5, selection_threshold=0.05, faithfulness=True,
                            faithfulness_paths=16))
    shared, consecutive = run(lm, s), run(lm, s.replace(use_custom_rope=False))
    assert shared.faithfulness and consecutive.faithfulness
    replayed = merged_distributions(lm, consecutive)  # the replay reproduces the run's own distributions
    first_set = consecutive.steps[1]
    top = replayed[0].topk(len(first_set.candidates)).indices.tolist()
    assert sorted(top) == sorted(c.token_id for c in first_set.candidates)
    assert shared.faithfulness["mean_kl"] != consecutive.faithfulness["mean_kl"]


def own_kl(p, q):
    p, q = p.double(), q.double()
    m = p > 0
    return float((p[m] * (p[m].log() - q[m].clamp_min(1e-300).log())).sum())


def grid_weight(p, a, b, n=2001):
    """The least-KL weight by brute force over a grid (no derivative, no bisection)."""
    return min((own_kl(p, w * a + (1 - w) * b), w) for w in (i / (n - 1) for i in range(n)))[1]


def test_the_weight_fit_finds_a_known_mixture_and_agrees_with_a_grid_search():
    from tempo_core.analysis.faithfulness import fit_weight
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        a, b = (torch.softmax(torch.randn(50, generator=g) * 3, -1) for _ in range(2))
        w = float(torch.rand(1, generator=g))
        assert fit_weight(w * a + (1 - w) * b, a, b) == pytest.approx(w, abs=1e-6)  # the truth, exactly
        p = torch.softmax(torch.randn(50, generator=g) * 3, -1)  # no mixture of a and b: the nearest one
        assert fit_weight(p, a, b) == pytest.approx(grid_weight(p, a, b), abs=1e-3)
    a, b = torch.tensor([0.9, 0.1, 0.0]), torch.tensor([0.1, 0.2, 0.7])
    assert fit_weight(a, a, b) == 1.0 and fit_weight(b, a, b) == 0.0  # the ends: one thread only


def test_single_threadedness_per_step_matches_explicit_threads_run_alone(lm):
    """w fitted against the explicit paths through the top sibling and through the others, each path run alone
    through plain transformers; at step 0 the merged step IS the siblings' mixture, so w equals the share."""
    s = build_settings(dict(prompt="the cat", max_tokens=4, selection_threshold=0.0, max_parallel_tokens=3,
                            raw_prompt=True))
    trace = run(lm, s)
    merged = merged_distributions(lm, trace)
    result = measure(lm, trace, max_paths=81)  # 3^4 paths at most: all of them
    threaded = [x for x in result["steps"] if x["w"] is not None]
    assert len(threaded) == len(trace.steps) and result["threaded_steps"] == len(threaded)
    for t, step in enumerate(result["steps"]):
        sets = visible_sets(trace, t)
        top = max(sets[t], key=lambda c: c.prob)
        groups = {True: [torch.zeros(len(lm.tokenizer), dtype=torch.float64), 0.0],
                  False: [torch.zeros(len(lm.tokenizer), dtype=torch.float64), 0.0]}
        for combo in itertools.product(*sets):
            w = math.prod(c.prob / sum(x.prob for x in cands) for c, cands in zip(combo, sets))
            ids = torch.tensor([trace.prompt_token_ids + [c.token_id for c in combo]])
            with torch.inference_mode():
                dist = torch.softmax(lm.model(ids).logits[0, -1].double(), -1)
            group = groups[combo[-1].token_id == top.token_id]
            group[0] += w * dist
            group[1] += w
        (p_top, w_top), (p_rest, w_rest) = groups[True], groups[False]
        share = w_top / (w_top + w_rest)
        assert step["top_share"] == pytest.approx(share, abs=1e-9)
        assert step["w"] == pytest.approx(grid_weight(merged[t], p_top / w_top, p_rest / w_rest), abs=1e-3)
    assert result["steps"][0]["w"] == pytest.approx(result["steps"][0]["top_share"], abs=1e-4)
    assert result["mean_w"] == pytest.approx(sum(x["w"] for x in threaded) / len(threaded))
    from tempo_core.analysis.report import faithfulness_line
    assert f"single-threadedness w {result['mean_w']:.2f} vs top sibling's share" in faithfulness_line(result)


def test_paths_fed_after_the_prompts_cache_get_their_plain_distributions(lm):
    """The meter feeds the prompt once and each path after a copy of its cache: the same distributions as each
    path run alone from scratch (paths of different lengths included)."""
    from tempo_core.analysis.faithfulness import path_distributions, prompt_cache
    prompt = lm.tokenizer("once upon a time")["input_ids"]
    paths = [[5, 9, 11], [7, 9, 11], [12], [], [30, 31, 32, 33]]
    got = path_distributions(lm, prompt, paths, 1.0, batch=2, cache=prompt_cache(lm, prompt))
    for path, row in zip(paths, got):
        with torch.inference_mode():
            alone = torch.softmax(lm.model(torch.tensor([prompt + path])).logits[0, -1].float(), -1)
        assert (row - alone).abs().max() < 1e-5


@pytest.mark.parametrize("kw", [dict(use_retroactive_pruning=True, attention_threshold=0.1),
                                dict(mode="soft"), dict(allow_intraset_token_visibility=True)])
def test_the_one_forward_replay_gives_the_distributions_the_run_selected_from(lm, kw):
    trace = run(lm, build_settings(dict(prompt="once upon a time", max_tokens=10, selection_threshold=0.04, **kw)))
    if kw.get("use_retroactive_pruning"):
        assert any(c.pruned_at is not None for st in trace.steps for c in st.candidates)
    merged = merged_distributions(lm, trace)
    for dist, after in zip(merged, trace.steps[1:]):
        for c in after.candidates:
            assert abs(float(dist[c.token_id]) - c.prob) < 1e-5
