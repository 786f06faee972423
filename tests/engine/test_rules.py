"""Unit rules: selection, EOS, masks, schedules, pruning decisions, settings errors."""

import pytest
import torch

from tempo_core import SettingsError, build_settings, load_settings, run
from tempo_core.settings_sources import file_values
from tempo_core.layout import Layout, full_mask, step_mask
from tempo_core.pruning import RetroactivePruner, layer_weights
from tempo_core.schedule import bezier, pruning_threshold, relu_ramp, threshold_curve
from tempo_core.selection import select_candidates
from tempo_core.selection import split_eos
from tempo_core.text import bracket_text, clean_token_ids
from tempo_core.trace import Candidate, Step, Trace

pytestmark = pytest.mark.floor  # also run on the oldest transformers allowed (make test-floor)


def test_selection_keeps_everything_above_threshold_in_probability_order_with_a_cap():
    probs = torch.tensor([0.05, 0.30, 0.10, 0.40, 0.15])
    assert select_candidates(probs, 0.1, 8) == ([3, 1, 4, 2], pytest.approx([0.40, 0.30, 0.15, 0.10]))
    assert select_candidates(probs, 0.1, 2)[0] == [3, 1]
    assert select_candidates(probs, 0.9, 8)[0] == [3]  # never empty: argmax fallback


def test_eos_stops_only_when_most_probable_and_is_dropped_otherwise():
    dist = torch.tensor([0.5, 0.3, 0.2])
    assert split_eos([0, 1], [0.5, 0.3], {0}, True, dist)[2] is True
    ids, _, end, dropped = split_eos([1, 0], [0.5, 0.3], {0}, True, dist)
    assert (ids, end, dropped) == ([1], False, True)
    ids, _, end, _ = split_eos([0], [0.5], {0}, False, dist)  # before min_steps: best non-EOS token instead
    assert (ids, end) == ([1], False)


def test_step_mask_isolates_siblings_and_hides_dead_rows():
    m = step_mask([True, False, True], 2, False, torch.device("cpu"))[0, 0]
    assert m.tolist() == [[True, False, True, True, False], [True, False, True, False, True]]
    v = step_mask([True], 2, True, torch.device("cpu"))[0, 0]
    assert v.tolist() == [[True, True, True], [True, True, True]]


def test_full_mask_replays_what_each_row_saw_when_fed():
    lay = Layout.for_prompt([1, 2])
    lay.append_set([5, 6], 2)
    lay.kill(3)
    lay.append_set([7], 3)
    m = full_mask(lay, False, torch.device("cpu"))[0, 0].int().tolist()
    assert m == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 0, 1, 0], [1, 1, 1, 0, 1]]
    assert lay.positions == [0, 1, 2, 2, 3]


def test_bezier_and_relu_curves():
    assert bezier(0, 0.2, 0.8) == 0 and bezier(1, 0.2, 0.8) == pytest.approx(1)
    assert bezier(0.5, 0.2, 0.8) == pytest.approx(0.5)
    assert bezier(0.5, 0.9, 0.9) > 0.7  # early rise
    assert relu_ramp(0.3, 0.5) == 0 and relu_ramp(0.75, 0.5) == pytest.approx(0.5)


def test_dynamic_threshold_runs_from_attention_to_final_threshold_without_drift():
    s = build_settings(dict(dynamic_threshold=True, attention_threshold=0.01, final_threshold=0.1, max_tokens=11))
    curve = threshold_curve(s)
    assert curve[0] == pytest.approx(0.01) and curve[-1] == pytest.approx(0.1)
    assert all(a <= b + 1e-12 for a, b in zip(curve, curve[1:]))
    assert curve[5] == pytest.approx(0.01 + 0.09 * bezier(0.5, 0.2, 0.8))
    relu = threshold_curve(s.replace(use_relu=True, relu_activation_point=0.5))
    assert relu[:6] == pytest.approx([0.01] * 6) and relu[-1] == pytest.approx(0.1)
    assert pruning_threshold(3, s.replace(dynamic_threshold=False)) == 0.01


