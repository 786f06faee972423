"""Research runs in the engine: a sweep equals runs from scratch, baselines side by side, multi-scale pruning's shares."""

import pytest

from components.figures.baselines import aligned_html, beam_tree_figure
from components.figures.rewind import rewind_figure
from components.figures.sweep import sweep_figure, sweep_multiples, sweep_table
from tempo_core import build_settings, run
from tempo_core.analysis.baselines import baselines, kv_bytes_per_row
from tempo_core.analysis.sweep import reusable_prefix, sweep
from tiny import tiny_llama

pytestmark = pytest.mark.floor  # also run on the oldest transformers allowed (make test-floor)


@pytest.fixture(scope="module")
def lm():
    return tiny_llama(seed=6)


def s(**kw):
    return build_settings({"prompt": "the cat sat", "max_tokens": 8, "raw_prompt": True, **kw})


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


def test_a_stop_ends_beam_search_at_its_next_token(lm):
    """Research jobs obey Stop and the time limit: HF beam search gets the run's stop flag as a stopping criterion."""
    from tempo_core.baseline import beam_search
    from tempo_core.stop import RunStop
    prompt = lm.tokenizer("the cat sat")["input_ids"]
    whole = beam_search(lm, prompt, 3, 12)
    assert whole["steps"] == 12 and whole["stopped"] is None
    timed = beam_search(lm, prompt, 3, 12, stop=RunStop(0.0))  # its time limit already past: not even a first forward
    assert timed["steps"] == 0 and timed["stopped"] == "time_limit"

    class TripsAfter(RunStop):  # set once generate() has asked it `n` times: a Stop pressed mid-search
        def __init__(self, n: int):
            super().__init__()
            self.asked = n

        def is_set(self) -> bool:
            self.asked -= 1
            return self.asked < 0 or super().is_set()
    mid = beam_search(lm, prompt, 3, 12, stop=TripsAfter(4))
    assert 1 <= mid["steps"] < 12 and mid["stopped"] == "stopped"


@pytest.fixture()
def forward_rows(lm):
    """The rows (tokens per sequence) of every forward the model makes while the test runs."""
    rows, original = [], lm.model.forward

    def recording(*args, **kwargs):
        ids = kwargs.get("input_ids")
        rows.append(ids.shape[1] if ids is not None else kwargs["inputs_embeds"].shape[1])
        return original(*args, **kwargs)
    lm.model.forward = recording
    yield rows
    lm.model.forward = original


def test_a_long_prompt_goes_in_bounded_forwards_and_every_mode_makes_what_it_made_in_one(lm, forward_rows,
                                                                                       monkeypatch):
    """A research job's (or a greedy run's) first forward was the whole prompt: minutes for a long one, with no
    stop check inside. Now every forward is at most 128 rows, and beam search, greedy and TEMPO make exactly
    what they made with the prompt in one forward."""
    import tempo_core.baseline as baseline
    from tempo_core.stop import RunStop
    words = " ".join(["the cat sat on the mat and the dog ran to the park"] * 18)
    s_long = s(prompt=words, max_tokens=6)
    prompt = lm.tokenizer(words)["input_ids"]
    assert len(prompt) > 2 * baseline.PREFILL_CHUNK

    def everything(stop):
        forward_rows.clear()
        beams = baseline.beam_search(lm, prompt, 3, 6, stop=stop)
        greedy = run(lm, s_long.replace(mode="default"), stop)
        tempo = run(lm, s_long.replace(selection_threshold=0.05), stop)
        return beams, greedy, tempo, max(forward_rows)
    chunked = everything(RunStop(None))
    monkeypatch.setattr(baseline, "PREFILL_CHUNK", 10_000)
    whole = everything(None)  # no stop flag: the engine feeds the prompt in one forward too
    assert chunked[3] <= 128 < len(prompt) <= whole[3]
    assert chunked[0]["sequences"] == whole[0]["sequences"] and chunked[0]["steps"] == 6
    assert chunked[0]["scores"] == pytest.approx(whole[0]["scores"], abs=1e-4)
    for a, b in [(chunked[1], whole[1]), (chunked[2], whole[2])]:
        assert [[c.token_id for c in st.candidates] for st in a.steps] == \
               [[c.token_id for c in st.candidates] for st in b.steps]
        assert max(abs(c.prob - d.prob) for x, y in zip(a.steps, b.steps)
                   for c, d in zip(x.candidates, y.candidates)) < 1e-5


def test_a_stop_before_or_during_a_long_prompt_ends_the_job_before_its_next_chunk(lm, forward_rows):
    from tempo_core.baseline import beam_search
    from tempo_core.stop import RunStop
    prompt = lm.tokenizer(" ".join(["the cat sat on the mat"] * 60))["input_ids"]
    stopped = beam_search(lm, prompt, 3, 12, stop=RunStop(0.0))
    assert stopped["steps"] == 0 and stopped["stopped"] == "time_limit" and forward_rows == []
    trace = run(lm, s(prompt=" ".join(["the cat sat on the mat"] * 60)), RunStop(0.0))
    assert trace.stop_reason == "time_limit" and trace.steps == [] and forward_rows == []


def test_baselines_stopped_before_they_start_make_no_forward_and_still_show(lm, forward_rows):
    """A job whose time ran out in its first part starts none of the others (each would feed its prompt)."""
    from tempo_core.stop import RunStop
    result = baselines(lm, s(max_tokens=6), stop=RunStop(0.0))
    assert forward_rows == [] or max(forward_rows) <= len(lm.tokenizer("the cat sat")["input_ids"])  # TEMPO's prompt
    assert result["greedy"].steps == [] and result["beam"]["sequences"] == [] and result["beam"]["stopped"] == "time_limit"
    assert "greedy" in aligned_html(result) and beam_tree_figure(result["beam"]) is not None
