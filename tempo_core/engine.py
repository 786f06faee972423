"""The TEMPO step loop: one generator that yields an event per logical step (modes.py picks the mode).

Per step: select every candidate above the threshold from the current next-token distribution, feed all of
them in ONE forward at ONE shared position id (siblings masked from each other, one KV cache), score earlier
sets by the attention this step pays them (retroactive pruning), and form the next distribution as the
probability-weighted mixture of the live siblings' distributions.
"""

from __future__ import annotations

import copy
import threading
import time
from typing import Iterator

import torch

from .config import TempoSettings
from .events import StepEvent, new_trace
from .forward import ForwardRequest, NextSet, PaidAttention
from .model import LoadedModel
from .pruning import RetroactivePruner
from .schedule import pruning_threshold
from .selection import NEAR_MISSES, mixture, select_forced, select_with_near_misses, split_eos, to_probs
from .sequence import ParallelSequence
from .stop import stop_reason
from .text import RunningText, clean_token_ids, repaired_text
from .trace import Candidate, Step, Trace, summarise

PREFILL_CHUNK = 128  # prompt rows per forward when runs share the model (bench/README.md: a chunk's cost)


def tempo_events(lm: LoadedModel, s: TempoSettings, stop: threading.Event | None = None,
                 prefix: list[Step] | None = None, force: dict[int, list[int]] | None = None,
                 static_cache: bool = False, cuda_graphs: bool = True, cooperative: bool = False,
                 prefill_chunk: int = PREFILL_CHUNK) -> Iterator[StepEvent | ForwardRequest]:
    """Run TEMPO, yielding after every logical step. The finished trace is `event.trace` of the last event.

    `prefix`: steps known to be what this run would make first (see `sweep.reusable_prefix`); they are fed in
    one forward instead of one per step, and the loop continues after them.
    `force`: {step: token ids} that step's set is, instead of what the threshold selects ("continue from here");
    recorded in `trace.stats` as `forced_step` / `forced_token`.
    `static_cache`: decode on a preallocated StaticCache (see `ParallelSequence`); the same trace.
    `cuda_graphs`: replay each set from a captured CUDA graph where the model allows (runtime/graphs.py: on CUDA, one
    device, unless `lm.cuda_graphs` is off). `trace.stats["cuda_graphs"]` says "on" or why not.
    `cooperative`: also yield each pending forward (a `ForwardRequest`: the prompt in chunks of `prefill_chunk`
    rows, then each set) for the caller to serve, alone or batched with other runs' (serving/scheduler.py); the run
    resumes once its logits are in. Stop is checked between the prompt's chunks too.
    """
    trace = new_trace(lm, s)
    t0 = time.perf_counter()
    seq = ParallelSequence(lm, s, trace.prompt_token_ids, static_cache, cuda_graphs, shared_kv=cooperative)
    try:
        yield from _steps(lm, s, trace, seq, t0, stop, prefix, force, cooperative, prefill_chunk)
    finally:
        seq.close()


def _prefill_in_chunks(seq: ParallelSequence, chunk: int, stop: threading.Event) -> torch.Tensor | None:
    """The prompt in forwards of `chunk` rows with `stop` checked between (a job's first forward is then bounded
    in time like every later one); the last row's logits, or None if `stop` came first."""
    for req in seq.prefill_requests(chunk):
        if stop.is_set():
            return None
        seq.serve(req)
    return req.logits[-1]


