"""The TEMPO step loop: one generator that yields an event per logical step (`modes.generate` picks the mode).

Per step: select every candidate above the threshold from the current next-token distribution, feed all of
them in ONE forward at ONE shared position id (siblings masked from each other, one KV cache), score earlier
sets by the attention this step pays them (retroactive pruning), and form the next distribution as the
probability-weighted mixture of the live siblings' distributions.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
import time
import weakref
from typing import Iterator

import torch
from transformers import DynamicCache

from .attention import record_attention
from .config import TempoSettings
from .events import StepEvent, encode_prompt, new_trace
from .batch import Batcher, ForwardRequest, NextSet, PaidAttention
from .batchgraph import batch_graphs
from .fastpath import fast_rows, pad_set, padded_mask, rows_to_feed, unpad
from .kvstore import SlotCache, kv_store, slot_cache
from .graphs import BUCKETS, bucket, copy_rows, forget_rows, graphs_unavailable, slot_pool, static_mask
from .layout import Layout, full_mask, step_mask
from .limits import stop_reason
from .model import LoadedModel
from .prefix import MIN_SHARED, PrefixStore, prefix_store, shared_length
from .pruning import RetroactivePruner, layer_weights
from .schedule import pruning_threshold
from .selection import NEAR_MISSES, mixture, select_forced, select_with_near_misses, to_probs
from .trace import Candidate, RunningText, Step, Trace, clean_token_ids, summarise

PREFILL_CHUNK = 128  # prompt rows per forward when runs share the model (bench/README.md: a chunk's cost)


class ParallelSequence:
    """The model's view of one TEMPO run: the layout of rows, the one KV cache, and the forward pass."""

    def __init__(self, lm: LoadedModel, s: TempoSettings, prompt_ids: list[int], static_cache: bool = False,
                 cuda_graphs: bool = False, shared_kv: bool = False):
        """`static_cache`: a preallocated `StaticCache` borrowed from the model's pool (graphs.SlotPool), every
        forward at explicit cache positions with a mask over the whole buffer (the shape a captured CUDA graph
        needs); same results. `cuda_graphs`: also replay sets from graphs captured on that cache, where this
        model and run allow it (`graphs_off` says why not). `shared_kv`: otherwise keep the cache in a slot of the
        model's K/V store where it has one (kvstore.py: what batched forwards read and write in one go).
        `close()` gives the cache back."""
        self.lm, self.s = lm, s
        self.layout = Layout.for_prompt(prompt_ids, shared_positions=s.use_custom_rope)
        self.graphs_off = graphs_unavailable(lm, s) if cuda_graphs else "not requested"
        self.slot, self._release, self.static_len, self.graphs, self.cache = None, None, None, None, None
        if not s.disable_kv_cache and (static_cache or self.graphs_off is None):
            # room for sets of one token (and a bucket's pad rows); `fit` moves to a larger slot when needed
            if not self._borrow(len(prompt_ids) + s.max_tokens + BUCKETS[-1], rows_filled=0):
                self.graphs_off = self.graphs_off or f"all {slot_pool(lm).limit} static-cache slots are in use"
        if self.cache is None and not s.disable_kv_cache:
            self.cache = slot_cache(lm) if shared_kv else DynamicCache(config=lm.model.config)
        self.forward_passes = 0
        self.tokens_processed = 0
        self.graphed_steps = 0
        self.padded_rows = 0  # pad rows fed besides the real tokens (a CPU 3-row set, a graph's bucket)
        self.capture = (layer_weights(lm.model.config.num_hidden_layers, s)
                        if s.use_retroactive_pruning and s.mode == "tempo" else {})

    def _borrow(self, rows: int, rows_filled: int) -> bool:
        """Move to a pool slot of at least `rows` rows, the first `rows_filled` cached rows copied over; False when
        none is free (this run then stays where it is)."""
        pool = slot_pool(self.lm)
        slot = pool.take(self.lm, rows, graphs=self.graphs_off is None)
        if slot is None:
            return False
        if rows_filled:
            copy_rows(self.cache, slot.cache, rows_filled)
        self.close()  # the old slot goes back
        self.slot, self.cache, self.static_len = slot, slot.cache, slot.capacity
        self.graphs = slot.graphs if self.graphs_off is None else None
        self._release = weakref.finalize(self, pool.give, slot)  # also if a run is dropped unfinished
        return True

    def fit(self, rows: int, rows_filled: int) -> None:
        """Before a forward that writes up to row `rows` of a static cache holding `rows_filled`: if they do not
        fit, move to a slot twice as large (or more), else to a dynamic cache (the run's graphs end there)."""
        if self.static_len is None or rows <= self.static_len:
            return
        if self._borrow(max(rows, 2 * self.static_len), rows_filled):
            return
        dynamic = DynamicCache(config=self.lm.model.config)
        copy_rows(self.cache, dynamic, rows_filled)
        self.close()
        self.slot, self.cache, self.static_len, self.graphs = None, dynamic, None, None
        self.graphs_off = self.graphs_off or "the run outgrew its cache and every static-cache slot was in use"

    def close(self) -> None:
        """Give the static cache (and its graphs) back to the pool, or the K/V store's slot back to the store."""
        if self._release is not None:
            self._release()
        if isinstance(self.cache, SlotCache):
            self.cache.close()

    def _forward(self, ids: list[int], positions: list[int], mask: torch.Tensor | None, keep: int,
                 record: bool = True, padding: int = 0):
        """One forward of `ids`; logits of the last `keep` rows, and (if `record` and pruning is on) the
        attention those rows pay, never more rows than that."""
        dev = self.lm.device
        layers = self.capture.keys() if record else ()
        extra = {}
        if self.static_len is not None:  # the fed rows' cache slots, and the mask over the whole buffer
            first = self.layout.rows - (len(ids) - padding)
            extra["cache_position"] = torch.arange(first, first + len(ids), device=dev)
            mask = static_mask(mask, first, len(ids), dev)
        mask = None if mask is None else mask.to(dev)
        with torch.inference_mode(), fast_rows(self.lm.model), record_attention(layers, last_rows=keep) as rec:
            out = self.lm.forward(input_ids=torch.tensor([ids], device=dev),
                                  position_ids=torch.tensor([positions], device=dev),
                                  attention_mask=mask, cache=self.cache, use_cache=self.cache is not None,
                                  logits_to_keep=keep, **extra)
        self.forward_passes += 1
        self.tokens_processed += len(ids) - padding  # real tokens; a CPU pad row is not one
        self.padded_rows += padding
        return out.logits[0], rec.weights

    def drop_tail(self, n: int) -> None:
        """Forget the last `n` cached rows (a static cache: `graphs.forget_rows`)."""
        if self.static_len is None:
            self.cache.crop(-n)
        else:
            forget_rows(self.cache, n)

    def prefill(self) -> torch.Tensor:
        """Feed the prompt exactly once; returns the last row's logits."""
        return self._forward(self.layout.tokens, self.layout.positions, None, keep=1, record=False)[0][-1]

    def prefill_with(self, steps: list[Step]) -> torch.Tensor:
        """Feed the prompt and the sets of recorded `steps` in ONE forward (each row masked as it was when
        the run fed it; pruning replayed); returns the last set's logits [k, V]. Used to resume from a prefix."""
        for st in steps:
            self.layout.append_set([c.token_id for c in st.candidates], st.position)
            self.replay_pruning(steps, st.step)
        self.fit(self.layout.rows, rows_filled=0)
        mask = full_mask(self.layout, self.s.allow_intraset_token_visibility, self.lm.device)
        k = len(steps[-1].candidates)
        return self._forward(self.layout.tokens, self.layout.positions, mask, keep=k, record=False)[0]

    def replay_pruning(self, steps: list[Step], step: int) -> None:
        """Hide the rows a recorded run pruned right after `step` (its pruning decisions come after the forward)."""
        for past in steps[:step + 1]:
            for c in past.candidates:
                if c.pruned_at == step:
                    self.layout.kill(c.row)

    @property
    def batchable(self) -> bool:
        """Whether this run's forwards may share a forward with other runs' (batch.py): a DynamicCache, no graphs."""
        return self.cache is not None and self.static_len is None and self.graphs is None

    def reuse_prefix(self, store: PrefixStore) -> int:
        """Copy the longest prefix of the prompt that `store` holds into this run's (empty) cache; the rows copied."""
        rows, kv = store.longest(self.layout.tokens)
        for layer, (keys, values) in enumerate(kv):  # `update` copies them (a slot's write, a DynamicCache's cat)
            self.cache.update(keys[:, :, :rows], values[:, :, :rows], layer)
        return rows

    def prefill_requests(self, chunk: int, start: int = 0) -> Iterator[ForwardRequest]:
        """The prompt from row `start` (those before are in the cache) as forwards of at most `chunk` rows each,
        each causal over the cache before it (the same cache as one prefill); the last one's logits are the
        prompt's. A long prompt thus takes turns."""
        tokens, positions = self.layout.tokens, self.layout.positions
        for first in range(start, len(tokens), chunk):
            yield ForwardRequest(self, tokens[first:first + chunk], positions[first:first + chunk], None, keep=1,
                                 record=False, ends_prompt=first + chunk >= len(tokens))

    def plan_set(self, token_ids: list[int], position: int) -> ForwardRequest:
        """Append one set at one position and return the forward that feeds it: already served where it replays a
        CUDA graph or re-feeds the whole sequence (no KV cache), else pending (`serve`, or a batch's forward).
        Its logits are [k, V]; its attention {layer: [k, rows]} for the layers pruning reads."""
        k, dev = len(token_ids), self.lm.device
        visible = self.s.allow_intraset_token_visibility
        past_alive = list(self.layout.alive)
        self.fit(len(past_alive) + (bucket(k) or k), rows_filled=len(past_alive))  # the set and its pad rows
        rows = self.layout.append_set(token_ids, position)
        positions = self.layout.positions[-k:]
        req = ForwardRequest(self, token_ids, positions, None, keep=k, rows=rows)
        if self.graphs is not None and self.graphs.usable(k, self.layout.rows):
            try:
                req.logits, req.attention = self.graphs.feed(token_ids, positions, past_alive, visible,
                                                             tuple(self.capture))
            except RuntimeError as exc:  # a model the capture cannot take: this run goes on eagerly
                self.graphs, self.graphs_off = None, f"capture failed ({str(exc).splitlines()[0][:120]})"
            else:
                self.forward_passes += 1
                self.tokens_processed += k
                self.graphed_steps += 1
                self.padded_rows += bucket(k) - k
                return req
        if self.cache is None:
            mask = full_mask(self.layout, visible, dev)
            req.logits, req.attention = self._forward(self.layout.tokens, self.layout.positions, mask, keep=k)
        elif not (k == 1 and all(past_alive)):  # plain decoding keeps HF's mask-free fast path (mask None)
            req.mask = step_mask(past_alive, k, visible, torch.device("cpu"))  # a batch lays masks out on the CPU
        return req

    def serve(self, req: ForwardRequest) -> None:
        """Run `req` in a forward of its own. On CPU fp32 a 3-row set is fed as 4 (fastpath.py), the pad row a
        copy of the last sibling that no sibling sees, dropped from the cache after."""
        k = len(req.token_ids)
        pad = rows_to_feed(self.lm.model, k) - k if req.mask is not None else 0
        if not pad:
            req.logits, req.attention = self._forward(req.token_ids, req.positions, req.mask, req.keep, req.record)
            return
        ids, positions, mask = pad_set(req.token_ids, req.positions, padded_mask(req.mask, pad))
        logits, attention = self._forward(ids, positions, mask, keep=req.keep + pad, record=req.record, padding=pad)
        self.drop_tail(pad)  # a static cache's next write then goes into the pad row's slot
        req.logits, req.attention = unpad(logits, attention, k)

    def feed(self, token_ids: list[int], position: int) -> tuple[list[int], torch.Tensor, dict[int, torch.Tensor]]:
        """Append one set at one position and feed it in a forward of its own; returns (rows, logits [k, V],
        {layer: attention [k, rows]} for the layers pruning reads, empty without pruning)."""
        req = self.plan_set(token_ids, position)
        if req.logits is None:
            self.serve(req)
        return req.rows, req.logits, req.attention


