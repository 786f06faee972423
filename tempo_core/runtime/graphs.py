"""Static KV caches reused run after run, and the TEMPO step replayed from captured CUDA graphs on them.

On a GPU a decode step of a few rows is bound by kernel launches, not by the rows (bench/README.md, "GPU anchors").
Capturing the forward once per set-size bucket (1, 2, 4, 8,
16; smaller sets padded with isolated rows) and replaying it removes the launches. Everything that changes per
step lives in static buffers filled in place before `replay()`: token ids, position ids, cache positions and the
mask over the cache's filled window (a power of two; a graph per window). The attention pruning reads is
recorded inside the graph (its tensors are rewritten by every replay). RMSNorm, rotary and SiLU x up are
captured as fused kernels (fused.py).

A graph holds the addresses of the cache it was captured on, so graphs live with their cache in a `StaticSlot`,
and slots live in the model's `SlotPool`: a run borrows one sized to it (capacities are powers of two) and
gives it back when it ends, so captures are paid once per slot per process, not once per run. A run starts in a
slot sized for sets of one token and moves to one twice as large when it fills it (its rows copied over), so
memory follows what runs use, not the most they could. The pool is bounded (`TEMPO_GRAPH_SLOTS`, default 32,
the app's concurrency); when every slot is lent a run decodes eagerly (or goes on eagerly, on a dynamic cache,
when it cannot grow) and its trace says so.

A StaticCache writes after the rows it counts (`cumulative_length`, a device tensor the graph increments), so pad
rows are taken back off that count after each replay, in place, as the graph expects (`forget_rows`, which the
eager path's `CachePlacement.drop_tail` uses too).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import torch
from transformers import StaticCache

from .attention import record_attention
from .fastpath import pad_set
from .fused import fused_kernels
from .sizes import env_count

log = logging.getLogger(__name__)

BUCKETS = (1, 2, 4, 8, 16)
MIN_CAPACITY = 256


def bucket(k: int) -> int | None:
    return next((b for b in BUCKETS if b >= k), None)


def window(rows: int) -> int:
    """How many of a static cache's slots a forward that fills it up to `rows` attends over: a power of two
    (>= 256), so one graph serves many steps, and attention never reads the whole, mostly empty, cache
    (attention.py drops the keys past the mask)."""
    return max(MIN_CAPACITY, 1 << (rows - 1).bit_length())


def graphs_unavailable(lm: Any, s: Any = None) -> str | None:
    """Why this run (settings `s`; None: any run on this model) cannot replay its steps from CUDA graphs (None: it
    can)."""
    if not lm.cuda_graphs:
        return "switched off (--no-cuda-graphs / TEMPO_CUDA_GRAPHS=0)"
    if lm.device.type != "cuda":
        return f"the model runs on {lm.device.type}"
    devices = set((getattr(lm.model, "hf_device_map", None) or {}).values())
    if len(devices) > 1:
        return f"the model is spread over {len(devices)} devices (graphs need one)"
    if s is not None and s.disable_kv_cache:
        return "disable_kv_cache re-feeds the whole sequence every step"
    return None


def static_mask(mask: torch.Tensor | None, first: int, q: int, device: torch.device) -> torch.Tensor:
    """[1, 1, q, window(first + q)]: `mask` (None: plain causal) over the filled slots, nothing beyond them."""
    full = torch.zeros(1, 1, q, window(first + q), dtype=torch.bool, device=device)
    if mask is None:
        full[0, 0, :, :first + q] = torch.ones(q, first + q, dtype=torch.bool, device=device).tril(first)
    else:
        full[..., :mask.shape[-1]] = mask
    return full


class GraphedSteps:
    """Captured forwards on one static cache, one per (bucket, window, layers pruning reads), captured on first
    use."""

    def __init__(self, lm: Any, cache: StaticCache, capacity: int):
        self.lm, self.cache, self.capacity = lm, cache, capacity
        # (bucket, window, layers) -> (graph, its input buffers, its logits, its recorded attention)
        self.graphs: dict[tuple[int, int, tuple[int, ...]], tuple[torch.cuda.CUDAGraph, dict, torch.Tensor, dict]] = {}

    def usable(self, k: int, rows: int) -> bool:
        """A set of k siblings, the last of `rows` rows, fits a bucket and the cache."""
        b = bucket(k)
        return b is not None and rows - k + b <= self.capacity

    def _buffers(self, b: int, width: int) -> dict[str, torch.Tensor]:
        dev = self.lm.device
        return {"ids": torch.zeros(1, b, dtype=torch.long, device=dev),
                "pos": torch.zeros(1, b, dtype=torch.long, device=dev),
                "cpos": torch.zeros(b, dtype=torch.long, device=dev),
                "mask": torch.zeros(1, 1, b, width, dtype=torch.bool, device=dev)}

    def _fill(self, buf: dict[str, torch.Tensor], token_ids: list[int], positions: list[int],
              mask: torch.Tensor, first: int) -> None:
        """The set's inputs into the bucket's buffers: padded like any set (fastpath.pad_set), masked like any
        static-cache forward (static_mask)."""
        b = buf["ids"].shape[1]
        ids, pos, mask = pad_set(token_ids, positions, mask)
        buf["ids"].copy_(torch.tensor([ids]), non_blocking=True)
        buf["pos"].copy_(torch.tensor([pos]), non_blocking=True)
        buf["cpos"].copy_(torch.arange(first, first + b), non_blocking=True)
        buf["mask"].copy_(static_mask(mask, first, b, torch.device("cpu")), non_blocking=True)

    def _forward(self, buf: dict[str, torch.Tensor], layers: tuple[int, ...]) -> tuple[torch.Tensor, dict]:
        b = buf["ids"].shape[1]
        with fused_kernels(self.lm.model), record_attention(layers, last_rows=b) as rec:
            out = self.lm.forward(input_ids=buf["ids"], position_ids=buf["pos"], attention_mask=buf["mask"],
                                  cache=self.cache, use_cache=True, logits_to_keep=b, cache_position=buf["cpos"])
        return out.logits, rec.weights

    def _counts(self) -> list[torch.Tensor]:
        return [layer.cumulative_length for layer in self.cache.layers]

    def _capture(self, buf: dict[str, torch.Tensor], layers: tuple[int, ...]) -> tuple:
        counts = [c.clone() for c in self._counts()]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        try:
            with torch.cuda.stream(side):
                for _ in range(2):  # warm-up writes the same rows the real step writes, then forgets them
                    self._forward(buf, layers)
                    for c, saved in zip(self._counts(), counts):
                        c.copy_(saved)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                logits, weights = self._forward(buf, layers)
        finally:  # the capture's own write is not a step either
            for c, saved in zip(self._counts(), counts):
                c.copy_(saved)
        return graph, buf, logits, weights

    def feed(self, token_ids: list[int], positions: list[int], mask: torch.Tensor, first: int,
             layers: tuple[int, ...]) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """One set of k siblings through its bucket's graph, written after `first` cached rows (`mask`: its
        bucket's rows over them, [1, 1, bucket, first + bucket], layout.step_mask): logits [k, V] and the attention
        its rows paid to `layers`, {layer: [k, window]}. Raises if the capture fails (the caller falls back to the
        eager forward)."""
        with torch.inference_mode():  # the cache's counts are inference tensors
            return self._feed(token_ids, positions, mask, first, layers)

    def _feed(self, token_ids: list[int], positions: list[int], mask: torch.Tensor, first: int,
              layers: tuple[int, ...]) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        k, b = len(token_ids), bucket(len(token_ids))
        key = (b, window(first + b), layers)
        if key not in self.graphs:
            buf = self._buffers(b, key[1])
            self._fill(buf, token_ids, positions, mask, first)
            self.graphs[key] = self._capture(buf, layers)
        graph, buf, logits, weights = self.graphs[key]
        self._fill(buf, token_ids, positions, mask, first)
        graph.replay()
        if b > k:  # the pad rows leave the cache's count: the next set writes into their slots
            forget_rows(self.cache, b - k)
        return logits[0, :k], {layer: w[:k] for layer, w in weights.items()}


class StaticSlot:
    """One StaticCache of a fixed capacity, reused run after run, and the graphs captured on it."""

    def __init__(self, lm: Any, capacity: int, graphs: bool):
        self.capacity = capacity
        self.cache = StaticCache(config=lm.model.config, max_cache_len=capacity)
        self.graphs = GraphedSteps(lm, self.cache, capacity) if graphs else None


def forget_rows(cache: StaticCache, n: int) -> None:
    """Take the last `n` rows off a static cache's count, in place (a captured graph holds that tensor): its next
    write reuses their slots. A StaticCache writes after the rows it counts, not at the cache positions given,
    so this is how pad rows leave it; what 5.2x's `StaticLayer.crop` does (5.17 has no such crop)."""
    with torch.inference_mode():  # the counts are inference tensors
        for layer in cache.layers:
            layer.cumulative_length.sub_(n)


