"""Where one run's KV cache lives, and moving it as the run grows.

A run's cache is one of three: a static cache borrowed from the model's pool (graphs.SlotPool; with the CUDA
graphs captured on it), a slot of the model's K/V store (kvstore.py; what batched forwards read and write in one
go), or a DynamicCache of its own. A static cache has a fixed capacity, so before each forward the run asks
`fit` for room; the cache moves to a slot twice as large (its rows copied over) or, when none is free, to a
DynamicCache (its graphs end there, and `graphs_off` says why). `close()` gives a borrowed cache back, also when
a run is dropped unfinished.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from transformers import DynamicCache

from .graphs import GraphedSteps, copy_rows, forget_rows, static_mask
from .kvstore import SlotCache, slot_cache


class CachePlacement:
    """One run's KV cache: `cache` (None: the run re-feeds its whole sequence every step), `static_len` (a static
    cache's capacity, else None), `graphs` (the CUDA graphs of its static slot, where the run replays them) and
    `graphs_off` (why not, None while it may)."""

    def __init__(self, lm: Any, rows: int, static: bool, graphs_off: str | None, shared_kv: bool, no_cache: bool):
        """`rows`: what the run needs at first (a static cache is sized for them); `static`: borrow a static cache
        (done too where graphs are on, `graphs_off` None); `shared_kv`: else a slot of the K/V store where the model
        has one; `no_cache`: none at all."""
        self.lm, self.graphs_off = lm, graphs_off
        self.cache: Any = None
        self.slot, self.static_len, self.graphs = None, None, None
        self._release: weakref.finalize | None = None
        if not no_cache and (static or graphs_off is None):
            if not self._borrow(rows, rows_filled=0):
                self.graphs_off = self.graphs_off or f"all {lm.runtime.slots.limit} static-cache slots are in use"
        if self.cache is None and not no_cache:
            self.cache = slot_cache(lm) if shared_kv else DynamicCache(config=lm.model.config)

    @property
    def batchable(self) -> bool:
        """Whether the run's forwards may share a forward with other runs' (serving/runner.py): a DynamicCache (in
        the K/V store or not), no graphs."""
        return self.cache is not None and self.static_len is None and self.graphs is None

    def _borrow(self, rows: int, rows_filled: int) -> bool:
        """Move to a pool slot of at least `rows` rows, the first `rows_filled` cached rows copied over; False when
        none is free (the run then stays where it is)."""
        pool = self.lm.runtime.slots
        slot = pool.take(self.lm, rows, graphs=self.graphs_off is None)
        if slot is None:
            return False
        if rows_filled:
            copy_rows(self.cache, slot.cache, rows_filled)
        self.close()  # the old slot goes back
        self.slot, self.cache, self.static_len = slot, slot.cache, slot.capacity
        self.graphs: GraphedSteps | None = slot.graphs if self.graphs_off is None else None
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

    def forward_inputs(self, mask: torch.Tensor | None, rows_before: int, q: int) -> tuple[torch.Tensor | None, dict]:
        """The mask and extra forward arguments for `q` rows written after `rows_before` cached ones: a static cache
        takes them at explicit cache positions, under a mask over its whole window (graphs.static_mask)."""
        if self.static_len is None:
            return mask, {}
        dev = self.lm.device
        return (static_mask(mask, rows_before, q, dev),
                {"cache_position": torch.arange(rows_before, rows_before + q, device=dev)})

    def drop_tail(self, n: int) -> None:
        """Forget the last `n` cached rows (a static cache: `graphs.forget_rows`)."""
        if self.static_len is None:
            self.cache.crop(-n)
        else:
            forget_rows(self.cache, n)

    def copy_prefix(self, kv: list[tuple[torch.Tensor, torch.Tensor]], rows: int) -> None:
        """The first `rows` rows of `kv` (keys and values per layer, e.g. a prefix.PrefixStore's) into this (empty)
        cache; `update` copies them (a slot's write, a DynamicCache's cat)."""
        for layer, (keys, values) in enumerate(kv):
            self.cache.update(keys[:, :, :rows], values[:, :, :rows], layer)

    def close(self) -> None:
        """Give the static cache (and its graphs) back to the pool, or the K/V store's slot back to the store."""
        if self._release is not None:
            self._release()
        if isinstance(self.cache, SlotCache):
            self.cache.close()
