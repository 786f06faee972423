"""Soft Thinking on TEMPO's sets: superposition at the input embedding instead of in attention/KV space.

Each step selects the same threshold set TEMPO would from the current next-token distribution, and feeds it as
ONE input row: the concept token sum_i p_i e_i, the candidates' input embeddings weighted by their probabilities
renormalised over the set (Soft Thinking, arXiv 2505.15778). One row per step at consecutive positions, one plain
KV cache, no masks and nothing to prune. The trace records each set like TEMPO's (all candidates share the
step's row), so the text shows the components as `[a/b]` and the faithfulness meter can measure it the same way.
With one candidate per step the concept token is that token's embedding: the run is greedy decoding.
"""

from __future__ import annotations

import threading
import time
from typing import Iterator

import torch
from transformers import DynamicCache

from .config import TempoSettings
from .events import StepEvent, new_trace
from .model import LoadedModel
from .selection import select_with_near_misses, split_eos, to_probs
from .stop import stop_reason
from .text import RunningText, clean_token_ids, repaired_text
from .trace import Candidate, Step, summarise


def concept_embedding(embeddings: torch.Tensor, token_ids: list[int], probs: list[float]) -> torch.Tensor:
    """sum_i w_i e_i with w = probs / sum(probs): one [hidden] input row standing for the whole set."""
    if len(token_ids) == 1:  # exactly the token's own row: a set of one is an ordinary token
        return embeddings[token_ids[0]]
    dtype = torch.promote_types(embeddings.dtype, torch.float32)  # bf16 weights are mixed in fp32
    w = torch.tensor(probs, dtype=dtype, device=embeddings.device)
    rows = embeddings[torch.tensor(token_ids, device=embeddings.device)].to(dtype)
    return ((w / w.sum())[:, None] * rows).sum(dim=0).to(embeddings.dtype)


def soft_inputs(lm: LoadedModel, prompt_ids: list[int], steps: list[Step]) -> torch.Tensor:
    """The input embeddings a soft run fed: the prompt's tokens, then one concept token per recorded step
    [1, prompt + steps, hidden]."""
    table = lm.model.get_input_embeddings().weight
    rows = [table[torch.tensor(prompt_ids, device=lm.device)]]
    rows += [concept_embedding(table, [c.token_id for c in st.candidates], [c.prob for c in st.candidates])[None]
             for st in steps]
    return torch.cat(rows)[None]


def soft_events(lm: LoadedModel, s: TempoSettings, stop: threading.Event | None = None) -> Iterator[StepEvent]:
    """Run Soft Thinking with TEMPO's selection, yielding after every step (see the module doc)."""
    trace = new_trace(lm, s)
    t0 = time.perf_counter()
    table = lm.model.get_input_embeddings().weight
    cache = DynamicCache(config=lm.model.config)
    prompt_len = len(trace.prompt_token_ids)
    with torch.inference_mode():
        out = lm.forward(input_ids=torch.tensor([trace.prompt_token_ids], device=lm.device), cache=cache,
                         use_cache=True, logits_to_keep=1)
    probs = to_probs(out.logits[0, -1], s.temperature)
    trace.timings["prefill_ms"] = (time.perf_counter() - t0) * 1e3
    running, passes = RunningText(s.show_token_ids), 0
    trace.stop_reason = "max_tokens"
    for step in range(s.max_tokens):
        if stop is not None and stop.is_set():
            trace.stop_reason = stop_reason(stop)
            break
        ts = time.perf_counter()
        ids, ps, missed = select_with_near_misses(probs, s.selection_threshold, s.max_parallel_tokens)
        ids, ps, is_end, dropped = split_eos(ids, ps, lm.eos_ids, step >= s.min_steps, probs)
        if is_end:
            trace.stop_reason = "eos"
            break
        position = prompt_len + step
        with torch.inference_mode():
            out = lm.forward(inputs_embeds=concept_embedding(table, ids, ps)[None, None],
                             position_ids=torch.tensor([[position]], device=lm.device), cache=cache, use_cache=True,
                             logits_to_keep=1)
        passes += 1
        probs = to_probs(out.logits[0, -1], s.temperature)
        texts = [lm.decode([i]) for i in ids]
        context = clean_token_ids(trace.steps[-3:]) if any("\ufffd" in t for t in texts) else []
        cands = [Candidate(i, text, p, row=position, display=repaired_text(lm, i, text, context))
                 for i, text, p in zip(ids, texts, ps)]
        near = [{"token_id": i, "text": lm.decode([i]), "prob": p} for i, p in missed if i not in ids]
        trace.steps.append(Step(step, position, s.selection_threshold, None, cands, dropped_eos=dropped,
                                alternatives=near, time_ms=(time.perf_counter() - ts) * 1e3))
        running.update(trace.steps, [])
        _finish(trace, lm, t0, running, passes)
        yield StepEvent(step, trace, [])
    running.update(trace.steps, [])
    _finish(trace, lm, t0, running, passes)
    yield StepEvent(len(trace.steps) - 1, trace, [], done=True)


def _finish(trace, lm: LoadedModel, t0: float, running: RunningText, passes: int) -> None:
    running.finalise(trace, lm.decode)
    summarise(trace, (time.perf_counter() - t0) * 1e3, passes, passes, len(trace.steps))
