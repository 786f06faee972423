"""Research views on recorded traces and tiny-model runs: mask view vs the real mask, rewind, diff,
sweep reuse, baselines."""

import pytest
import torch

from components.figures.research import (aligned_html, beam_tree_figure, diff_figure, diff_trees, faithfulness_figure,
                                  positions_figure, rewind_figure, step_mask_rows, sweep_figure, sweep_multiples,
                                  sweep_table)
from tempo_core import build_settings, run
from tempo_core.compare import baselines, kv_bytes_per_row
from tempo_core.sweep import reusable_prefix, sweep
from tiny import tiny_llama


@pytest.fixture(scope="module")
def lm():
    return tiny_llama(seed=6)


def s(**kw):
    return build_settings({"prompt": "the cat sat", "max_tokens": 8, "raw_prompt": True, **kw})


def test_mask_view_is_the_mask_the_model_received(lm):
    import tempo_core.attention as att
    seen = []
    original = att.tempo_attention_forward

    def spy(module, q, k, v, mask, *a, **kw):
        if module.layer_idx == 0 and mask is not None:
            seen.append(mask[0, 0].clone())
        return original(module, q, k, v, mask, *a, **kw)
    from transformers import AttentionInterface
    AttentionInterface.register(att.ATTN_NAME, spy)
    try:
        trace = run(lm, s(selection_threshold=0.05, max_parallel_tokens=4, use_retroactive_pruning=True,
                          attention_threshold=0.1))
    finally:
        AttentionInterface.register(att.ATTN_NAME, original)
    masked_steps = [st for st in trace.steps if len(st.candidates) > 1 or st.hidden_rows]
    assert masked_steps and len(seen) == len(masked_steps)
    for st, real in zip(masked_steps, seen):
        view, rows = step_mask_rows(trace, st.step)
        k = len(st.candidates)
        assert torch.equal(view, real[:k, :len(rows)])  # (pad rows, if any, are never visible to real rows)
    fig = positions_figure(trace, masked_steps[-1].step)
    assert next(tr for tr in fig.data if tr.type == "heatmap")
    assert any(st.hidden_rows for st in trace.steps)  # pruned rows showed up in some step's mask


def test_rewind_shows_who_pruned_what(lm):
    trace = run(lm, s(selection_threshold=0.05, use_retroactive_pruning=True, attention_threshold=0.1))
    step, idx, c = next((st.step, i, c) for st in trace.steps for i, c in enumerate(st.candidates) if not c.alive)
    fig = rewind_figure(trace, f"{step}:{idx}")
    this = next(tr for tr in fig.data if tr.name.endswith("(this)"))
    assert list(this.x) == sorted(c.attention_by_step)
    thr = next(tr for tr in fig.data if tr.name == "threshold in force")
    levels = [v for v in thr.y if v is not None]  # one short level per later step
    assert len(levels) == 2 * len(c.attention_by_step)
    assert levels[::2] == [trace.steps[k].pruning_threshold for k in sorted(c.attention_by_step)]
    assert "pruned after step" in fig.layout.title.text
    assert "select a pruned" in rewind_figure(trace, "bogus").layout.title.text


def test_tree_diff_finds_divergence(lm):
    a = run(lm, s(selection_threshold=0.1))
    b = run(lm, s(selection_threshold=0.05))
    d = diff_trees(a, b)
    assert len(d) == max(len(a.steps), len(b.steps))
    first = next(r for r in d if r["only_a"] or r["only_b"])
    assert first["only_b"] and not first["only_a"]  # a lower threshold only adds candidates at the first split
    assert diff_trees(a, a)[0]["only_a"] == [] and "identical" in diff_figure(a, a).layout.title.text
    assert f"first divergence at step {first['step']}" in diff_figure(a, b).layout.title.text


def test_tree_diff_figure_shows_every_token_of_both_runs_in_its_own_place(lm):
    a = run(lm, s(selection_threshold=0.08, max_parallel_tokens=3))
    b = run(lm, s(selection_threshold=0.2, prompt="the dog ran"))  # diverges early: tokens only in A and only in B
    fig = diff_figure(a, b)
    shown = {t.name: [(x, y, h) for x, y, h in zip(t.x, t.y, t.hovertext or [None] * len(t.x))] for t in fig.data}
    only_a, only_b, both = shown["only in A"], shown["only in B"], shown["same in both"]
    assert only_a and only_b  # both colours are present, each with its own marker
    points = [(x, y) for x, y, _ in only_a + only_b + both]
    assert len(points) == len(set(points))  # nothing is drawn over anything else
    from components.figures.views import show_token
    for run_, own in ((a, only_a), (b, only_b)):
        other = b if run_ is a else a
        for st in run_.steps:
            theirs = {c.token_id for c in other.steps[st.step].candidates} if st.step < len(other.steps) else set()
            for c in st.candidates:
                group = both if c.token_id in theirs else own
                assert any(x == st.step and h == show_token(c.text) for x, _, h in group), (st.step, c.text)


