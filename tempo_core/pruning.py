"""Retroactive pruning: candidates that later tokens barely attend to are hidden from every later token.

Score of a candidate = mean, over the later steps seen so far in its window, of the attention those
steps' query rows pay its row (mean over heads, over query rows, and over the chosen layers).
After each later step inside the window the candidate is pruned the first time its score falls below
the threshold in force (and, with relative attention, below `relative_threshold` x its set's best).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import torch

from .config import TempoSettings
from .trace import Candidate, Step


def layer_weights(num_layers: int, s: TempoSettings) -> dict[int, float]:
    """Which layers score attention, and with what weight (sums to 1)."""
    n = num_layers if s.num_layers_to_use is None else min(s.num_layers_to_use, num_layers)
    layers = list(range(num_layers - n, num_layers))
    if s.use_multi_scale_attention:
        raw = torch.linspace(s.multi_scale_min_weight, 1.0, len(layers)).tolist() if len(layers) > 1 else [1.0]
    else:
        raw = [1.0] * len(layers)
    total = sum(raw)
    return {layer: w / total for layer, w in zip(layers, raw)}


def combine_layers(per_layer: dict[int, torch.Tensor], weights: dict[int, float]) -> torch.Tensor:
    """Weighted sum of head-averaged attention maps [q, kv] -> [q, kv]."""
    device = per_layer[next(iter(weights))].device  # a model split across GPUs records on several devices
    return sum(weights[layer] * per_layer[layer].to(device) for layer in weights)


@dataclass
class AttentionPaid:
    """What the newest set paid each earlier row (the scores pruning reads): the pruning layers combined with their
    weights and averaged over the set's rows, and, with multi-scale weighting, each layer's own average."""
    combined: list[float]
    by_layer: dict[int, list[float]] = field(default_factory=dict)


def attention_paid(per_layer: dict[int, torch.Tensor], weights: dict[int, float], by_layer: bool) -> AttentionPaid:
    """`AttentionPaid` from the newest set's head-averaged attention (layer -> [k_new, rows]); `.tolist()` is one
    device sync per step (a batch takes all its runs' with one, serving/graphed.py)."""
    combined = combine_layers(per_layer, weights).mean(dim=0).tolist()
    return AttentionPaid(combined, {layer: per_layer[layer].mean(dim=0).tolist() for layer in weights}
                         if by_layer else {})


def attention_paid_together(kept: dict[int, torch.Tensor], parts: list[int], lengths: list[int],
                            asks: list[tuple[dict[int, float], bool] | None]) -> list[AttentionPaid | None]:
    """`attention_paid` for many runs' sets at once, from their rows side by side (layer -> [sum of parts, width]:
    run j's `parts[j]` rows, of which its first `lengths[j]` columns are its own): one weighted sum and one device
    sync for all of them. `asks[j]`: run j's (layer weights, by_layer), or None (nothing for it)."""
    asked = [j for j, ask in enumerate(asks) if ask is not None]
    if not asked:
        return [None] * len(asks)
    layers = sorted(kept)
    n, at = sum(parts), {layer: i for i, layer in enumerate(layers)}
    starts = [sum(parts[:j]) for j in range(len(parts))]
    lines: list[tuple[int, int | None]] = []  # (run, None: its combined row | a layer: that layer's own)
    for j in asked:
        lines += [(j, None)] + ([(j, layer) for layer in asks[j][0]] if asks[j][1] else [])
    coeff = torch.zeros(len(lines), len(layers) * n)  # each line: weight / rows on its run's rows of each layer
    for line, (j, only) in enumerate(lines):
        for layer, w in (asks[j][0].items() if only is None else [(only, 1.0)]):
            first = at[layer] * n + starts[j]
            coeff[line, first:first + parts[j]] = w / parts[j]
    stacked = torch.stack([kept[layer] for layer in layers]).view(len(layers) * n, -1)
    rows = (coeff.to(stacked.device) @ stacked.float()).cpu()
    out: list[AttentionPaid | None] = [None] * len(asks)
    for line, (j, only) in enumerate(lines):
        values = rows[line, :lengths[j]].tolist()
        if only is None:
            out[j] = AttentionPaid(values)
        else:
            out[j].by_layer[only] = values
    return out


class RetroactivePruner:
    """Keeps the per-candidate scores and takes the pruning decisions for one run."""

    def __init__(self, s: TempoSettings, seed: int, weights: dict[int, float]):
        self.s = s
        self.weights = weights  # layer -> weight (see layer_weights)
        self._rng = random.Random(seed)
        self._draw: dict[tuple[int, int], float] = {}  # one uniform per candidate: sigmoid decisions are seeded

    def _uniform(self, step: int, idx: int) -> float:
        key = (step, idx)
        if key not in self._draw:
            self._draw[key] = self._rng.random()
        return self._draw[key]

    def scored(self, step: Step) -> bool:
        return len(step.candidates) >= 2 or not self.s.preserve_isolated_tokens

    def update(self, steps: list[Step], paid: dict[int, torch.Tensor] | AttentionPaid,
               threshold: float) -> list[Candidate]:
        """Score earlier sets with the newest step's attention (layer -> [k_new, rows], head-averaged, or what
        `attention_paid` makes of it); return the newly pruned candidates. With multi-scale weighting each layer's
        share is kept too."""
        now = steps[-1].step
        if not isinstance(paid, AttentionPaid):
            paid = attention_paid(paid, self.weights, self.s.use_multi_scale_attention)
        per_row, layer_rows = paid.combined, paid.by_layer
        pruned: list[Candidate] = []
        for past in steps[max(0, len(steps) - 1 - self.s.pruning_window):-1]:
            for c in past.candidates:
                if c.row >= 0 and c.alive:  # a pruned candidate keeps the score that pruned it
                    c.attention_by_step[now] = per_row[c.row]
                    c.attention = sum(c.attention_by_step.values()) / len(c.attention_by_step)
                    if layer_rows:
                        c.attention_by_layer[now] = {layer: rows[c.row] for layer, rows in layer_rows.items()}
            if self.scored(past):
                pruned += self._decide(past, now, threshold)
        return pruned

    def _fails(self, step: Step, idx: int, c: Candidate, threshold: float, best: float) -> bool:
        score = c.attention if c.attention is not None else math.inf
        if self.s.use_sigmoid_threshold:
            if threshold <= 0:
                return False
            p_prune = 1.0 / (1.0 + math.exp(-self.s.sigmoid_steepness * (threshold - score) / threshold))
            fails = self._uniform(step.step, idx) < p_prune
        else:
            fails = score < threshold
        if self.s.use_relative_attention:
            fails = fails and score < self.s.relative_threshold * best
        return fails

    def _decide(self, step: Step, now: int, threshold: float) -> list[Candidate]:
        alive = [(i, c) for i, c in enumerate(step.candidates) if c.alive and not c.unattended]
        if not alive:
            return []
        best = max(c.attention or 0.0 for _, c in alive)
        failing = [(i, c) for i, c in alive if self._fails(step, i, c, threshold, best)]
        if not failing:
            return []
        if len(failing) == len(alive) and self.s.complete_pruning_mode != "remove_position":
            keep = max(failing, key=lambda ic: ic[1].prob)
            failing.remove(keep)
            if self.s.complete_pruning_mode == "keep_unattended":
                keep[1].unattended = True
        for _, c in failing:
            c.pruned_at, c.pruning_score = now, c.attention
        return [c for _, c in failing]