def test_layer_weights_all_last_n_and_multiscale():
    s = build_settings({})
    assert layer_weights(4, s) == pytest.approx({0: 0.25, 1: 0.25, 2: 0.25, 3: 0.25})
    assert list(layer_weights(4, s.replace(num_layers_to_use=2))) == [2, 3]
    w = layer_weights(3, s.replace(use_multi_scale_attention=True))
    assert w[2] > w[1] > w[0] and sum(w.values()) == pytest.approx(1)
    # the seeds' weights: linspace(0.5, 1.0) over the scored layers, normalised
    assert list(w.values()) == pytest.approx([0.5 / 2.25, 0.75 / 2.25, 1.0 / 2.25])
    low = layer_weights(3, s.replace(use_multi_scale_attention=True, multi_scale_min_weight=0.2))
    assert list(low.values()) == pytest.approx([0.2 / 1.8, 0.6 / 1.8, 1.0 / 1.8])


def test_seed_scaled_curve_is_the_seeds_compute_dynamic_threshold():
    s = build_settings(dict(dynamic_threshold=True, attention_threshold=0.1, final_threshold=0.9, max_tokens=10,
                            dynamic_threshold_form="seed_scaled"))
    assert pruning_threshold(0, s) == 0.0  # starts at 0
    for step in range(10):  # base x bezier(step / total_steps), final_threshold unused
        assert pruning_threshold(step, s) == pytest.approx(0.1 * bezier(step / 10, 0.2, 0.8))
    relu = s.replace(use_relu=True, relu_activation_point=0.5)
    assert pruning_threshold(8, relu) == pytest.approx(0.1 * (0.8 - 0.5) / 0.5)


def _sets(*scores_per_set):
    """Steps whose candidates sit on rows 0.. with the given 'future attention' per row."""
    steps, row = [], 0
    for i, scores in enumerate(scores_per_set):
        cands = []
        for j, _ in enumerate(scores):
            cands.append(Candidate(100 + row, f"t{row}", 0.5 - 0.1 * j, row=row))
            row += 1
        steps.append(Step(i, i, 0.1, 0.1, cands))
    attention = torch.tensor([[s for scores in scores_per_set for s in scores]])
    return steps, attention


def _prune(settings, *scores_per_set, threshold=0.1):
    steps, attention = _sets(*scores_per_set)
    later = Step(len(steps), len(steps), 0.1, threshold, [Candidate(1, "x", 1.0, row=attention.shape[1])])
    steps.append(later)
    attention = torch.cat([attention, torch.zeros(1, 1)], dim=1)
    pruned = RetroactivePruner(settings, seed=0, weights={0: 1.0}).update(steps, {0: attention}, threshold)
    return steps, pruned


def test_pruning_threshold_relative_and_complete_modes():
    s = build_settings({})
    steps, pruned = _prune(s, [0.3, 0.05, 0.2])
    assert [c.text for c in pruned] == ["t1"] and steps[0].candidates[1].pruned_at == 1
    rel = s.replace(use_relative_attention=True, relative_threshold=0.1)
    assert _prune(rel, [0.3, 0.05, 0.2])[1] == []  # 0.05 >= 0.1 * 0.3: relative check keeps it
    steps, pruned = _prune(s, [0.01, 0.02])  # the whole set fails
    assert [c.text for c in pruned] == ["t1"] and steps[0].candidates[0].alive  # keep_token keeps the likeliest
    steps, _ = _prune(s.replace(complete_pruning_mode="keep_unattended"), [0.01, 0.02])
    assert steps[0].candidates[0].alive and steps[0].candidates[0].unattended
    steps, pruned = _prune(s.replace(complete_pruning_mode="remove_position"), [0.01, 0.02])
    assert len(pruned) == 2 and not steps[0].alive


def test_isolated_tokens_are_preserved_unless_asked():
    s = build_settings(dict(complete_pruning_mode="remove_position"))
    assert _prune(s, [0.01])[1] == []
    assert len(_prune(s.replace(preserve_isolated_tokens=False), [0.01])[1]) == 1


