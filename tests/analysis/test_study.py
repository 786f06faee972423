"""The study: its attention numbers against transformers' own eager attention, its coverage and repetition rules, its
settings' errors, and a whole (tiny) study from prompts to table."""

import json

import pytest
import torch
from tiny import tiny_llama

from tempo_core import SettingsError, build_settings, run
from tempo_core.analysis.report import study_table
from tempo_core.analysis.study import QUICK, StudyConfig, load_prompts, study_iter
from tempo_core.analysis.study_command import main
from tempo_core.analysis.study_measures import attention_by_distance, matched_ratio, on_the_sets, repetitive
from tempo_core.layout import Layout, full_mask
from tempo_core.trace import Candidate, Step, Trace

pytestmark = pytest.mark.floor  # also run on the oldest transformers allowed (make test-floor)


@pytest.fixture(scope="module")
def lm():
    return tiny_llama(seed=0)


def eager_attention(lm, trace):
    """Head- and layer-mean attention of the replayed run from transformers' eager attention (output_attentions)."""
    layout = Layout.for_prompt(trace.prompt_token_ids)
    for st in trace.steps:
        layout.append_set([c.token_id for c in st.candidates], st.position)
    mask = full_mask(layout, False, lm.device)
    lm.model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = lm.model(input_ids=torch.tensor([layout.tokens]), position_ids=torch.tensor([layout.positions]),
                           attention_mask=torch.where(mask, 0.0, float("-inf")), output_attentions=True)
    finally:
        lm.model.set_attn_implementation("tempo")
    return torch.stack([a[0].mean(0) for a in out.attentions]).mean(0), mask[0, 0]


def test_attention_by_distance_is_what_eager_attention_gives(lm):
    trace = run(lm, build_settings({"prompt": "the cat sat on", "max_tokens": 7, "selection_threshold": 0.03,
                                    "raw_prompt": True, "max_parallel_tokens": 3}))
    assert any(len(st.candidates) > 1 for st in trace.steps)
    parallel = {0, 2, 4}  # the steps called "parallel" (the greedy control calls steps so that have one row)
    got = attention_by_distance(lm, trace, parallel, 3)
    att, mask = eager_attention(lm, trace)
    rows = [[c.row for c in st.candidates] for st in trace.steps]
    for d in (1, 2, 3):
        for kind in ("parallel", "ordinary"):
            values = [float(att[[q for q in rows[s + d] if mask[q, key]], key].mean())
                      for s in range(len(rows) - d) if (s in parallel) == (kind == "parallel") for key in rows[s]]
            if values:
                assert abs(got[kind][d] - sum(values) / len(values)) < 1e-5
    ratio = matched_ratio(got)
    both = [d for d in got["parallel"] if d in got["ordinary"]]
    assert ratio == pytest.approx(sum(got["parallel"][d] / got["ordinary"][d] for d in both) / len(both))


def fake_trace(sets):
    steps = [Step(i, 10 + i, 0.1, None, [Candidate(t, str(t), 0.5, row=10 + i) for t in ids]) for i, ids in enumerate(sets)]
    return Trace("m", "tempo", {}, "p", "p", [1], steps)


def test_a_sample_is_on_the_sets_when_each_token_is_in_its_steps_set():
    trace = fake_trace([[5, 6], [7], [8, 9]])
    assert on_the_sets([6, 7, 9], trace, eos={0})
    assert not on_the_sets([6, 8, 9], trace, eos={0})
    assert on_the_sets([5, 0], trace, eos={0})  # an EOS ends the comparison
    assert not on_the_sets([5, 7, 8, 4], trace, eos={0})  # past the run's steps
    trace.steps[0].candidates[1].pruned_at = 1
    assert not on_the_sets([6, 7, 9], trace, eos={0})  # a pruned candidate is off the tree


def test_repetition_is_a_short_sequence_three_times():
    assert repetitive([1, 2, 1, 2, 1, 2]) and repetitive([4, 4, 4, 4])
    assert not repetitive([1, 2, 3, 1, 2, 4, 5]) and not repetitive([])


