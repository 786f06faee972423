"""A tick's forward replayed from a CUDA graph: every run's rows in a fixed layout over the K/V store.

With the runs' caches in one K/V store (runtime/kvstore.py) a tick's eager forward on a GPU is still mostly kernel
launches (bench/README.md, "A class in one forward"). A graph needs fixed shapes, so here a forward whose runs
are in the store and feed at most 8 rows each (`fits`) is laid out as a `Shape`: `runs` blocks of `rows` rows (each
run's rows first in its block, then pad rows that copy its last token), over a `window` of store rows. Runs the
forward does not have fill the rest of the blocks from the store's scratch slot, and a run's pad rows write just
past its cached rows; no real row ever sees either. Everything that changes per tick (ids, positions, where rows
go in the store, which slots are read, the masks) lives in a `StaticBatch`'s buffers, filled before each replay.

Attention is the batch's `_Group` call with nothing left to gather: each block is one run, its own slot, its own
mask. The layers pruning reads record their attention for every block (the union of the runs' layers), and only
the rows a run keeps are taken out. One graph per shape is captured on first use (runs 2..slots, rows 1..8 and
windows in powers of two), at most `MAX_GRAPHS`, sharing one memory pool; the buffers and graphs live with the
model (`batch_graphs`). Off the GPU the same layout runs eagerly (`capture=False`): the CPU tests check that it
equals the runs' solo traces, and tests/gpu/test_batch_gpu.py checks the captured one on a GPU.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import torch

from ..pruning import attention_paid_together
from ..runtime.attention import batched_attention, fill_causal, group_attention
from ..runtime.fused import fused_kernels
from ..runtime.graphs import graphs_unavailable, window
from ..runtime.kvstore import KVStore, SlotCache, kv_store

log = logging.getLogger(__name__)

MAX_ROWS = 8  # a run feeding more (a prompt's chunk) takes the eager batch (batch.BatchForward)
MAX_GRAPHS = 48  # shapes captured per model; past that, new shapes are served eagerly


@dataclass(frozen=True)
class Shape:
    runs: int  # blocks (a power of two, at most the store's slots)
    rows: int  # rows per block (1, 2, 4 or 8)
    window: int  # store rows each block attends over (a power of two >= 256, at most the store's capacity)
    layers: tuple[int, ...]  # layers whose attention is recorded


def fits(req: Any, store: KVStore) -> bool:
    """Whether a request can be a block: its run's cache in `store`, at most MAX_ROWS rows, and room in its slot
    for a block of the most rows (its pad rows are written too)."""
    cache = req.seq.cache
    return (isinstance(cache, SlotCache) and cache.store is store and len(req.token_ids) <= MAX_ROWS
            and cache.get_seq_length() + MAX_ROWS <= store.capacity)


def shape_for(requests: list[Any], store: KVStore) -> Shape:
    """The shape that lays out `requests` (each one that `fits`)."""
    rows = 1 << (max(len(r.token_ids) for r in requests) - 1).bit_length()
    end = max(r.seq.cache.get_seq_length() for r in requests) + rows  # a block's last row, pad rows included
    layers = sorted({layer for r in requests if r.record for layer in r.seq.capture})
    runs = min(1 << (len(requests) - 1).bit_length(), store.slots)
    return Shape(runs, rows, min(window(end), store.capacity), tuple(layers))


class StaticBatch:
    """One shape's input buffers, and the forward over them that a graph captures."""

    def __init__(self, lm: Any, store: KVStore, shape: Shape):
        self.lm, self.store, self.shape = lm, store, shape
        n, dev = shape.runs * shape.rows, lm.device
        self.index = torch.zeros(4, n, dtype=torch.long, device=dev)  # ids, positions, store slot and row per row
        self.read_slots = torch.zeros(shape.runs, dtype=torch.long, device=dev)
        self.mask = torch.zeros(shape.runs, 1, shape.rows, shape.window, dtype=torch.bool, device=dev)
        self.weights: dict[int, torch.Tensor] = {}

    def fill(self, requests: list[Any]) -> None:
        """The requests' rows into the buffers: block j is request j, its rows then copies of its last one."""
        runs, rows, width = self.shape.runs, self.shape.rows, self.shape.window
        scratch = self.store.scratch
        index = [[0] * (runs * rows), [0] * (runs * rows), [scratch] * (runs * rows), list(range(rows)) * runs]
        slots = [scratch] * runs
        mask = torch.zeros(runs, 1, rows, width, dtype=torch.bool)
        mask[:, 0, :, 0] = True  # pad rows and pad blocks see one key (no NaN); their output is dropped
        for j, req in enumerate(requests):
            q, cached, slot = len(req.token_ids), req.seq.cache.get_seq_length(), req.seq.cache.slot
            block = slice(j * rows, (j + 1) * rows)
            index[0][block] = req.token_ids + req.token_ids[-1:] * (rows - q)
            index[1][block] = req.positions + req.positions[-1:] * (rows - q)
            index[2][block] = [slot] * rows
            index[3][block] = range(cached, cached + rows)
            slots[j] = slot
            if req.mask is not None:
                mask[j, 0, :q, :cached + q] = req.mask[0, 0]
            else:
                fill_causal(mask[j, 0, :q], cached + q)
        self.index.copy_(torch.tensor(index))
        self.read_slots.copy_(torch.tensor(slots))
        self.mask.copy_(mask)

    def forward(self) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Logits of every row [runs * rows, V], and each recorded layer's head-mean attention [runs, rows, window]."""
        placeholder = torch.ones(1, 1, 1, 1, dtype=torch.bool, device=self.lm.device)  # HF passes a 4D mask on
        with fused_kernels(self.lm.model), batched_attention(self):
            out = self.lm.forward(input_ids=self.index[0:1], position_ids=self.index[1:2], attention_mask=placeholder,
                                  cache=None, use_cache=False)
        return out.logits[0], dict(self.weights)

    def attend(self, layer: int | None, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               scaling: float) -> torch.Tensor:
        """Every block's new keys/values into its store slot, then its queries over its slot under its mask."""
        runs, rows = self.shape.runs, self.shape.rows
        _, heads, _, dim = query.shape
        self.store.write(layer, self.index[2], self.index[3], key[0].transpose(0, 1), value[0].transpose(0, 1))
        keys, values = self.store.read(layer, self.read_slots, self.shape.window)
        q = query[0].view(heads, runs, rows, dim).transpose(0, 1)  # [runs, heads, rows, dim]
        out, means = group_attention(q, keys, values, self.mask, scaling, record=layer in self.shape.layers)
        if means is not None:
            self.weights[layer] = means  # [runs, rows, window]
        return out.transpose(1, 2).reshape(1, runs * rows, heads, dim)


