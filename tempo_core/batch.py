"""A class in one forward: many runs' pending rows fed to the model together.

A run made with `cooperative=True` (engine.tempo_events) yields a `ForwardRequest` wherever it needs the model:
each chunk of its prompt, then each set. A `Batcher` drives many such runs on the model's thread in ticks: it
advances every run to its next request, feeds all their rows in ONE forward (the runs' rows side by side, each
at its own positions, so the linear layers read the weights once), and each run resumes with its own logits.
In attention every run keeps to its own KV cache and its own TEMPO mask (`BatchForward.attend`); selection,
merging and pruning stay in the runs. On a CPU a forward of a small model is bound by reading its weights, so
rows added to it cost little: this is what lets one model serve a class.

On a GPU a forward of a few rows is bound by kernel launches instead, so there the runs whose caches are in the K/V
store (kvstore.py) go in a forward of a fixed shape replayed from a CUDA graph (batchgraph.py). A batch also takes
for all its runs at once what each run would otherwise launch kernels and sync for on its own: the next
distribution and its top-k (`NextSet`, every batch), and the scores pruning reads (`PaidAttention`, a captured
forward). The runs use them as they would have computed them.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol

import torch

from .attention import AttentionRecorder, attend, batched_attention, fill_causal, group_attention
from .batchgraph import batch_graphs
from .events import StepEvent
from .fastpath import fast_rows
from .kvstore import KVStore, SlotCache
from .pruning import AttentionPaid
from .selection import next_distributions


class RunSequence(Protocol):
    """What a batch needs of a run (engine.ParallelSequence, which imports this module)."""
    lm: Any
    cache: Any  # its DynamicCache
    capture: dict[int, float]  # the layers whose attention pruning reads
    forward_passes: int
    tokens_processed: int

    @property
    def batchable(self) -> bool: ...

    def serve(self, req: "ForwardRequest") -> None: ...


@dataclass
class ForwardRequest:
    """Rows one run needs fed: their token ids and position ids, their mask over the run's cache once they are in
    it ([1, 1, q, cached + q], True = may attend; None = causal), how many last rows' logits to keep, and whether
    to record the attention pruning reads. The mask is on the CPU (a batch lays it out there). Served, it holds
    `logits` [keep, V] and `attention` {layer: [keep, kv]}."""
    seq: RunSequence
    token_ids: list[int]
    positions: list[int]
    mask: torch.Tensor | None
    keep: int
    record: bool = True
    ends_prompt: bool = False  # the prompt's last chunk: the run plans its first set as soon as this is served
    rows: list[int] = field(default_factory=list)  # the rows of the run's layout these tokens fill
    next_set: NextSet | None = None  # set: whoever serves this also takes the run's next distribution and top-k
    paid: PaidAttention | None = None  # set: a batch that can also takes the scores the run's pruning reads
    logits: torch.Tensor | None = None
    attention: dict[int, torch.Tensor] = field(default_factory=dict)


@dataclass
class PaidAttention:
    """What a run's pruning reads of its set's attention (`pruning.attention_paid`: `weights` per layer, and each
    layer's share where `by_layer`), asked of a batch that takes every run's at once (batchgraph.py). Served:
    `result`; left None, the run takes its own from `ForwardRequest.attention`."""
    weights: dict[int, float]
    by_layer: bool
    result: AttentionPaid | None = None


@dataclass
class NextSet:
    """What a run chooses its next set from, asked of a batch (`selection.next_distributions`, all runs at once):
    the mixture of its kept rows' softmax (`weights`, at `temperature`), and that distribution's `top` most probable
    tokens. Served: `probs` [V] and `top_k` (probabilities, ids)."""
    weights: list[float]
    temperature: float
    top: int
    probs: torch.Tensor | None = None
    top_k: tuple[list[float], list[int]] | None = None


GROUP_MAX_ROWS = 8  # runs feeding more rows (a prompt's chunk) attend on their own
GROUP_SLACK = 1.5  # a group's longest cache is at most this times its shortest (+ 32 rows): little padding


class BatchForward:
    """What attention needs while one forward carries several runs' rows: where each run's rows are, and its own
    cache, mask and attention recorder. Runs of a few rows with caches of similar length attend together, in one
    padded call per layer (`_Group`); the others one by one."""

    def __init__(self, requests: list[ForwardRequest], device: torch.device):
        self.requests = requests
        self.bounds, first = [], 0
        for req in requests:
            self.bounds.append((first, first + len(req.token_ids)))
            first += len(req.token_ids)
        self.recorders = [AttentionRecorder(frozenset(req.seq.capture) if req.record else frozenset(), req.keep)
                          for req in requests]
        lengths = [req.seq.cache.get_seq_length() + len(req.token_ids) for req in requests]  # cache after the rows
        stores = [_store(req.seq.cache, lengths[i]) for i, req in enumerate(requests)]
        few = sorted((i for i, req in enumerate(requests) if len(req.token_ids) <= GROUP_MAX_ROWS),
                     key=lambda i: (stores[i] is None, lengths[i]))
        self.groups: list[_Group] = []
        self.alone = [i for i, req in enumerate(requests) if len(req.token_ids) > GROUP_MAX_ROWS]
        while few:  # runs of one kind (in the K/V store or not) whose caches are of similar length
            n = 1
            while (n < len(few) and stores[few[n]] is stores[few[0]]
                   and lengths[few[n]] <= GROUP_SLACK * lengths[few[0]] + 32):
                n += 1
            members, few = few[:n], few[n:]
            if n == 1:
                self.alone += members
            else:
                self.groups.append(_Group(members, self, lengths, stores[members[0]], device))
        self.masks = {i: None if requests[i].mask is None else requests[i].mask.to(device) for i in self.alone}

    def attend(self, layer: int | None, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               scaling: float) -> torch.Tensor:
        """Each run's queries over its own cache (its new keys and values appended first), under its own mask."""
        out = query.new_empty(1, query.shape[2], query.shape[1], query.shape[3])  # [1, rows, heads, dim]
        for i in self.alone:
            req, (a, b) = self.requests[i], self.bounds[i]
            keys, values = req.seq.cache.update(key[:, :, a:b], value[:, :, a:b], layer)
            out[:, a:b] = attend(layer, query[:, :, a:b], keys, values, self.masks[i], scaling, self.recorders[i])
        for group in self.groups:
            group.attend(layer, query, key, value, scaling, out)
        return out


class _Group:
    """Runs that attend in one call: their queries gathered into [runs, heads, q, dim] (q = the most rows any of
    them feeds), their caches padded to the longest, each run's own mask in its slice and nothing past it. With
    their caches in one K/V store (kvstore.py) the new rows go in with one write per layer and the caches come
    out with one gather; otherwise each run's cache is appended to and copied in on its own."""

    def __init__(self, members: list[int], batch: BatchForward, lengths: list[int], store: KVStore | None,
                 device: torch.device):
        self.members, self.batch, self.store = members, batch, store
        self.q = max(len(batch.requests[i].token_ids) for i in members)
        self.lengths = [lengths[i] for i in members]
        self.kv = max(lengths[i] for i in members)
        mask = torch.zeros(len(members), 1, self.q, self.kv, dtype=torch.bool)
        slots, rows, cache_slots, cache_rows = [], [], [], []
        for j, i in enumerate(members):
            req, (a, b) = batch.requests[i], batch.bounds[i]
            q, kv = b - a, lengths[i]
            if req.mask is not None:
                mask[j, 0, :q, :kv] = req.mask[0, 0]
            else:  # causal, bottom-right aligned (one row: the whole cache)
                fill_causal(mask[j, 0, :q], kv)
            mask[j, 0, q:, 0] = True  # pad query rows see one key (no NaN); their output is dropped
            slots += [j * self.q + r for r in range(q)]
            rows += list(range(a, b))
            if store is not None:  # where the rows go in the store: the run's slot, after its cached rows
                cache_slots += [req.seq.cache.slot] * q
                cache_rows += list(range(kv - q, kv))
        gather = [batch.bounds[i][0] + min(r, batch.bounds[i][1] - batch.bounds[i][0] - 1)
                  for i in members for r in range(self.q)]
        self.mask = mask.to(device)
        self.gather = torch.tensor(gather, device=device)  # padded query slot -> row of the forward
        self.slots, self.rows = torch.tensor(slots, device=device), torch.tensor(rows, device=device)
        if store is not None:
            self.cache_slots = torch.tensor(cache_slots, device=device)
            self.cache_rows = torch.tensor(cache_rows, device=device)
            self.member_slots = torch.tensor([batch.requests[i].seq.cache.slot for i in members], device=device)
            self.caches = [(batch.requests[i].seq.cache, batch.bounds[i][1] - batch.bounds[i][0]) for i in members]

    def _keys_values(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The members' new keys/values appended to their caches, and their caches padded: [runs, kv_heads, kv, dim]."""
        if self.store is not None:
            self.store.write(layer, self.cache_slots, self.cache_rows, key[0].transpose(0, 1).index_select(0, self.rows),
                             value[0].transpose(0, 1).index_select(0, self.rows))  # [rows, kv_heads, dim]
            for cache, q in self.caches:
                cache.layers[layer].length += q
            return self.store.read(layer, self.member_slots, self.kv)
        g, (_, kv_heads, _, dim) = len(self.members), key.shape
        keys = key.new_zeros(g, kv_heads, self.kv, dim)
        values = value.new_zeros(g, kv_heads, self.kv, dim)
        for j, i in enumerate(self.members):
            (a, b), req = self.batch.bounds[i], self.batch.requests[i]
            k, v = req.seq.cache.update(key[:, :, a:b], value[:, :, a:b], layer)
            keys[j, :, :k.shape[2]], values[j, :, :v.shape[2]] = k[0], v[0]
        return keys, values

    def attend(self, layer: int | None, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               scaling: float, out: torch.Tensor) -> None:
        batch, g = self.batch, len(self.members)
        _, heads, _, dim = query.shape
        keys, values = self._keys_values(layer, key, value)
        q = query[0].index_select(1, self.gather).view(heads, g, self.q, dim).transpose(0, 1)
        recorders = [batch.recorders[i] for i in self.members]
        result, means = group_attention(q, keys, values, self.mask, scaling,
                                        record=any(layer in rec.layers for rec in recorders))
        for j, (i, rec) in enumerate(zip(self.members, recorders)):
            if layer in rec.layers:
                (a, b), keep = batch.bounds[i], batch.requests[i].keep
                rec.weights[layer] = means[j, b - a - keep:b - a, :self.lengths[j]]
        result = result.transpose(1, 2).reshape(g * self.q, heads, dim)
        out[0].index_copy_(0, self.rows, result.index_select(0, self.slots))


def _store(cache: Any, rows: int) -> KVStore | None:
    """The K/V store `cache` lives in, if it can hold `rows` rows there (`SlotCache.room_for`)."""
    return cache.room_for(rows) if isinstance(cache, SlotCache) else None


def forward_batch(requests: list[ForwardRequest]) -> int:
    """Serve `requests` (runs on one model, each with its own DynamicCache) in one forward; a lone request gets a
    forward of its own (`ParallelSequence.serve`: the single-run path, unchanged). On a GPU the runs that fit a
    captured forward of a fixed shape go in that (batchgraph.py) and the others in a second, eager, forward.
    Returns how many runs attended in groups."""
    graphs = batch_graphs(requests[0].seq.lm) if len(requests) > 1 else None
    left = graphs.serve(requests) if graphs is not None else requests
    grouped = len(requests) - len(left)
    if len(left) == 1:
        left[0].seq.serve(left[0])
    elif left:
        grouped += _eager_batch(left)
    _next_sets([req for req in requests if req.next_set is not None])
    return grouped


def _next_sets(requests: list[ForwardRequest]) -> None:
    """Every run's next distribution and top-k from its served logits, for all of `requests` at once."""
    if len(requests) < 2:
        return  # a lone run takes its own, as it does outside a batch
    asked = [req.next_set for req in requests]
    dists, tops = next_distributions([req.logits for req in requests], [a.weights for a in asked],
                                     [a.temperature for a in asked], [a.top for a in asked])
    for j, a in enumerate(asked):
        a.probs, a.top_k = dists[j], tops[j]


def _eager_batch(requests: list[ForwardRequest]) -> int:
    """Several runs' rows in one eager forward, attention split by `BatchForward`."""
    lm = requests[0].seq.lm
    dev = lm.device
    batch = BatchForward(requests, dev)
    keep = [i for req, (a, b) in zip(requests, batch.bounds) for i in range(b - req.keep, b)]
    ids = [t for req in requests for t in req.token_ids]
    positions = [p for req in requests for p in req.positions]
    placeholder = torch.ones(1, 1, 1, 1, dtype=torch.bool, device=dev)  # a 4D mask: HF passes it on untouched
    with torch.inference_mode(), fast_rows(lm.model), batched_attention(batch):
        out = lm.forward(input_ids=torch.tensor([ids], device=dev), position_ids=torch.tensor([positions], device=dev),
                         attention_mask=placeholder, cache=None, use_cache=False,
                         logits_to_keep=torch.tensor(keep, device=dev))
    logits = out.logits[0].split([req.keep for req in requests])
    for req, rec, part in zip(requests, batch.recorders, logits):
        req.logits, req.attention = part, rec.weights
        req.seq.forward_passes += 1
        req.seq.tokens_processed += len(req.token_ids)
    return sum(len(group.members) for group in batch.groups)


def serve_alone(items: Iterator[StepEvent | ForwardRequest]) -> Iterator[StepEvent]:
    """A cooperative run's events, each of its forwards served alone as it comes (one run, no batcher)."""
    for item in items:
        if isinstance(item, ForwardRequest):
            item.seq.serve(item)
        else:
            yield item


OnEvent = Callable[[StepEvent | None, BaseException | None], None]


@dataclass
class _Run:
    make: Callable[[], Iterator[StepEvent | ForwardRequest]]
    on_event: OnEvent
    waited: Callable[[float], None] | None
    pause_after: Callable[[StepEvent], bool] | None
    paused: Callable[[], None] | None
    events: Iterator[StepEvent | ForwardRequest] | None = None
    pending: ForwardRequest | None = None
    last_seen: float = field(default_factory=lambda: time.monotonic())
    own_s: float = 0.0


class Batcher:
    """Serves runs on the model's thread (`executor`, one worker) in ticks: each tick advances every run by one
    step, their rows in one forward of at most `max_rows` rows (runs left out go first next tick), and any other
    work a run does (an analysis piece, a mode that does its own forwards) as one unit of its turn. Runs join and
    leave between ticks; between two ticks the executor runs whatever else was queued on it."""

    def __init__(self, executor: Executor | None, max_rows: int = 256, early_first_sets: bool = True):
        """`executor` None: nothing is scheduled, the caller drives `tick()` itself (the server's start warming the
        batch forwards, benches). `early_first_sets`: the tick that ends a run's prompt also feeds its first set (see
        `tick`); off, that set waits for the next tick (bench/bench_join.py compares the two)."""
        self.executor, self.max_rows, self.early_first_sets = executor, max_rows, early_first_sets
        self._runs: deque[_Run] = deque()
        self._lock = threading.Lock()
        self._scheduled = False
        self.ticks = 0
        self.batched_forwards = 0
        self.rows = 0
        self.grouped_runs = 0  # runs' turns whose attention went in a padded group call (BatchForward)

    def add(self, make: Callable[[], Iterator[StepEvent | ForwardRequest]], on_event: OnEvent,
            waited: Callable[[float], None] | None = None, pause_after: Callable[[StepEvent], bool] | None = None,
            paused: Callable[[], None] | None = None) -> None:
        """Serve the run `make()` (called on the model thread) until it ends. `on_event(event, error)` gets each of
        its events on the model thread, and (None, error) once if it fails; `waited(seconds)` the time it spent
        behind other runs' work. With `pause_after`, the run leaves after an event for which it is true (step
        mode: one press), and `paused()` is called; adding `lambda: the same iterator` resumes it."""
        run = _Run(make, on_event, waited, pause_after, paused)
        with self._lock:
            self._runs.append(run)
            if self._scheduled or self.executor is None:
                return
            self._scheduled = True
        self.executor.submit(self._serve)

    @property
    def alone(self) -> bool:
        """Asked while a run starts (inside its `make`, where it is counted): no other run is being served, so it
        may keep CUDA graphs and take its turns alone (on an H200 a graphed run beats batching only while it is
        alone, bench/README.md); among others it goes eager and batches with them."""
        return self.active <= 1

    @property
    def active(self) -> int:
        with self._lock:
            return len(self._runs)

    def _serve(self) -> None:
        try:
            self.tick()
        except BaseException as exc:  # noqa: BLE001 - a fault of the batcher itself ends every run, not the server
            with self._lock:
                runs, self._runs = list(self._runs), deque()
            for run in runs:
                _report(run, exc)
        finally:
            with self._lock:
                self._scheduled = bool(self._runs)
            if self._scheduled:
                self.executor.submit(self._serve)  # other work queued on the executor meanwhile goes first

    def tick(self) -> None:
        """Advance every run to its next forward (delivering the events on the way), then serve those forwards
        in one. Runs whose prompt that forward ended then plan their first sets, fed in a second forward: a run's
        first step shows one tick after it joins, not two (with a class of 30 a tick is most of a second)."""
        with self._lock:
            runs = list(self._runs)
        batch: list[_Run] = []  # runs whose pending forward goes in this tick's one forward
        rows, left_out, gone = 0, [], []
        for run in runs:
            if rows >= self.max_rows:
                left_out.append(run)
                continue
            run.own_s = 0.0
            rows += self._turn(run, batch, gone)
        self._feed(batch, rows, gone)
        starting: list[_Run] = []
        rows = 0
        for run in batch:
            if self.early_first_sets and run not in gone and run.pending.ends_prompt and rows < self.max_rows:
                rows += self._turn(run, starting, gone)
        self._feed(starting, rows, gone)
        self.ticks += 1
        now = time.monotonic()
        for run in runs:
            if run in left_out:
                continue
            if run.waited is not None:
                run.waited(max(0.0, now - run.last_seen - run.own_s))
            run.last_seen = now
        with self._lock:
            for run in gone:
                self._runs.remove(run)
            for run in reversed(left_out):  # first in line next tick
                self._runs.remove(run)
                self._runs.appendleft(run)

    def _turn(self, run: _Run, batch: list[_Run], gone: list[_Run]) -> int:
        """Advance `run` (`gone` if it leaves) and put its pending forward in `batch`, or serve it now if it cannot
        share one; the rows it adds to `batch`. Its time counts in `run.own_s`."""
        t0 = time.monotonic()
        rows = 0
        if not self._advance(run):
            gone.append(run)
        elif run.pending is not None and run.pending.logits is None:
            if run.pending.seq.batchable:
                batch.append(run)
                rows = len(run.pending.token_ids)
            else:
                run.pending.seq.serve(run.pending)  # a static cache or graphs: a forward of its own
        run.own_s += time.monotonic() - t0
        return rows

    def _feed(self, batch: list[_Run], rows: int, gone: list[_Run]) -> None:
        """Serve the pending forwards of `batch` in one forward (one per model); a failure ends those runs."""
        if not batch:
            return
        t0 = time.monotonic()
        shares = [len(run.pending.token_ids) / max(1, rows) for run in batch]
        try:
            for group in _by_model([run.pending for run in batch]):
                self.grouped_runs += forward_batch(group)
        except BaseException as exc:  # noqa: BLE001 - every run in the failed forward reports it
            for run in batch:
                _report(run, exc)
                gone.append(run)
        spent = time.monotonic() - t0
        for run, share in zip(batch, shares):
            # a run's clock counts its rows' share of the forward; the rest is other runs' work it waited behind
            # (beside another run's 128-row prompt chunk a 2-row step pays 2/130 of the forward)
            run.own_s += spent * share
        self.batched_forwards += 1
        self.rows += rows

    def _advance(self, run: _Run) -> bool:
        """Resume `run` until it asks for a forward, ends or pauses; False once it has left. After a forward it
        resumes through one event to its next request; otherwise one event ends its turn (one unit per tick)."""
        served = run.pending is not None
        run.pending = None
        try:
            if run.events is None:
                run.events = run.make()
            while True:
                item = next(run.events)
                if isinstance(item, ForwardRequest):
                    run.pending = item
                    return True
                run.on_event(item, None)
                if item.done:
                    return False
                if run.pause_after is not None and run.pause_after(item):
                    if run.paused is not None:
                        run.paused()
                    return False
                if not served:
                    return True
                served = False
        except StopIteration:
            _report(run, RuntimeError("the run produced no events"))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which reports it
            _report(run, exc)
        return False


def _report(run: _Run, error: BaseException) -> None:
    """Hand `error` to the run's consumer; a consumer that fails on it too is not the batcher's to bear."""
    try:
        run.on_event(None, error)
    except BaseException:  # noqa: BLE001
        pass


def _by_model(requests: list[ForwardRequest]) -> list[list[ForwardRequest]]:
    groups: dict[int, list[ForwardRequest]] = {}
    for req in requests:
        groups.setdefault(id(req.seq.lm), []).append(req)
    return list(groups.values())