def test_settings_and_prompt_files_are_checked_by_name(tmp_path):
    for change, field in (({"samples": 0}, "samples"), ({"paths": 65}, "paths"), ({"thresholds": [0.1, 1.5]}, "thresholds"),
                          ({"main_threshold": 0.3}, "main_threshold"), ({"sample_tokens": 20}, "sample_tokens"),
                          ({"max_prompts": 10**6}, "max_prompts")):
        with pytest.raises(SettingsError) as err:
            StudyConfig(**change).check()
        assert err.value.field == field
    cases = [("not json", "prompts"), (json.dumps({"prompts": []}), "prompts"),
             (json.dumps({"prompts": [{"prompt": ""}]}), "prompts[0].prompt"),
             (json.dumps(["ok", {"prompt": "x", "category": 5}]), "prompts[1].category"),
             (json.dumps(["x"] * 1001), "prompts")]
    for text, field in cases:
        f = tmp_path / "p.json"
        f.write_text(text)
        with pytest.raises(SettingsError) as err:
            load_prompts(f)
        assert err.value.field == field, text[:30]
    with pytest.raises(SettingsError, match="file not found"):
        load_prompts(tmp_path / "missing.json")
    big = tmp_path / "big.json"
    big.write_text(" " * 1_000_001)
    with pytest.raises(SettingsError, match="at most 1,000,000 bytes"):
        load_prompts(big)
    assert len(load_prompts()) >= 100 and {p["category"] for p in load_prompts()} >= {"facts", "code", "arithmetic"}


def test_the_cli_refuses_bad_settings_with_their_name(capsys):
    assert main(["--samples", "0"]) == 2
    assert "samples: must be an integer in [1, 256]" in capsys.readouterr().err
    assert main(["--thresholds", "0.1,x"]) == 2
    assert "thresholds: must be comma-separated numbers" in capsys.readouterr().err


def test_a_small_study_runs_from_prompts_to_table_and_stops_when_told(lm):
    cfg = StudyConfig(max_prompts=3, tokens=4, thresholds=[0.05, 0.2], main_threshold=0.05, paths=2, samples=4,
                      sample_tokens=3, distance=2, resamples=200)
    prompts = [{"prompt": p, "category": "x"} for p in ("the cat", "a dog ran", "once upon")]
    *progress, (n, result) = list(study_iter(lm, cfg, prompts))
    assert [p[0] for p in progress] == [1, 2, 3] and n == 3 and result["stopped"] is None
    assert len(result["records"]) == 3 and json.loads(json.dumps(result, allow_nan=False))
    s = result["summary"]
    cov = [r["by_threshold"]["0.05"]["tempo"]["coverage"] for r in result["records"]]
    assert s["by_threshold"]["0.05"]["tempo"]["coverage"]["mean"] == pytest.approx(sum(cov) / 3)
    text = study_table(result)
    for part in ("a. attention received", "b. threshold 0.2: KL", "c. threshold 0.05", "d. commitment layer"):
        assert part in text
    stop = type("Stop", (), {"is_set": lambda self: True, "reason": "time_limit"})()
    *_, (n, stopped) = list(study_iter(lm, cfg, prompts, stop))
    assert n == 0 and stopped["records"] == [] and stopped["stopped"] == "time_limit"


def test_the_quick_study_fits_a_small_budget():
    assert QUICK.check() is QUICK and QUICK.forward_passes(5) < 4000


def test_the_forest_plot_draws_each_estimate_in_its_units_panel():
    from components.figures.study import UPSTREAM_CLAIM, study_figure, study_panels
    from tempo_core.analysis.study import BUNDLED_RESULTS
    result = json.loads(BUNDLED_RESULTS.read_text())
    fig = study_figure(result)
    panels = study_panels(result)
    assert [d["name"] for d in fig["data"]] == [title for title, _, _ in panels]
    for drawn, (_, _, rows) in zip(fig["data"], panels):
        shown = [r for r in rows if r[1]["mean"] is not None][::-1]
        assert drawn["x"] == [r[1]["mean"] for r in shown] and drawn["y"] == [r[0] for r in shown]
        assert drawn["error_x"]["array"] == [r[1]["high"] - r[1]["mean"] for r in shown]
    s = result["summary"]
    assert fig["data"][0]["x"][-1] == s["attention"]["all"]["ratio"]["mean"]
    band = next(sh for sh in fig["layout"]["shapes"] if sh["type"] == "rect")
    assert (band["x0"], band["x1"]) == UPSTREAM_CLAIM
    lines = [(sh["xref"], sh["x0"]) for sh in fig["layout"]["shapes"] if sh["type"] == "line"]
    assert lines == [("x", 1.0), ("x3", 0.0), ("x5", 0.0)]  # no difference / a faithful mixture / no delay
