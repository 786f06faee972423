"""The commitment strip against an independent per-layer projection: plain transformers forwards of the explicit
sequences, each decoder layer's output caught by a hook and read through norm + lm_head by hand."""

import json

import pytest
import torch
from tiny import tiny_llama

from tempo_core import build_settings, run
from tempo_core.analysis.commitment import _settles_from
from tempo_core.trace import Trace, rewind
from tempo_core.trace_check import TraceError, check_trace_data

pytestmark = pytest.mark.floor  # also run on the oldest transformers allowed (make test-floor)

TOL = 1e-5


@pytest.fixture(scope="module")
def lm():
    return tiny_llama(seed=0)


def settings(**kw):
    return build_settings({"prompt": "the cat sat on the mat", "max_tokens": 6, "raw_prompt": True, **kw})


def lens_by_hand(lm, ids=None, embeds=None) -> list[torch.Tensor]:
    """softmax(lm_head(norm(h_l))) of the LAST row after every decoder layer l, from hooks on the layers."""
    caught = []
    hooks = [layer.register_forward_hook(lambda mod, args, out: caught.append(out[0] if isinstance(out, tuple) else out))
             for layer in lm.model.model.layers]
    try:
        with torch.no_grad():
            if embeds is not None:
                final = lm.model(inputs_embeds=embeds[None]).logits[0, -1]
            else:
                final = lm.model(torch.tensor([ids])).logits[0, -1]
            lens = [torch.softmax(lm.model.lm_head(lm.model.model.norm(h[0, -1])).double(), -1) for h in caught]
    finally:
        for h in hooks:
            h.remove()
    assert torch.allclose(lens[-1], torch.softmax(final.double(), -1), atol=1e-6)  # the last layer's lens = output
    return lens


def expected_step(lens_per_sibling: list[list[torch.Tensor]], probs: list[float]) -> dict:
    w = torch.tensor(probs, dtype=torch.float64)
    w = w / w.sum()
    merged = [sum(wi * sib[layer] for wi, sib in zip(w, lens_per_sibling)) for layer in range(len(lens_per_sibling[0]))]
    final = int(merged[-1].argmax())
    entropy = lambda p: float(-(p[p > 0] * p[p > 0].log()).sum())  # noqa: E731
    js = [entropy(m) - sum(float(wi) * entropy(sib[layer]) for wi, sib in zip(w, lens_per_sibling))
          for layer, m in enumerate(merged)]
    settled = [int(m.argmax()) == final for m in merged]
    commit = next(layer + 1 for layer in range(len(merged)) if all(settled[layer:]))
    return {"p_final": [float(m[final]) for m in merged], "commit_layer": commit, "js": js, "final": final}


def test_a_greedy_run_reads_like_the_plain_model_layer_by_layer(lm):
    trace = run(lm, settings(selection_threshold=1.0, commitment=True))
    c = trace.commitment
    assert c["layers"] == lm.model.config.num_hidden_layers and len(c["steps"]) == len(trace.steps)
    ids = list(trace.prompt_token_ids)
    for st, got in zip(trace.steps, c["steps"]):
        ids.append(st.candidates[0].token_id)
        want = expected_step([lens_by_hand(lm, ids)], [1.0])
        assert max(abs(a - b) for a, b in zip(got["p_final"], want["p_final"])) < TOL
        assert got["commit_layer"] == want["commit_layer"] and got["js"] is None and got["part_layer"] is None
        assert got["token"] == lm.decode([want["final"]])


def test_isolated_siblings_are_read_as_their_own_paths_and_mixed(lm):
    """Step 0's siblings each see only the prompt: their lens is the plain model's on prompt + that sibling."""
    trace = run(lm, settings(selection_threshold=0.0, max_parallel_tokens=3, max_tokens=2, commitment=True))
    st, got = trace.steps[0], trace.commitment["steps"][0]
    assert len(st.candidates) == 3
    per_sibling = [lens_by_hand(lm, trace.prompt_token_ids + [c.token_id]) for c in st.candidates]
    want = expected_step(per_sibling, [c.prob for c in st.candidates])
    assert max(abs(a - b) for a, b in zip(got["p_final"], want["p_final"])) < TOL
    assert max(abs(a - b) for a, b in zip(got["js"], want["js"])) < TOL
    assert got["commit_layer"] == want["commit_layer"]
    # the merged lens at the last layer is what step 1 was selected from
    assert trace.steps[1].candidates[0].token_id == want["final"]
    assert abs(trace.steps[1].candidates[0].prob - got["p_final"][-1]) < TOL
    tops = [[int(p.argmax()) for p in sib] for sib in per_sibling]
    split = [len({t[layer] for t in tops}) > 1 for layer in range(len(tops[0]))]
    assert got["part_layer"] == (_settles_from(split) if split[-1] else None)
    top_k = got["lens"][-1]
    assert top_k[0][0] == lm.decode([want["final"]]) and len(top_k) == trace.commitment["top_k"]


