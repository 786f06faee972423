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


def select_with_near_misses(probs: torch.Tensor, threshold: float, max_candidates: int, misses: int = 3
                            ) -> tuple[list[int], list[float], list[tuple[int, float]]]:
    """`select_candidates`, plus the `misses` most probable tokens that were not kept (what a lower threshold or
    a larger set would add next), from one top-k and one device sync."""
    top_p, top_i = probs.topk(min(max_candidates + misses, probs.numel()))
    top_p, top_i = top_p.tolist(), top_i.tolist()
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


def to_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return torch.softmax(logits.float() / temperature, dim=-1)