@pytest.mark.parametrize("extra", [{}, {"use_retroactive_pruning": True, "attention_threshold": 0.1}])
def test_sweep_reuses_prefixes_and_equals_runs_from_scratch(lm, extra):
    base = s(max_tokens=10, **extra)
    runs = sweep(lm, base, [0.3, 0.05, 0.15])
    assert [t.settings["selection_threshold"] for t in runs] == [0.05, 0.15, 0.3]
    assert sum(t.stats.get("reused_steps", 0) for t in runs) > 0
    for t in runs:
        fresh = run(lm, base.replace(selection_threshold=t.settings["selection_threshold"]))
        assert [[c.token_id for c in st.candidates] for st in t.steps] == \
               [[c.token_id for c in st.candidates] for st in fresh.steps]
        assert [[c.pruned_at for c in st.candidates] for st in t.steps] == \
               [[c.pruned_at for c in st.candidates] for st in fresh.steps]
        for x, y in zip(t.steps, fresh.steps):
            assert max(abs(c.prob - d.prob) for c, d in zip(x.candidates, y.candidates)) < 1e-5
    assert reusable_prefix(runs[-1], 0.05) == 0  # a lower threshold can never reuse a higher one's steps
    assert len(sweep_figure(runs).data) == 3 and "| 0.05 |" in sweep_table(runs)
    panels = sweep_multiples(runs)
    alive = [tr for tr in panels.data if tr.name == "alive"]
    assert len(alive) == 3 and list(alive[0].y) == [len(st.alive) for st in runs[0].steps]


def test_baselines_side_by_side(lm):
    r = baselines(lm, s(selection_threshold=0.05, max_tokens=6), num_beams=3)
    cost = r["cost"]
    assert cost["beam"]["num_beams"] == 3 and len(r["beam"]["sequences"]) == 3
    p = len(r["tempo"].prompt_token_ids)
    assert cost["tempo"]["peak_kv_rows"] == p + r["tempo"].stats["physical_tokens"]
    assert cost["beam"]["peak_kv_rows"] > cost["greedy"]["peak_kv_rows"]
    assert cost["greedy"]["peak_kv_mb"] == pytest.approx(cost["greedy"]["peak_kv_rows"] * kv_bytes_per_row(lm) / 2**20)
    html = aligned_html(r)
    assert html.count("<tr>") >= 4 and "forward passes" in html
    fig = beam_tree_figure(r["beam"])
    assert len(fig.layout.annotations) == 3


def test_faithfulness_figure_from_a_measured_run(lm):
    t = run(lm, s(selection_threshold=0.05, max_tokens=4, faithfulness=True, faithfulness_paths=4))
    fig = faithfulness_figure(t)
    bars = fig.data[0]
    assert list(bars.y) == [x["kl"] for x in t.faithfulness["steps"]]
    assert "mean KL" in fig.layout.title.text


def test_multiscale_rewind_records_each_layers_share(lm):
    from tempo_core.pruning import layer_weights
    trace = run(lm, s(selection_threshold=0.05, use_retroactive_pruning=True, attention_threshold=0.1,
                      use_multi_scale_attention=True))
    weights = layer_weights(lm.model.config.num_hidden_layers, build_settings(trace.settings))
    scored = [c for st in trace.steps for c in st.candidates if c.attention_by_layer]
    assert scored
    for c in scored:
        for step, per in c.attention_by_layer.items():  # the score is the weighted sum of the layers' shares
            assert sum(weights[layer] * v for layer, v in per.items()) == pytest.approx(c.attention_by_step[step],
                                                                                         rel=1e-5, abs=1e-8)
    step, idx = next((st.step, i) for st in trace.steps for i, c in enumerate(st.candidates) if not c.alive)
    fig = rewind_figure(trace, f"{step}:{idx}")
    assert any(tr.type == "heatmap" for tr in fig.data)