def repaired_text(lm: LoadedModel, token_id: int, text: str, context: list[int]) -> str | None:
    """For display: a token that decodes to U+FFFD alone is a piece of a multi-byte character. Decoded after the
    main path's last tokens it may complete one (shown as that character); otherwise it waits for the rest
    ("…"). None for ordinary tokens."""
    if "\ufffd" not in text:
        return None
    before = lm.decode(context).rstrip("\ufffd")
    joint = lm.decode(context + [token_id])
    tail = joint[len(before):] if joint.startswith(before) else ""
    return tail if tail and "\ufffd" not in tail else "…"


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


def warm_prompt_head(lm: LoadedModel, s: TempoSettings) -> int:
    """Feed once the head that every prompt of settings like `s` starts with (the chat template up to the user's
    words) and keep it in the model's prefix store. Runs copy a prefix only from prompts fed before they joined, so
    without this a class pressing Generate together would each feed the template. Returns the rows kept (0 where
    prompts share no head worth keeping, e.g. raw prompts)."""
    a, b = (encode_prompt(lm, dataclasses.replace(s, prompt=p))[1] for p in ("a", "b"))
    head = a[:shared_length(a, b, len(b))]
    if len(head) < MIN_SHARED:
        return 0
    seq = ParallelSequence(lm, s, head)
    try:
        seq.prefill()
        prefix_store(lm).put(head, seq.cache)
    finally:
        seq.close()
    return len(head)


