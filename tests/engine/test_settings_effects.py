"""Every engine setting changes what a run does (a flag that changes nothing should not exist)."""

import pytest
from tiny import tiny_llama

from tempo_core import build_settings, run
from tempo_core.config import FIELDS

BASE = dict(prompt="the cat sat on", max_tokens=10, selection_threshold=0.05, raw_prompt=True)
PRUNE = dict(BASE, use_retroactive_pruning=True, attention_threshold=0.08)
DYN = dict(PRUNE, dynamic_threshold=True, attention_threshold=0.02, final_threshold=0.2)
SAMPLE = dict(BASE, default_mode=True, do_sample=True, temperature=1.5)
MCTS = dict(BASE, use_mcts=True, mcts_simulations=6, mcts_depth=2)

CASES = {  # setting: (base settings, changed value)
    "prompt": (BASE, "once upon a time"),
    "max_tokens": (BASE, 4),
    "min_steps": (dict(BASE, max_tokens=8), 5),  # on a model whose EOS is usually on top (see eos_lm)
    "selection_threshold": (BASE, 0.2),
    "max_parallel_tokens": (BASE, 2),
    "temperature": (BASE, 0.5),
    "seed": (SAMPLE, 7),
    "raw_prompt": (BASE, False),
    "enable_thinking": (dict(BASE, raw_prompt=False), True),
    "allow_intraset_token_visibility": (BASE, True),
    "use_custom_rope": (BASE, False),
    "disable_kv_cache": (BASE, True),
    "use_retroactive_pruning": (BASE, True),
    "attention_threshold": (PRUNE, 0.02),
    "pruning_window": (dict(PRUNE, attention_threshold=0.03), 1),
    "use_relative_attention": (PRUNE, True),
    "relative_threshold": (dict(PRUNE, use_relative_attention=True, attention_threshold=0.3), 1.0),
    "use_multi_scale_attention": (dict(PRUNE, attention_threshold=0.03, multi_scale_min_weight=0.0), True),
    "multi_scale_min_weight": (dict(PRUNE, use_multi_scale_attention=True, attention_threshold=0.03), 0.0),
    "num_layers_to_use": (PRUNE, 1),
    "use_sigmoid_threshold": (PRUNE, True),
    "sigmoid_steepness": (dict(PRUNE, use_sigmoid_threshold=True), 0.5),
    "complete_pruning_mode": (dict(PRUNE, attention_threshold=0.3), "remove_position"),
    "preserve_isolated_tokens": (dict(PRUNE, selection_threshold=0.5, complete_pruning_mode="remove_position",
                                      attention_threshold=0.3), False),
    "dynamic_threshold": (PRUNE, True),
    "final_threshold": (DYN, 0.05),
    "dynamic_threshold_form": (DYN, "seed_scaled"),
    "bezier_p1": (DYN, 1.0),
    "bezier_p2": (dict(DYN, bezier_p1=0.0), 0.0),
    "use_relu": (DYN, True),
    "relu_activation_point": (dict(DYN, use_relu=True), 0.9),
    "mode": (BASE, "default"),
    "do_sample": (dict(BASE, default_mode=True, temperature=1.5), True),
    "top_p": (SAMPLE, 0.3),
    "top_k": (SAMPLE, 2),
    "mcts_simulations": (MCTS, 30),
    "mcts_c_puct": (dict(MCTS, mcts_simulations=20), 20.0),
    "mcts_depth": (MCTS, 5),
    "show_token_ids": (BASE, True),
    "faithfulness": (dict(BASE, max_tokens=3), True),
    "faithfulness_paths": (dict(BASE, max_tokens=3, faithfulness=True), 1),
    "commitment": (dict(BASE, max_tokens=3), True),
}


@pytest.fixture(scope="module")
def lm():
    return tiny_llama(seed=7)


def signature(trace):
    return (trace.prompt_text, trace.text, trace.stop_reason,
            [[(c.token_id, round(c.prob, 6), c.pruned_at, c.unattended, c.visits) for c in st.candidates]
             for st in trace.steps],
            [st.pruning_threshold for st in trace.steps], trace.faithfulness and trace.faithfulness["mean_kl"],
            trace.commitment and [x["commit_layer"] for x in trace.commitment["steps"]])


def test_every_setting_has_a_case():
    assert set(CASES) == set(FIELDS)


@pytest.fixture(scope="module")
def eos_lm():
    import torch
    biased = tiny_llama(seed=7)
    eos = next(iter(biased.eos_ids))
    with torch.no_grad():
        biased.model.lm_head.weight[eos] = 50 * biased.model.model.norm.weight.sign()
    return biased


@pytest.mark.parametrize("name", sorted(CASES))
def test_setting_changes_the_run(lm, eos_lm, name):
    base, value = CASES[name]
    if name == "min_steps":
        lm = eos_lm
    before = run(lm, build_settings(base))
    after = run(lm, build_settings({**base, name: value}))
    if name == "disable_kv_cache":  # same candidates by design; it recomputes everything instead
        assert after.stats["tokens_processed"] > before.stats["tokens_processed"]
        return
    assert signature(before) != signature(after)
