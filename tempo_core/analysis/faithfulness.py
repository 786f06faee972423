"""Faithfulness meter: does one superposed sequence approximate the explicit branches it stands for?
(TEMPO superposes in attention/KV space; a soft run (soft.py) at the input embedding: both are measured alike.)

For every logical step t of a finished TEMPO run:
  * P_tempo(t): the merged next-token distribution TEMPO selected step t+1 from, recomputed by replaying the
    trace in one forward (replay.py: same rows, positions, masks and pruning as the run);
  * P_paths(t): the probability-weighted mixture of the next-token distributions of the explicit branch paths
    implied by the sets 0..t (one candidate per step, among the candidates still visible at step t; path
    weight = product of the candidates' renormalised selection probabilities), each path run as an ordinary
    sequence through plain transformers (batched). All paths when there are at most `max_paths`, else the
    `max_paths` most probable (exact top-M by beam over the steps; `coverage` is the weight they hold).
Reported per step: KL(P_paths || P_tempo), whether the top tokens agree, and the Jaccard overlap of the sets
the selection threshold would pick from each. Per run: the means, and the perplexity of `clean_text` under a
plain forward pass next to greedy decoding's.

Single-threadedness (arXiv 2508.03440 asks it of Soft Thinking): at a step whose set has siblings, split the
explicit paths by whether they end in the step's most probable sibling, and fit P_tempo as
w * P(top sibling's paths) + (1 - w) * P(the other paths) by least KL(P_tempo || mixture). w = 1: the merged
step follows its top sibling only; w = `top_share` (that sibling's share of the paths' weight): a faithful
mixture of its threads.
"""

from __future__ import annotations

import copy
import threading
from typing import Any, Iterator

import torch
from transformers import DynamicCache

from ..baseline import feed_in_chunks
from ..config import build_settings
from ..model import LoadedModel
from ..selection import mixture, select_candidates, to_probs
from ..text import clean_token_ids
from ..trace import Candidate, Trace
from .replay import REPLAY_CHUNK, ReplayStopped, merged_distributions


PATHS_PER_FORWARD = 16  # explicit paths fed in one forward (serving/limits.py counts the forwards)


def visible_sets(trace: Trace, t: int) -> list[list[Candidate]]:
    """Candidates of steps 0..t that step t's queries could see (siblings of step t all alive then)."""
    return [[c for c in st.candidates if c.pruned_at is None or c.pruned_at >= t] for st in trace.steps[:t + 1]]


def top_paths(sets: list[list[Candidate]], max_paths: int) -> tuple[list[list[int]], list[float], float]:
    """The most probable explicit paths (token ids), their weights, and the total weight of all paths (= 1)."""
    beams: list[tuple[list[int], float]] = [([], 1.0)]
    for cands in sets:
        if not cands:  # a removed position: the explicit paths simply skip it
            continue
        total = sum(c.prob for c in cands)
        beams = sorted(((ids + [c.token_id], w * c.prob / total) for ids, w in beams for c in cands),
                       key=lambda b: -b[1])[:max_paths]
    return [b[0] for b in beams], [b[1] for b in beams], sum(b[1] for b in beams)


def prompt_cache(lm: LoadedModel, prompt: list[int], stop: threading.Event | None = None) -> DynamicCache:
    """The prompt's KV cache from plain forwards of at most REPLAY_CHUNK rows (`stop` checked between them,
    replay.ReplayStopped): every explicit path starts from it."""
    cache = DynamicCache(config=lm.model.config)
    if not feed_in_chunks(lm, torch.tensor([prompt], device=lm.device), cache, stop, REPLAY_CHUNK):
        raise ReplayStopped
    return cache