def test_sigmoid_threshold_is_a_seeded_probabilistic_decision():
    s = build_settings(dict(use_sigmoid_threshold=True, sigmoid_steepness=2.0))
    hard = [len(_prune(build_settings({}), [0.3] + [0.09] * 6)[1])]
    soft = []
    for seed in range(20):
        steps, attention = _sets([0.3] + [0.09] * 6)
        steps.append(Step(1, 1, 0.1, 0.1, [Candidate(1, "x", 1.0, row=7)]))
        attention = torch.cat([attention, torch.zeros(1, 1)], dim=1)
        soft.append(len(RetroactivePruner(s, seed=seed, weights={0: 1.0}).update(steps, {0: attention}, 0.1)))
    assert hard == [6]
    assert len(set(soft)) > 1 and max(soft) < 6  # below threshold, yet only some are pruned, varying by seed
    again = RetroactivePruner(s, seed=3, weights={0: 1.0})
    steps, attention = _sets([0.3] + [0.09] * 6)
    steps.append(Step(1, 1, 0.1, 0.1, [Candidate(1, "x", 1.0, row=7)]))
    assert len(again.update(steps, {0: torch.cat([attention, torch.zeros(1, 1)], dim=1)}, 0.1)) == soft[3]


def test_bracket_text_and_clean_path():
    a = Step(0, 5, 0.1, None, [Candidate(1, " cat", 0.6), Candidate(2, " dog", 0.3, pruned_at=2)])
    b = Step(1, 6, 0.1, None, [Candidate(3, " sat", 0.9)])
    assert bracket_text([a, b]) == "[ cat/~~ dog~~] sat"
    assert bracket_text([a, b], show_ids=True) == "[ cat<1>/~~ dog<2>~~] sat<3>"
    assert clean_token_ids([a, b]) == [1, 3]


def test_trace_round_trips_through_json():
    t = Trace("m", "tempo", {"a": 1}, "p", "p", [1, 2],
              [Step(0, 2, 0.1, 0.01, [Candidate(5, "x", 0.5, row=2, attention_by_step={1: 0.2})])])
    back = Trace.from_json(t.to_json())
    assert back == t and back.steps[0].candidates[0].attention_by_step == {1: 0.2}
    with pytest.raises(ValueError, match="schema_version"):
        Trace.from_dict({**t.to_dict(), "schema_version": 99})


@pytest.mark.parametrize("field,value,needle", [
    ("selection_threshold", 1.5, "selection_threshold: must be a number in [0, 1], got 1.5"),
    ("selection_threshold", float("nan"), "selection_threshold: must be a number in [0, 1]"),
    ("max_tokens", 0, "max_tokens: must be an integer in [1, 2048]"),
    ("max_tokens", 10**9, "max_tokens: must be an integer in [1, 2048]"),
    ("max_tokens", 2.5, "max_tokens: must be an integer"),
    pytest.param("max_tokens", 10**5000, "max_tokens: must be an integer in [1, 2048], got an integer of about 5,0",
                 id="max_tokens-5000-digits"),
    ("temperature", 0, "temperature: must be a number in [0.01, 10]"),
    ("temperature", 1e-300, "temperature: must be a number in [0.01, 10], got 1e-300"),
    ("complete_pruning_mode", "drop", "complete_pruning_mode: must be one of keep_token, keep_unattended"),
    ("use_relu", "maybe", "use_relu: must be true or false"),
    ("bogus", 1, "bogus: unknown setting"),
])
def test_bad_settings_name_the_field_and_range(field, value, needle):
    with pytest.raises(SettingsError) as err:
        build_settings({field: value})
    assert needle in str(err.value) and err.value.field == field