def warm_batch_graphs(lm: LoadedModel, s: TempoSettings, runs: tuple[int, ...] = (2, 4, 8, 16, 32),
                      sizes: tuple[int, ...] = (1, 2, 4)) -> int:
    """On a GPU, before any visitor: make the batch forwards a class of runs like `s` will use (batchgraph.py: one
    capture per shape, and the fused kernels compiled, ~15 s, on the first), so a class's first ticks do not wait for
    them. Serves, on this thread (the model's), `n` short runs for each `n` in `runs` (while the K/V store has the
    slots) and each set size in `sizes`. Returns the shapes there are (0 where there are no batch graphs: a CPU)."""
    graphs = batch_graphs(lm)
    if graphs is None:
        return 0
    failures: list[BaseException] = []
    for n in runs:
        if n > kv_store(lm).free_slots:
            break
        for k in sizes:
            warm = s.replace(selection_threshold=0.0, max_parallel_tokens=k, max_tokens=2, min_steps=2)
            batcher = Batcher(None)  # its ticks driven here
            for _ in range(n):
                batcher.add(lambda: tempo_events(lm, warm, cuda_graphs=False, cooperative=True),
                            lambda event, error: failures.append(error) if error is not None else None)
            while batcher.active:
                batcher.tick()
            if failures:
                raise failures[0]
    return len(graphs.graphs)


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
    `cuda_graphs`: replay each set from a captured CUDA graph where the model allows (graphs.py: on CUDA, one
    device, unless `lm.cuda_graphs` is off). `trace.stats["cuda_graphs"]` says "on" or why not.
    `cooperative`: also yield each pending forward (a `ForwardRequest`: the prompt in chunks of `prefill_chunk`
    rows, then each set) for the caller to serve, alone or batched with other runs' (batch.Batcher); the run
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
        store = prefix_store(lm)
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