def path_distributions(lm: LoadedModel, prompt: list[int], paths: list[list[int]], temperature: float,
                       batch: int = PATHS_PER_FORWARD, cache: DynamicCache | None = None) -> torch.Tensor:
    """Next-token distribution after each path, as plain sequences through plain transformers. With `cache` (the
    prompt's, `prompt_cache`) only the paths' own tokens are fed, the prompt's keys and values copied per path."""
    out: list[torch.Tensor | None] = [None] * len(paths)
    by_length: dict[int, list[int]] = {}
    for i, path in enumerate(paths):
        by_length.setdefault(len(path), []).append(i)
    for length, members in by_length.items():
        for at in range(0, len(members), batch):
            group = members[at:at + batch]
            with torch.inference_mode():
                if cache is None or length == 0:
                    ids = torch.tensor([prompt + paths[i] for i in group], device=lm.device)
                    logits = lm.model(input_ids=ids, logits_to_keep=1).logits[:, -1]
                else:
                    past = copy.deepcopy(cache)
                    past.batch_repeat_interleave(len(group))
                    ids = torch.tensor([paths[i] for i in group], device=lm.device)
                    logits = lm.forward(input_ids=ids, cache=past, use_cache=True, logits_to_keep=1).logits[:, -1]
            for i, row in zip(group, to_probs(logits, temperature)):
                out[i] = row
    return torch.stack(out)


def kl(p: torch.Tensor, q: torch.Tensor) -> float:
    p, q = p.double(), q.double().clamp_min(1e-30)
    mask = p > 0
    # KL >= 0; a sum a hair below 0 (-1e-9: p and q each sum to 1 only up to rounding) is 0, not "-0.000"
    return max(0.0, float((p[mask] * (p[mask].log() - q[mask].log())).sum()))


def fit_weight(p: torch.Tensor, a: torch.Tensor, b: torch.Tensor, iters: int = 60) -> float:
    """The w in [0, 1] minimising KL(p || w a + (1 - w) b). The KL is convex in w, so w is where its derivative
    -sum_i p_i (a_i - b_i) / (w a_i + (1 - w) b_i) crosses zero (bisection; an end when it does not cross)."""
    p, a, b = p.double(), a.double(), b.double()
    keep = p > 0
    p, a, b = p[keep], a[keep], b[keep]

    def slope(w: float) -> float:
        return float(-(p * (a - b) / (w * a + (1 - w) * b).clamp_min(1e-300)).sum())
    if slope(0.0) >= 0:
        return 0.0
    if slope(1.0) <= 0:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(iters):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if slope(mid) < 0 else (lo, mid)
    return (lo + hi) / 2


def single_threadedness(p_tempo: torch.Tensor, dists: torch.Tensor, weights: list[float], on_top: list[bool]
                        ) -> tuple[float, float] | None:
    """(w, top_share) of one step (see the module doc), or None when the paths do not reach both sides."""
    top = [i for i, t in enumerate(on_top) if t]
    rest = [i for i, t in enumerate(on_top) if not t]
    if not top or not rest:
        return None
    p_top = mixture(dists[top], [weights[i] for i in top])
    p_rest = mixture(dists[rest], [weights[i] for i in rest])
    share = sum(weights[i] for i in top) / sum(weights)
    return fit_weight(p_tempo, p_top, p_rest), share


def sequence_ppl(lm: LoadedModel, prompt: list[int], continuation: list[int]) -> float:
    if not continuation:
        return float("nan")
    ids = torch.tensor([prompt + continuation], device=lm.device)
    with torch.inference_mode():
        logp = torch.log_softmax(lm.model(input_ids=ids).logits[0, len(prompt) - 1:-1].float(), dim=-1)
    nll = -logp.gather(1, torch.tensor(continuation, device=lm.device)[:, None]).mean()
    return float(torch.exp(nll))


def measure(lm: LoadedModel, trace: Trace, max_paths: int = 8, perplexity: bool = True,
            stop: threading.Event | None = None) -> dict[str, Any] | None:
    """Run the meter on a finished TEMPO trace; also stores the result in `trace.faithfulness`. `perplexity`:
    also the clean text's and greedy decoding's perplexities (off: both None, a study that needs neither).
    `stop` ends it between two pieces of work: None then."""
    try:
        for _ in measure_iter(lm, trace, max_paths, perplexity, stop):
            if stop is not None and stop.is_set():
                return None
    except ReplayStopped:
        return None
    return trace.faithfulness


PIECE_ROWS = 128  # explicit-path rows per forward between two yields: ~0.3 s of the embedded model on 2 cores


