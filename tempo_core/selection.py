"""Candidate selection and the next-step distribution of a parallel set."""

from __future__ import annotations

import torch


def select_candidates(probs: torch.Tensor, threshold: float, max_candidates: int) -> tuple[list[int], list[float]]:
    """Every token with probability >= threshold, most probable first, at most `max_candidates`.

    Never empty: when nothing passes, the argmax is kept.
    """
    top_p, top_i = probs.topk(min(max_candidates, probs.numel()))
    keep = top_p >= threshold
    keep[0] = True  # argmax fallback
    return top_i[keep].tolist(), top_p[keep].tolist()


NEAR_MISSES = 3  # tokens shown as "not kept" beside each set


def select_with_near_misses(probs: torch.Tensor, threshold: float, max_candidates: int, misses: int = NEAR_MISSES,
                            top: tuple[list[float], list[int]] | None = None
                            ) -> tuple[list[int], list[float], list[tuple[int, float]]]:
    """`select_candidates`, plus the `misses` most probable tokens that were not kept (what a lower threshold or
    a larger set would add next), from one top-k and one device sync. `top`: that top-k (probabilities, ids) where
    it was already taken (`next_distributions`)."""
    if top is None:
        top_p, top_i = probs.topk(min(max_candidates + misses, probs.numel()))
        top = top_p.tolist(), top_i.tolist()
    top_p, top_i = top
    n = max(1, sum(1 for p in top_p[:max_candidates] if p >= threshold))
    return top_i[:n], top_p[:n], list(zip(top_i[n:n + misses], top_p[n:n + misses]))


def select_forced(probs: torch.Tensor, token_ids: list[int], misses: int = 3
                  ) -> tuple[list[int], list[float], list[tuple[int, float]]]:
    """A set chosen by the user ("continue from here"): `token_ids` with their probabilities, and the `misses`
    most probable tokens besides them (what the threshold would have offered)."""
    top_p, top_i = probs.topk(min(len(token_ids) + misses, probs.numel()))
    others = [(i, p) for i, p in zip(top_i.tolist(), top_p.tolist()) if i not in token_ids][:misses]
    return list(token_ids), [float(probs[i]) for i in token_ids], others


def mixture(probs_per_sibling: torch.Tensor, weights: list[float]) -> torch.Tensor:
    """Probability-weighted mixture sum_i w_i p_i(x) with weights renormalised over live siblings.

    `probs_per_sibling` is [k, vocab]; this is the exact marginal next-token distribution when the prefix is
    a single path and the siblings are isolated.
    """
    w = torch.tensor(weights, dtype=probs_per_sibling.dtype, device=probs_per_sibling.device)
    w = w / w.sum()
    return (w[:, None] * probs_per_sibling).sum(dim=0)


def next_distributions(logits: list[torch.Tensor], weights: list[list[float]], temperatures: list[float],
                       tops: list[int]) -> tuple[torch.Tensor, list[tuple[list[float], list[int]]]]:
    """For many runs at once (a batch's tick): each run's next-token distribution, `mixture(to_probs(logits[j],
    temperatures[j]), weights[j])`, as a row of [runs, V], and its `tops[j]` most probable tokens (what
    `select_with_near_misses` takes). One softmax, one weighted sum, one top-k and one device sync for all of them,
    where each run alone launches those and syncs once."""
    rows = torch.cat(logits).float()  # [sum of k, V]
    dev, sizes = rows.device, [part.shape[0] for part in logits]
    per_row = torch.tensor([t for t, k in zip(temperatures, sizes) for _ in range(k)])
    mix = torch.zeros(len(logits), rows.shape[0])
    first = 0
    for j, (w, k) in enumerate(zip(weights, sizes)):
        w = torch.tensor(w)
        mix[j, first:first + k] = w / w.sum()  # as `mixture` normalises
        first += k
    probs = torch.softmax(rows / per_row.to(dev)[:, None], dim=-1)
    dists = mix.to(dev) @ probs  # [runs, V]: each run's rows weighted, the others' zero
    top_p, top_i = dists.topk(min(max(tops), dists.shape[-1]))
    both = torch.cat([top_p.double(), top_i.double()], dim=1).tolist()  # ids < 2**53: exact in float64
    n = top_p.shape[1]
    return dists, [(row[:min(m, n)], [int(i) for i in row[n:n + min(m, n)]]) for row, m in zip(both, tops)]


def to_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return torch.softmax(logits.float() / temperature, dim=-1)


def split_eos(ids: list[int], probs: list[float], eos: set[int], may_stop: bool,
              dist: torch.Tensor) -> tuple[list[int], list[float], bool, bool]:
    """EOS ends the run only as the most probable candidate (after min_steps); otherwise it is dropped."""
    if ids[0] in eos and may_stop:
        return ids, probs, True, False
    kept = [(i, p) for i, p in zip(ids, probs) if i not in eos]
    dropped = len(kept) != len(ids)
    if not kept:  # EOS was the only candidate before min_steps: take the best non-EOS token
        masked = dist.clone()
        masked[list(eos)] = 0.0
        best = int(masked.argmax())
        kept = [(best, float(dist[best]))]
    return [i for i, _ in kept], [p for _, p in kept], False, dropped