def _steps(lm: LoadedModel, s: TempoSettings, trace: Trace, seq: ParallelSequence, t0: float,
           stop: threading.Event | None, prefix: list[Step] | None, force: dict[int, list[int]] | None,
           cooperative: bool, prefill_chunk: int) -> Iterator[StepEvent | ForwardRequest]:
    pruner = RetroactivePruner(s, s.seed, seq.capture) if seq.capture else None
    running = RunningText(s.show_token_ids)  # the trace's text, kept current a step at a time
    top = None  # the next distribution's top-k where a batch took it (NextSet)
    if prefix:
        trace.steps = copy.deepcopy(prefix)
        for st in trace.steps:
            st.selection_threshold = s.selection_threshold
        last = trace.steps[-1]
        probs = mixture(to_probs(seq.prefill_with(trace.steps), s.temperature), [c.prob for c in last.candidates])
        trace.stats["reused_steps"] = len(prefix)
    elif cooperative and seq.batchable:  # the prompt in chunks, each a turn shared with other runs' steps
        store = lm.runtime.prefixes
        reused = seq.reuse_prefix(store)  # a prefix another run fed (a class's shared chat template)
        if reused:
            trace.stats["prompt_rows_reused"] = reused
        for req in seq.prefill_requests(prefill_chunk, start=reused):
            if req.ends_prompt:
                req.next_set = NextSet([1.0], s.temperature, s.max_parallel_tokens + NEAR_MISSES)
            yield req
            if stop is not None and stop.is_set():
                break  # the step loop below reports the stop
        else:
            probs, top = _next_distribution(req, s, [1.0])
            store.put(seq.layout.tokens, seq.cache)
    elif stop is not None and len(seq.layout.tokens) > prefill_chunk:  # a long prompt, not in one forward
        logits = _prefill_in_chunks(seq, prefill_chunk, stop)
        if logits is not None:
            probs = to_probs(logits, s.temperature)
    else:
        probs = to_probs(seq.prefill(), s.temperature)
    trace.timings["prefill_ms"] = (time.perf_counter() - t0) * 1e3
    eos = lm.eos_ids
    trace.stop_reason = "max_tokens"
    for step in range(len(trace.steps), s.max_tokens):
        if stop is not None and stop.is_set():
            trace.stop_reason = stop_reason(stop)
            break
        ts = time.perf_counter()
        if force and step in force:
            ids, ps, missed = select_forced(probs, force[step])
            trace.stats.update(forced_step=step, forced_token="/".join(lm.decode([i]) for i in force[step]))
        else:
            ids, ps, missed = select_with_near_misses(probs, s.selection_threshold, s.max_parallel_tokens, top=top)
        ids, ps, is_end, dropped = split_eos(ids, ps, eos, step >= s.min_steps, probs)
        if is_end:
            trace.stop_reason = "eos"
            break
        hidden = seq.layout.dead_rows()
        req = seq.plan_set(ids, seq.layout.next_position(step))
        if req.logits is None:
            if cooperative:
                req.next_set = NextSet(ps, s.temperature, s.max_parallel_tokens + NEAR_MISSES)
                if pruner:
                    req.paid = PaidAttention(pruner.weights, s.use_multi_scale_attention)
                yield req  # whoever drives this run serves it, alone or in one forward with other runs' rows
            else:
                seq.serve(req)
        rows, attention = req.rows, req.attention
        threshold = pruning_threshold(step, s) if pruner else None
        texts = [lm.decode([i]) for i in ids]
        context = clean_token_ids(trace.steps[-3:]) if any("\ufffd" in t for t in texts) else []
        cands = [Candidate(i, text, p, row=r, display=repaired_text(lm, i, text, context))
                 for i, text, p, r in zip(ids, texts, ps, rows)]
        near = [{"token_id": i, "text": lm.decode([i]), "prob": p} for i, p in missed if i not in ids]
        trace.steps.append(Step(step, seq.layout.positions[rows[0]], s.selection_threshold, threshold, cands,
                                hidden_rows=hidden, dropped_eos=dropped, alternatives=near))
        if req.paid is not None and req.paid.result is not None:
            attention = req.paid.result  # the batch took every run's scores at once
        pruned = pruner.update(trace.steps, attention, threshold) if pruner else []
        for c in pruned:
            seq.layout.kill(c.row)
        probs, top = _next_distribution(req, s, ps)  # the current set is never pruned yet
        trace.steps[-1].time_ms = (time.perf_counter() - ts) * 1e3
        running.update(trace.steps, pruned)
        _finish(trace, lm, seq, t0, running)
        yield StepEvent(step, trace, pruned)
    running.update(trace.steps, [])
    _finish(trace, lm, seq, t0, running)
    yield StepEvent(len(trace.steps) - 1, trace, [], done=True)


def _next_distribution(req: ForwardRequest, s: TempoSettings, weights: list[float]
                       ) -> tuple[torch.Tensor, tuple[list[float], list[int]] | None]:
    """The distribution the next set is chosen from (the mixture of the served rows' softmax, `weights` the set's
    probabilities), and its top-k where the batch that served `req` took them for all its runs at once."""
    if req.next_set is not None and req.next_set.probs is not None:
        return req.next_set.probs, req.next_set.top_k
    return mixture(to_probs(req.logits, s.temperature), weights), None


def _finish(trace: Trace, lm: LoadedModel, seq: ParallelSequence, t0: float, running: RunningText) -> None:
    running.finalise(trace, lm.decode)
    summarise(trace, (time.perf_counter() - t0) * 1e3, seq.forward_passes, seq.tokens_processed,
              seq.layout.rows - seq.layout.prompt_len)
    trace.stats.update(cuda_graphs="on" if seq.graphs_off is None else f"off: {seq.graphs_off}",
                       graphed_steps=seq.graphed_steps, padded_rows=seq.padded_rows)
