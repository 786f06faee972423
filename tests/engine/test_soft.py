"""Soft Thinking mode against plain transformers on a tiny random Llama."""

import pytest
import torch
from tiny import tiny_llama

from tempo_core import build_settings, run
from tempo_core.soft import concept_embedding

pytestmark = pytest.mark.floor  # also run on the oldest transformers allowed (make test-floor)

TOL = 1e-4


@pytest.fixture(scope="module")
def lm():
    return tiny_llama(seed=0)


def soft(**kw):
    return build_settings({"prompt": "the cat sat on the mat", "max_tokens": 12, "raw_prompt": True, "mode": "soft",
                           **kw})


@pytest.mark.parametrize("prompt,chat", [("the cat sat on the mat", False), ("once upon a time", True)])
def test_soft_run_with_one_candidate_per_step_equals_greedy_generate(lm, prompt, chat):
    trace = run(lm, soft(prompt=prompt, raw_prompt=not chat, max_tokens=16, selection_threshold=1.0))
    assert trace.mode == "soft" and all(len(st.candidates) == 1 for st in trace.steps)
    ids = torch.tensor([trace.prompt_token_ids])
    out = lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False,
                            temperature=None, top_p=None, top_k=None)[0, ids.shape[1]:].tolist()
    ours = [st.candidates[0].token_id for st in trace.steps]
    if trace.stop_reason == "eos":
        out = out[:len(ours)]
    assert ours == out and len(ours) > 0


def test_concept_embedding_is_the_probability_weighted_sum_of_embeddings():
    table = torch.randn(50, 8, dtype=torch.float64)
    ids, probs = [3, 17, 41], [0.5, 0.2, 0.1]
    expected = [sum(p * float(table[i, d]) for i, p in zip(ids, probs)) / sum(probs) for d in range(8)]
    got = concept_embedding(table, ids, probs)
    assert torch.allclose(got, torch.tensor(expected, dtype=torch.float64), atol=1e-12)
    assert torch.equal(concept_embedding(table, [7], [0.3]), table[7])  # one candidate: its own embedding


def test_each_step_is_selected_from_the_model_fed_the_mixed_embeddings(lm):
    """Every recorded set and probability comes from plain transformers fed inputs_embeds built here, by hand."""
    trace = run(lm, soft(selection_threshold=0.02, max_parallel_tokens=4, max_tokens=6))
    assert any(len(st.candidates) > 1 for st in trace.steps), "the threshold should make some sets"
    table = lm.model.get_input_embeddings().weight.detach()
    rows = [table[i] for i in trace.prompt_token_ids]
    for st in trace.steps:
        with torch.no_grad():
            probs = torch.softmax(lm.model(inputs_embeds=torch.stack(rows)[None]).logits[0, -1].double(), -1)
        expected = [int(i) for i in (probs >= 0.02).nonzero().flatten()]
        expected = sorted(expected, key=lambda i: -probs[i])[:4] or [int(probs.argmax())]
        assert [c.token_id for c in st.candidates] == expected
        for c in st.candidates:
            assert abs(c.prob - float(probs[c.token_id])) < TOL
        assert {c.row for c in st.candidates} == {st.position} == {len(rows)}
        total = sum(c.prob for c in st.candidates)
        rows.append(sum(c.prob / total * table[c.token_id] for c in st.candidates))
    if len(trace.steps) > 1:
        assert "[" in trace.text and "/" in trace.text  # the sets' components show in the text


def test_faithfulness_of_a_soft_run_measures_its_own_distributions(lm):
    """With one candidate per step a soft run IS its explicit path: KL 0, top agreement 100 %."""
    single = run(lm, soft(selection_threshold=1.0, max_tokens=5, faithfulness=True))
    assert single.faithfulness["mean_kl"] < 1e-6 and single.faithfulness["top_agreement"] == 1.0
    mixed = run(lm, soft(selection_threshold=0.02, max_parallel_tokens=3, max_tokens=5, faithfulness=True))
    f = mixed.faithfulness
    assert len(f["steps"]) == len(mixed.steps)
    assert any(x["kl"] > 1e-4 for x in f["steps"])  # a concept token is not its branches' mixture
    for x in f["steps"]:
        assert x["w"] is None or 0.0 <= x["w"] <= 1.0