def test_settings_precedence_cli_over_env_over_file(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("selection_threshold: 0.3\nmax_tokens: 7\nmin_steps: 2\n")
    env = {"TEMPO_MAX_TOKENS": "9", "TEMPO_MIN_STEPS": "3", "TEMPO_MODEL": "ignored-here"}
    s = load_settings({"min_steps": 4}, config_file=str(f), environ=env)
    assert (s.selection_threshold, s.max_tokens, s.min_steps) == (0.3, 9, 4)
    j = tmp_path / "s.json"
    j.write_text('{"threshold": 0.2, "use-retroactive-removal": true}')
    s = load_settings({}, config_file=str(j), environ={})
    assert s.selection_threshold == 0.2 and s.use_retroactive_pruning is True
    with pytest.raises(SettingsError, match="config: file not found"):
        file_values(tmp_path / "missing.yaml")
    with pytest.raises(SettingsError, match="TEMPO_|max_tokens"):
        load_settings({}, environ={"TEMPO_MAX_TOKENS": "lots"})


def test_mode_is_one_setting_and_the_seeds_switches_are_its_aliases():
    from tempo_core.cli import build_parser
    assert build_settings({}).mode == "tempo"
    assert build_settings(dict(use_mcts=True)).mode == "mcts"
    assert build_settings(dict(default_mode="true")).mode == "default"
    assert build_settings(dict(use_mcts=False), base=build_settings(dict(mode="mcts"))).mode == "tempo"
    assert build_settings(dict(default_mode=False), base=build_settings(dict(mode="mcts"))).mode == "mcts"
    assert load_settings({}, environ={"TEMPO_USE_MCTS": "1"}).mode == "mcts"
    assert vars(build_parser().parse_args(["--use-mcts"]))["mode"] == "mcts"
    assert vars(build_parser().parse_args(["--default-mode"]))["mode"] == "default"
    assert "default_mode" not in build_settings({}).to_dict()  # one setting, not two booleans
    with pytest.raises(SettingsError, match="use_mcts"):
        build_settings(dict(default_mode=True, use_mcts=True))
    with pytest.raises(SettingsError, match="mode: must be one of tempo, default, mcts"):
        build_settings(dict(mode="beam"))
    with pytest.raises(SettingsError, match="use_mcts: must be true or false"):
        build_settings(dict(use_mcts="maybe"))


def test_empty_prompt_is_refused_before_any_model_work():
    from tiny import tiny_llama
    with pytest.raises(SettingsError, match="prompt: must be a non-empty string"):
        run(tiny_llama(), build_settings(dict(prompt="   ")))


def test_unsupported_model_is_refused_with_a_reason():
    from tiny import tiny_tokenizer
    from transformers import GPT2Config, GPT2LMHeadModel

    from tempo_core import ModelError, wrap_model
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=320))
    with pytest.raises(ModelError, match="rotary"):
        wrap_model(gpt2, tiny_tokenizer())


def test_a_pruned_candidate_keeps_the_score_that_pruned_it():
    from tiny import tiny_llama

    from tempo_core import run
    lm = tiny_llama(seed=0)
    trace = run(lm, build_settings(dict(prompt="once upon a time", max_tokens=14, selection_threshold=0.05,
                                         use_retroactive_pruning=True, attention_threshold=0.05)))
    pruned = [c for st in trace.steps for c in st.candidates if c.pruned_at is not None]
    assert pruned
    thresholds = {st.step: st.pruning_threshold for st in trace.steps}
    for c in pruned:
        assert c.pruning_score is not None and c.pruning_score < thresholds[c.pruned_at]
        assert c.pruning_score == c.attention  # no later attention entries dilute it
        assert max(c.attention_by_step) == c.pruned_at
    assert all(c.pruning_score is None for st in trace.steps for c in st.candidates if c.pruned_at is None)


@pytest.mark.parametrize("show_ids", [False, True])
def test_the_streamed_text_at_every_step_is_the_text_rebuilt_from_all_steps(show_ids):
    """The engine keeps the text current a step at a time (trace.RunningText); at every event it must be what
    rendering every step afresh gives, pruned candidates included."""
    from tiny import tiny_llama

    from tempo_core.engine import tempo_events
    from tempo_core.text import bracket_text, clean_token_ids
    lm = tiny_llama(seed=0)
    s = build_settings(dict(prompt="once upon a time", max_tokens=24, selection_threshold=0.03, raw_prompt=True,
                            use_retroactive_pruning=True, attention_threshold=0.06, show_token_ids=show_ids))
    pruned = 0
    for event in tempo_events(lm, s):
        pruned += len(event.pruned)
        assert event.trace.text == bracket_text(event.trace.steps, show_ids)
        assert event.trace.clean_text == lm.decode(clean_token_ids(event.trace.steps))
    assert pruned > 0 and "~~" in event.trace.text


@pytest.mark.parametrize("values, field", [({"mode": "soft", "use_mcts": True}, "use_mcts"),
                                           ({"mode": "tempo", "default_mode": True}, "default_mode"),
                                           ({"use_mcts": "yes", "mode": "default"}, "use_mcts")])
def test_a_mode_flag_that_contradicts_the_mode_is_refused_naming_the_flag(values, field):
    from tempo_core.config import SettingsError
    with pytest.raises(SettingsError) as exc:
        build_settings({"prompt": "x", **values})
    assert exc.value.field == field and "give one of them" in str(exc.value)
    assert build_settings({"prompt": "x", "mode": "mcts", "use_mcts": True}).mode == "mcts"  # agreeing is fine