def measure_iter(lm: LoadedModel, trace: Trace, max_paths: int = 8, perplexity: bool = True,
                 stop: threading.Event | None = None) -> Iterator[float]:
    """`measure`, yielding the fraction done between pieces of work (for progress bars, and so that a server's
    other runs take their turns between them): a piece feeds at most PIECE_ROWS rows of explicit paths, or one
    token of the greedy reference."""
    if trace.mode not in ("tempo", "soft"):
        raise ValueError(f"faithfulness is defined for TEMPO and soft runs, not {trace.mode!r}")
    s = build_settings(trace.settings)
    merged = merged_distributions(lm, trace, stop)
    yield 0.0
    cache = prompt_cache(lm, trace.prompt_token_ids, stop)
    steps = []
    for t, p_tempo in enumerate(merged):
        yield t / (len(merged) + 1)
        sets = visible_sets(trace, t)
        paths, weights, covered = top_paths(sets, max_paths)
        per_piece = max(1, PIECE_ROWS // max(1, max(len(p) for p in paths)))
        pieces = []
        for at in range(0, len(paths), per_piece):
            if at:
                yield (t + at / len(paths)) / (len(merged) + 1)
            pieces.append(path_distributions(lm, trace.prompt_token_ids, paths[at:at + per_piece], s.temperature,
                                             cache=cache))
        dists = torch.cat(pieces)
        p_paths = mixture(dists, weights)
        sel_t = set(select_candidates(p_tempo, s.selection_threshold, s.max_parallel_tokens)[0])
        sel_p = set(select_candidates(p_paths, s.selection_threshold, s.max_parallel_tokens)[0])
        top = max(sets[t], key=lambda c: c.prob).token_id
        threads = single_threadedness(p_tempo, dists, weights, [path[-1] == top for path in paths])
        steps.append({"step": t, "kl": kl(p_paths, p_tempo), "top_agree": int(p_paths.argmax()) == int(p_tempo.argmax()),
                      "set_jaccard": len(sel_t & sel_p) / len(sel_t | sel_p), "paths": len(paths),
                      "coverage": covered, "branching": sum(1 for c in sets if len(c) > 1),
                      "w": threads[0] if threads else None, "top_share": threads[1] if threads else None})
    clean = clean_token_ids(trace.steps)
    greedy: list[int] = []
    if perplexity:
        for i in _greedy_ids(lm, trace.prompt_token_ids, len(clean), greedy):
            yield (len(merged) + i / (len(clean) + 1)) / (len(merged) + 1)
    n = len(steps)
    result = {"max_paths": max_paths, "steps": steps,
              "mean_kl": sum(x["kl"] for x in steps) / n if n else 0.0,
              "top_agreement": sum(x["top_agree"] for x in steps) / n if n else 1.0,
              "mean_set_jaccard": sum(x["set_jaccard"] for x in steps) / n if n else 1.0,
              "min_coverage": min((x["coverage"] for x in steps), default=1.0),
              **_mean_threads([x for x in steps if x["w"] is not None]),
              "clean_ppl": sequence_ppl(lm, trace.prompt_token_ids, clean) if perplexity else None,
              "greedy_ppl": sequence_ppl(lm, trace.prompt_token_ids, greedy) if perplexity else None}
    trace.faithfulness = result


def _mean_threads(split: list[dict[str, Any]]) -> dict[str, Any]:
    """Run means of w and of the top sibling's share over the steps that have them (None when none has)."""
    n = len(split)
    return {"threaded_steps": n, "mean_w": sum(x["w"] for x in split) / n if n else None,
            "mean_top_share": sum(x["top_share"] for x in split) / n if n else None}


def _greedy_ids(lm: LoadedModel, prompt: list[int], n: int, out: list[int]) -> Iterator[int]:
    """Greedy decoding of up to `n` tokens after `prompt` into `out` (as HF generate does it: one forward per token
    on a KV cache, ending at EOS), yielding the count after each token: one piece of work per token."""
    cache = DynamicCache(config=lm.model.config)
    ids = prompt
    for i in range(n):
        with torch.inference_mode():
            logits = lm.forward(input_ids=torch.tensor([ids], device=lm.device), cache=cache, use_cache=True,
                                logits_to_keep=1).logits[0, -1]
        token = int(logits.argmax())
        if token in lm.eos_ids:
            return
        out.append(token)
        ids = [token]
        yield i + 1
