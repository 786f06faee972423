"""The research figures show what the engine computed: the mask the model received, who pruned what, where two runs part."""

import pytest
import torch

from components.figures.diff import diff_figure, diff_trees
from components.figures.faithfulness import faithfulness_figure
from components.figures.positions import positions_figure, step_mask_rows
from components.figures.rewind import rewind_figure
from tempo_core import build_settings, run
from tiny import tiny_llama

pytestmark = pytest.mark.floor  # also run on the oldest transformers allowed (make test-floor)


@pytest.fixture(scope="module")
def lm():
    return tiny_llama(seed=6)


def s(**kw):
    return build_settings({"prompt": "the cat sat", "max_tokens": 8, "raw_prompt": True, **kw})


def test_mask_view_is_the_mask_the_model_received(lm):
    import tempo_core.runtime.attention as att
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
    from components.figures.style import show_token
    for run_, own in ((a, only_a), (b, only_b)):
        other = b if run_ is a else a
        for st in run_.steps:
            theirs = {c.token_id for c in other.steps[st.step].candidates} if st.step < len(other.steps) else set()
            for c in st.candidates:
                group = both if c.token_id in theirs else own
                assert any(x == st.step and h == show_token(c.text) for x, _, h in group), (st.step, c.text)


def test_faithfulness_figure_from_a_measured_run(lm):
    t = run(lm, s(selection_threshold=0.05, max_tokens=4, faithfulness=True, faithfulness_paths=4))
    fig = faithfulness_figure(t)
    bars = fig.data[0]
    assert list(bars.y) == [x["kl"] for x in t.faithfulness["steps"]]
    assert "mean KL" in fig.layout.title.text


def test_the_threads_figure_plots_each_steps_w_against_its_share_between_the_two_readings(lm):
    from components.figures.faithfulness import threads_figure
    t = run(lm, s(selection_threshold=0.05, max_tokens=6, faithfulness=True, faithfulness_paths=8))
    measured = [x for x in t.faithfulness["steps"] if x["w"] is not None]
    assert measured
    fig = threads_figure(t)
    steps = next(tr for tr in fig.data if tr.name == "step")
    assert list(steps.x) == [x["top_share"] for x in measured] and list(steps.y) == [x["w"] for x in measured]
    assert list(steps.text) == [str(x["step"]) for x in measured]
    one, fair = (next(tr for tr in fig.data if tr.name.startswith(n)) for n in ("w = 1", "w = share"))
    assert list(one.y) == [1, 1] and list(fair.x) == list(fair.y) == [0, 1]
    assert f"mean w {t.faithfulness['mean_w']:.2f}" in fig.layout.title.text
    t.faithfulness = None
    assert "tick 'Measure faithfulness'" in threads_figure(t).layout.title.text
