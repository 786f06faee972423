"""What the study measures of one prompt's runs (study.py runs them): attention received by distance, repetition,
coverage by samples, and commitment by prediction."""

from __future__ import annotations

from collections import defaultdict

import torch

from ..model import LoadedModel
from ..runtime.attention import record_attention
from ..trace import Trace
from .replay import replay_inputs


def attention_by_distance(lm: LoadedModel, trace: Trace, parallel_steps: set[int], max_d: int
                          ) -> dict[str, dict[int, float]]:
    """Mean attention each kind of generated row ("parallel": rows of `parallel_steps`, "ordinary": the rest)
    receives from the step d later, per d (see the module doc); "set" sums a parallel step's siblings."""
    kwargs, rows = replay_inputs(lm, trace)
    layers = range(lm.model.config.num_hidden_layers)
    with torch.inference_mode(), record_attention(layers) as rec:
        lm.model(**kwargs, use_cache=False, logits_to_keep=1)
    att = torch.stack([rec.weights[layer] for layer in layers]).mean(0)  # [rows, rows], mean over layers and heads
    visible = kwargs["attention_mask"][0, 0] if "attention_mask" in kwargs else torch.ones_like(att, dtype=torch.bool)
    sums: dict[str, dict[int, list[float]]] = {"parallel": defaultdict(list), "ordinary": defaultdict(list),
                                               "set": defaultdict(list)}
    for s, keys in enumerate(rows):
        for d in range(1, max_d + 1):
            if s + d >= len(rows):
                break
            queries = torch.tensor(rows[s + d])
            received = []
            for key in keys:
                seen = visible[queries, key]
                if seen.any():  # masked pairs (a pruned key) are not "receiving nothing": they are left out
                    received.append(float(att[queries[seen], key].mean()))
            if not received:
                continue
            kind = "parallel" if s in parallel_steps else "ordinary"
            sums[kind][d] += received
            if kind == "parallel":
                sums["set"][d].append(sum(received))
    return {kind: {d: sum(v) / len(v) for d, v in per.items()} for kind, per in sums.items()}


def matched_ratio(by_d: dict[str, dict[int, float]], kind: str = "parallel") -> float | None:
    """Mean over the distances both kinds have of `kind` / ordinary (None when they share none)."""
    ds = [d for d in by_d[kind] if d in by_d["ordinary"] and by_d["ordinary"][d] > 0]
    return sum(by_d[kind][d] / by_d["ordinary"][d] for d in ds) / len(ds) if ds else None


def repetitive(ids: list[int]) -> bool:
    """A run that fell into repetition: some 2- to 4-token sequence occurs three times or more."""
    for n in (2, 3, 4):
        grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
        if any(grams.count(g) >= 3 for g in set(grams)):
            return True
    return False


def samples(lm: LoadedModel, prompt_ids: list[int], n: int, k: int, seed: int) -> list[list[int]]:
    """`n` temperature-1 samples of `k` tokens (plain transformers generate, seeded); EOS ends a sample early."""
    ids = torch.tensor([prompt_ids], device=lm.device)
    torch.manual_seed(seed)
    with torch.inference_mode():
        out = lm.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0, top_k=0,
                                top_p=1.0, max_new_tokens=k, num_return_sequences=n,
                                pad_token_id=lm.tokenizer.pad_token_id or next(iter(lm.eos_ids), 0))
    result = []
    for row in out[:, len(prompt_ids):].tolist():
        cut = next((i for i, t in enumerate(row) if t in lm.eos_ids), len(row))
        result.append(row[:cut + 1] if cut < len(row) else row)
    return result


def on_the_sets(sample: list[int], trace: Trace, eos: set[int]) -> bool:
    """Every token of `sample` is a live candidate of the run's step at its index (an EOS ends it: the run would
    have stopped there too only if EOS led, so an EOS simply ends the comparison)."""
    for i, token in enumerate(sample):
        if token in eos:
            return True
        if i >= len(trace.steps) or token not in {c.token_id for c in trace.steps[i].alive}:
            return False
    return True


def commitment_by_prediction(trace: Trace) -> dict[str, float | None]:
    """Mean commitment layer of the steps whose prediction became a set (the next step has siblings) and of those
    whose prediction became a single token."""
    steps = trace.commitment["steps"]
    groups: dict[str, list[int]] = {"set": [], "single": []}
    for x, after in zip(steps, trace.steps[1:]):
        groups["set" if len(after.candidates) > 1 else "single"].append(x["commit_layer"])
    return {k: sum(v) / len(v) if v else None for k, v in groups.items()}