class BatchGraphs:
    """A model's captured batch forwards, one per shape (`capture=False`: the same forwards, eager)."""

    def __init__(self, lm: Any, store: KVStore, capture: bool = True):
        self.lm, self.store, self.capture = lm, store, capture
        self.graphs: dict[Shape, tuple[StaticBatch, Any, torch.Tensor, dict[int, torch.Tensor]]] = {}
        self.off: str | None = None  # why graphs stopped (a capture failed)
        self.replays = 0
        self._pool = torch.cuda.graph_pool_handle() if capture else None
        self._lock = threading.Lock()

    def serve(self, requests: list[Any]) -> list[Any]:
        """Serve those of `requests` (ForwardRequests of different runs) that fit a block in one forward of a fixed
        shape; the others are returned, for the caller's eager batch (all of them where fewer than two fit)."""
        blocks = [r for r in requests if fits(r, self.store)] if self.off is None else []
        if len(blocks) < 2:
            return requests
        shape = shape_for(blocks, self.store)
        if shape not in self.graphs and len(self.graphs) >= MAX_GRAPHS:
            return requests
        with self._lock, torch.inference_mode():
            if shape not in self.graphs:
                static = StaticBatch(self.lm, self.store, shape)
                static.fill(blocks)
                try:
                    self.graphs[shape] = self._capture(static) if self.capture else (static, None, None, {})
                except RuntimeError as exc:  # a model the capture cannot take: eager batches from now on
                    self.off = f"capture failed ({str(exc).splitlines()[0][:120]})"
                    log.warning("batched forwards go eager: %s", self.off)
                    return requests
            static, graph, logits, weights = self.graphs[shape]
            static.fill(blocks)
            if graph is None:
                logits, weights = static.forward()
            else:
                graph.replay()
            self.replays += 1
            self._hand_out(blocks, shape, logits, weights)
        return [r for r in requests if r.logits is None]

    def _capture(self, static: StaticBatch) -> tuple[StaticBatch, Any, torch.Tensor, dict[int, torch.Tensor]]:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: writes the rows the real forward writes, with the same values
            for _ in range(2):
                static.forward()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            logits, weights = static.forward()
        return static, graph, logits, weights

    def _hand_out(self, requests: list[Any], shape: Shape, logits: torch.Tensor,
                  weights: dict[int, torch.Tensor]) -> None:
        """Each run's kept rows' logits and attention, copied out of the graph's outputs (the next replay rewrites
        them), and its cache lengthened by the rows it wrote."""
        keep = [j * shape.rows + r for j, req in enumerate(requests)
                for r in range(len(req.token_ids) - req.keep, len(req.token_ids))]
        index = torch.tensor(keep, device=logits.device)
        parts = [req.keep for req in requests]
        kept_logits = logits.index_select(0, index).split(parts)
        kept = {layer: w.view(-1, shape.window).index_select(0, index) for layer, w in weights.items()}
        lengths = [req.seq.cache.get_seq_length() + len(req.token_ids) for req in requests]
        asks = [(req.paid.weights, req.paid.by_layer) if req.paid is not None and req.record else None
                for req in requests]
        paid = attention_paid_together(kept, parts, lengths, asks) if kept else [None] * len(requests)
        split = {layer: rows.split(parts) for layer, rows in kept.items()}
        for j, req in enumerate(requests):
            q = len(req.token_ids)
            req.logits = kept_logits[j]
            req.attention = ({layer: split[layer][j][:, :lengths[j]] for layer in req.seq.capture}
                             if req.record else {})
            if paid[j] is not None:
                req.paid.result = paid[j]
            for layer in req.seq.cache.layers:
                layer.length += q
            req.seq.forward_passes += 1
            req.seq.tokens_processed += q


def batch_graphs(lm: Any) -> BatchGraphs | None:
    """The model's batch graphs where they apply: where a run could replay CUDA graphs (`graphs_unavailable`) and
    the model has a K/V store; made on first use and kept in `lm.runtime`. There, False turns them off (the benches'
    A/B); elsewhere one handed in is used (the CPU tests hand in eager ones)."""
    runtime = lm.runtime
    if runtime.batch_graphs is False or graphs_unavailable(lm) is not None:
        return runtime.batch_graphs or None
    store = kv_store(lm)
    if store is None:
        return None
    with runtime.lock:
        if runtime.batch_graphs is None:
            runtime.batch_graphs = BatchGraphs(lm, store)
        return runtime.batch_graphs