def test_a_soft_run_is_read_through_its_concept_tokens(lm):
    trace = run(lm, settings(mode="soft", selection_threshold=0.02, max_parallel_tokens=3, commitment=True))
    table = lm.model.get_input_embeddings().weight.detach()
    rows = [table[i] for i in trace.prompt_token_ids]
    for st, got in zip(trace.steps, trace.commitment["steps"]):
        total = sum(c.prob for c in st.candidates)
        rows.append(sum(c.prob / total * table[c.token_id] for c in st.candidates))
        want = expected_step([lens_by_hand(lm, embeds=torch.stack(rows))], [1.0])
        assert max(abs(a - b) for a, b in zip(got["p_final"], want["p_final"])) < TOL
        assert got["commit_layer"] == want["commit_layer"] and got["js"] is None


def test_commitment_survives_json_and_the_upload_check_and_a_rewind(lm):
    trace = run(lm, settings(selection_threshold=0.05, commitment=True, use_retroactive_pruning=True,
                             attention_threshold=0.2))
    data = json.loads(trace.to_json())
    check_trace_data(data, max_steps=100, max_candidates=64)
    assert Trace.from_dict(data).commitment == data["commitment"]
    assert len(rewind(trace, 2).commitment["steps"]) == 3
    bad = json.loads(trace.to_json())
    bad["commitment"]["steps"][1]["commit_layer"] = trace.commitment["layers"] + 1
    with pytest.raises(TraceError, match=r"commitment.steps\[1\].commit_layer: must be in \[1, "):
        check_trace_data(bad, max_steps=100, max_candidates=64)
    bad = json.loads(trace.to_json())
    bad["commitment"]["steps"][0]["p_final"] = [0.5]
    with pytest.raises(TraceError, match=r"commitment.steps\[0\].p_final: must be a list of"):
        check_trace_data(bad, max_steps=100, max_candidates=64)


def test_settles_from_is_the_start_of_the_last_run_of_agreement():
    assert _settles_from([False, True, False, True, True]) == 4
    assert _settles_from([True, True, True]) == 1
    assert _settles_from([False, False, True]) == 3





@pytest.mark.parametrize("mode", ["tempo", "soft"])
def test_a_long_replay_in_chunks_reads_what_one_forward_reads_and_stops_between_chunks(mode):
    """The analyses' replay of a long run goes in forwards of 128 rows (each row masked as it was): the merged
    distributions and every layer's states equal those of the replay in one forward, and a stop set before the
    replay ends it before its second forward."""
    import tempo_core.analysis.replay as replay
    from tempo_core import run
    from tempo_core.analysis.commitment import layer_states
    from tempo_core.analysis.replay import ReplayStopped, merged_distributions
    from tempo_core.stop import RunStop
    from tiny import tiny_llama
    lm = tiny_llama(seed=4)
    words = " ".join(["the cat sat on the mat and the dog ran to the park"] * 12)
    trace = run(lm, build_settings({"prompt": words, "max_tokens": 12, "raw_prompt": True, "mode": mode,
                                    "selection_threshold": 0.05, "use_retroactive_pruning": mode == "tempo",
                                    "attention_threshold": 0.1}))
    assert len(trace.prompt_token_ids) + trace.stats.get("physical_tokens", 12) > replay.REPLAY_CHUNK  # 2 forwards
    chunked = merged_distributions(lm, trace), layer_states(lm, trace)[0]
    original = replay.REPLAY_CHUNK
    try:
        replay.in_chunks.__defaults__ = (None, replay.in_chunks.__defaults__[1], 10**6)  # one forward
        whole = merged_distributions(lm, trace), layer_states(lm, trace)[0]
    finally:
        replay.in_chunks.__defaults__ = (None, replay.in_chunks.__defaults__[1], original)
    assert len(chunked[0]) == len(whole[0]) == len(trace.steps)
    assert max((a - b).abs().max().item() for a, b in zip(chunked[0], whole[0])) < 1e-5
    assert len(chunked[1]) == len(whole[1]) and all(a.shape == b.shape for a, b in zip(chunked[1], whole[1]))
    assert max((a - b).abs().max().item() for a, b in zip(chunked[1], whole[1])) < 1e-4
    with pytest.raises(ReplayStopped):
        merged_distributions(lm, trace, RunStop(0.0))