def copy_rows(src: StaticCache, dst: Any, n: int) -> None:
    """The first `n` cached rows of every layer of `src` into `dst` (a cleared StaticCache or a new DynamicCache),
    through the cache's own `update`."""
    with torch.inference_mode():
        for i, layer in enumerate(src.layers):
            dst.update(layer.keys[:, :, :n], layer.values[:, :, :n], i)


class SlotPool:
    """The static caches (and their graphs) of one model: at most `limit`, lent one per run."""

    def __init__(self, limit: int | None = None):
        self.limit = limit if limit is not None else env_count("TEMPO_GRAPH_SLOTS", 32, 1, log)
        self.idle: list[StaticSlot] = []
        self.lent = 0
        self._lock = threading.Lock()

    def take(self, lm: Any, rows: int, graphs: bool) -> StaticSlot | None:
        """A cleared slot of at least `rows` rows (the smallest idle one that fits, else a new one); None when
        `limit` slots are lent already."""
        capacity = window(rows)
        with self._lock:
            fits = [s for s in self.idle if s.capacity >= rows and (s.graphs is not None) == graphs]
            slot = min(fits, key=lambda s: s.capacity) if fits else None
            if slot is not None:
                self.idle.remove(slot)
            elif self.lent + len(self.idle) >= self.limit:
                if not self.idle:
                    return None
                self.idle.remove(min(self.idle, key=lambda s: s.capacity))  # make room: its memory goes
            self.lent += 1
        if slot is None:
            try:
                slot = StaticSlot(lm, capacity, graphs)
            except BaseException:
                self.give(None)
                raise
        with torch.inference_mode():  # the cache's tensors were made in inference mode
            slot.cache.reset()  # in place: the graphs keep their addresses
        return slot

    def give(self, slot: StaticSlot | None) -> None:
        with self._lock:
            self.lent -= 1
            if slot is not None:
                self.idle.append(slot)
