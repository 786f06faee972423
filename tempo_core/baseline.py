"""Baselines through plain transformers `generate`, recorded in the same trace form as TEMPO.

Default mode streams: `generate` runs in a worker thread, a streamer hands each chosen token back, and a
logits processor records that step's top alternatives.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any, Iterator

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from .config import TempoSettings
from .events import StepEvent, new_trace
from .model import LoadedModel, cache_argument
from .stop import stop_reason
from .text import finalise_text
from .trace import Candidate, Step, Trace, summarise

TOP_ALTERNATIVES = 5


class _RecordTop(LogitsProcessor):
    """Keeps softmax(logits / T) of each step, reduced to its top alternatives."""

    def __init__(self, temperature: float, out: "queue.Queue[tuple[str, Any]]"):
        self.temperature, self.out = temperature, out

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        probs = torch.softmax(scores[0].float() / self.temperature, dim=-1)
        p, i = probs.topk(TOP_ALTERNATIVES)
        self.out.put(("dist", (probs, i.tolist(), p.tolist())))
        return scores


class _Streamer(BaseStreamer):
    def __init__(self, out: "queue.Queue[tuple[str, Any]]"):
        self.out, self.seen_prompt = out, False

    def put(self, value: torch.Tensor) -> None:
        if not self.seen_prompt:  # generate() first sends the prompt
            self.seen_prompt = True
            return
        self.out.put(("token", int(value.reshape(-1)[0])))

    def end(self) -> None:
        pass


class _StopOnEvent(StoppingCriteria):
    def __init__(self, *stops: threading.Event | None):
        self.stops = [s for s in stops if s is not None]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        hit = any(s.is_set() for s in self.stops)
        return torch.full((input_ids.shape[0],), hit, dtype=torch.bool, device=input_ids.device)


PREFILL_CHUNK = 128  # prompt rows per forward before generate() takes over (engine.PREFILL_CHUNK, the same cost)


def feed_in_chunks(lm: LoadedModel, ids: torch.Tensor, cache: Any, stop: threading.Event | None,
                   chunk: int | None = None) -> bool:
    """Feed `ids` [1, n] into `cache`, at most `chunk` rows a forward, `stop` checked before each; False if it
    came first (what was fed stays in the cache)."""
    chunk = chunk or PREFILL_CHUNK
    with torch.inference_mode():
        for start in range(0, ids.shape[1], chunk):
            if stop is not None and stop.is_set():
                return False
            lm.forward(cache, input_ids=ids[:, start:start + chunk], use_cache=True, logits_to_keep=1)
    return True


def prefilled(lm: LoadedModel, ids: torch.Tensor, stop: threading.Event | None, beams: int = 1,
              chunk: int | None = None) -> dict[str, Any] | None:
    """generate() feeds the whole prompt in its first forward, whose time nothing bounds (a long prompt with 4 beams
    took minutes on 2 cores) and which no stopping criterion interrupts. So a prompt longer than `chunk` is fed
    here first, all but its last token, `chunk` rows a forward with `stop` checked between; generate() goes on
    from that cache (copied for each of `beams` beams). The kwargs that hand it over; None if `stop` came first."""
    n, chunk = ids.shape[1], chunk or PREFILL_CHUNK
    if stop is not None and stop.is_set():  # a job's later part (baselines after a stopped TEMPO run) starts no forward
        return None
    if n <= chunk + 1:
        return {}
    from transformers import DynamicCache
    cache = DynamicCache(config=lm.model.config)
    if not feed_in_chunks(lm, ids[:, :n - 1], cache, stop, chunk):
        return None
    if beams > 1:
        cache.batch_repeat_interleave(beams)
    return {cache_argument(lm.model): cache}


def default_events(lm: LoadedModel, s: TempoSettings, stop: threading.Event | None = None) -> Iterator[StepEvent]:
    """Greedy (or sampling with temperature/top-p/top-k) decoding through `model.generate`."""
    trace = new_trace(lm, s)
    out: queue.Queue[tuple[str, Any]] = queue.Queue()
    abandoned = threading.Event()  # the caller closed this generator early: generate() stops at its next token
    ids = torch.tensor([trace.prompt_token_ids], device=lm.device)
    kwargs: dict[str, Any] = dict(max_new_tokens=s.max_tokens, min_new_tokens=s.min_steps, do_sample=s.do_sample,
                                  logits_processor=LogitsProcessorList([_RecordTop(s.temperature, out)]),
                                  stopping_criteria=StoppingCriteriaList([_StopOnEvent(stop, abandoned)]),
                                  streamer=_Streamer(out), pad_token_id=lm.tokenizer.pad_token_id
                                  or next(iter(lm.eos_ids), None))
    if s.do_sample:
        kwargs.update(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k or None)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)

    def work() -> None:
        try:
            torch.manual_seed(s.seed)
            prompt = prefilled(lm, ids, stop)
            if prompt is not None:
                with torch.inference_mode():
                    lm.model.generate(ids, attention_mask=torch.ones_like(ids), **prompt, **kwargs)
            out.put(("end", None))
        except Exception as exc:  # noqa: BLE001 - re-raised in the caller's thread
            out.put(("error", exc))

    t0 = time.perf_counter()
    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    try:
        yield from _stream(lm, s, trace, out, t0)
    finally:  # also when a paused run (step mode) is dropped: no generate() goes on with nobody reading
        abandoned.set()
        worker.join()
    if stop is not None and stop.is_set():
        trace.stop_reason = stop_reason(stop)
    n = len(trace.steps)
    finalise_text(trace, lm.decode, s.show_token_ids)
    # generate() makes n tokens in n forwards: the prefill yields the first, each later token one more
    summarise(trace, (time.perf_counter() - t0) * 1e3, max(1, n), len(trace.prompt_token_ids) + max(0, n - 1), n)
    yield StepEvent(n - 1, trace, [], done=True)


def _stream(lm: LoadedModel, s: TempoSettings, trace: Trace, out: "queue.Queue[tuple[str, Any]]", t0: float
            ) -> Iterator[StepEvent]:
    """An event per token generate() hands back, until it ends."""
    trace.stop_reason = "max_tokens"
    pending: tuple[torch.Tensor, list[int], list[float]] | None = None
    last = t0
    while True:
        kind, payload = out.get()
        if kind == "error":
            raise payload
        if kind == "end":
            break
        if kind == "dist":
            pending = payload
            continue
        token = payload
        probs, top_i, top_p = pending if pending is not None else (None, [], [])
        now = time.perf_counter()
        step = len(trace.steps)
        if token in lm.eos_ids and step >= s.min_steps:
            trace.stop_reason = "eos"
            continue
        prob = float(probs[token]) if probs is not None else 1.0
        alts = [{"token_id": i, "text": lm.decode([i]), "prob": p} for i, p in zip(top_i, top_p) if i != token]
        trace.steps.append(Step(step, len(trace.prompt_token_ids) + step, 0.0, None,
                                [Candidate(token, lm.decode([token]), prob, row=len(trace.prompt_token_ids) + step)],
                                alternatives=alts, time_ms=(now - last) * 1e3))
        last = now
        finalise_text(trace, lm.decode, s.show_token_ids)
        yield StepEvent(step, trace, [])


def beam_search(lm: LoadedModel, prompt_ids: list[int], num_beams: int, max_new_tokens: int,
                fixed_length: bool = True, stop: threading.Event | None = None) -> dict[str, Any]:
    """Plain HF beam search (benchmarks use a fixed length; the baselines view lets EOS end beams). `stop` (Stop,
    the time limit, a client gone) ends it at its next token: `stopped` says so."""
    ids = torch.tensor([prompt_ids], device=lm.device)
    t0 = time.perf_counter()
    prompt = prefilled(lm, ids, stop, beams=num_beams)
    if prompt is None:
        return {"sequences": [], "scores": [], "seconds": time.perf_counter() - t0, "steps": 0,
                "stopped": stop_reason(stop)}
    with torch.inference_mode():
        out = lm.model.generate(ids, attention_mask=torch.ones_like(ids), **prompt, num_beams=num_beams,
                                num_return_sequences=num_beams, max_new_tokens=max_new_tokens,
                                min_new_tokens=max_new_tokens if fixed_length else 0,
                                do_sample=False, early_stopping=False, output_scores=True,
                                stopping_criteria=StoppingCriteriaList([_StopOnEvent(stop)]),
                                return_dict_in_generate=True, temperature=None, top_p=None, top_k=None,
                                pad_token_id=lm.tokenizer.pad_token_id or next(iter(lm.eos_ids), None))
    seconds = time.perf_counter() - t0
    n = len(prompt_ids)
    return {"sequences": [seq[n:].tolist() for seq in out.sequences],
            "scores": out.sequences_scores.tolist() if out.sequences_scores is not None else [],
            "seconds": seconds, "steps": len(out.scores),
            "stopped": stop_reason(stop) if stop is not None and stop.is_set() else None}
