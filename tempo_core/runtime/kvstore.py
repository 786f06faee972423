"""One K/V store for the runs a batch serves: every run's cache in a slot of one tensor per layer.

With each run's keys and values in tensors of its own, a forward carrying 32 runs' rows launches, per run and per
layer, a copy that appends the new rows (DynamicCache's `cat`) and another that pads the run's cache into its
group's tensor for attention: on a GPU those are most of a tick's kernel launches (bench/README.md, "A class in one
forward"). Here each run's cache lives in its slot of one [slots, kv_heads, capacity, head_dim] tensor per layer (K
and V), so a group's new rows go in with one indexed write per layer and its caches come out with one gather,
however many runs it holds (`KVStore.write`, `KVStore.read`; serving/runner.py's `_Group`).

A run's cache is still a transformers `DynamicCache` (a forward of its own, a prefix copied in, `crop`, the prefix
store reading it all work as before); its layers' keys and values are views of its slot. A cache that would outgrow
its slot moves its rows into tensors of its own and goes on as an ordinary DynamicCache (`SlotCache.leave`).

Off by default on a CPU, where a forward is bound by reading the weights and the store's memory (allocated up front)
buys little; on CUDA `TEMPO_SHARED_KV_ROWS` rows per slot (default 2048, fewer where they would take more than a
quarter of the free GPU memory) and `TEMPO_SHARED_KV_SLOTS` slots (default 32, the page's runs at once), made when
the first batched run starts (its size: `nbytes`, reported by /health). 0 rows turns it off.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from .sizes import env_count, kv_cache_bytes, kv_heads_and_dim

log = logging.getLogger(__name__)

MAX_SHARE_OF_FREE = 0.25  # of the GPU memory free when the store is made
MIN_ROWS = 256  # a store whose slots hold fewer rows is not made


class KVStore:
    """K and V of `slots` caches of up to `capacity` rows each, per layer: [slots + 1, kv_heads, capacity, head_dim].
    The last slot (`scratch`) is never lent: a captured batch forward (serving/graphed.py) writes its pad blocks
    there."""

    def __init__(self, config: Any, slots: int, capacity: int, dtype: torch.dtype, device: torch.device):
        kv_heads, head_dim = kv_heads_and_dim(config)
        shape = (slots + 1, kv_heads, capacity, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.slots, self.capacity, self.config = slots, capacity, config
        self.scratch = slots
        self.writes = 0  # group writes (one per layer per group of runs); tests and benches read it
        self._free = list(range(slots - 1, -1, -1))
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    @property
    def free_slots(self) -> int:
        return len(self._free)

    def cache(self) -> "SlotCache | None":
        """A new empty cache in a free slot; None when every slot is taken."""
        with self._lock:
            if not self._free:
                return None
            slot = self._free.pop()
        return SlotCache(self, slot)

    def give(self, slot: int) -> None:
        with self._lock:
            self._free.append(slot)

    def write(self, layer: int, slots: torch.Tensor, positions: torch.Tensor, keys: torch.Tensor,
              values: torch.Tensor) -> None:
        """Row i of `keys`/`values` ([n, kv_heads, head_dim]) into slot `slots[i]` at row `positions[i]`."""
        self.keys[layer][slots, :, positions] = keys
        self.values[layer][slots, :, positions] = values
        self.writes += 1

    def read(self, layer: int, slots: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `rows` rows of each of `slots`: keys and values [len(slots), kv_heads, rows, head_dim]."""
        return (self.keys[layer][:, :, :rows].index_select(0, slots),
                self.values[layer][:, :, :rows].index_select(0, slots))


class SlotCache(DynamicCache):
    """A run's DynamicCache whose layers live in one slot of a `KVStore` (until `leave`)."""

    def __init__(self, store: KVStore, slot: int):
        super().__init__(config=store.config)
        self.store: KVStore | None = store
        self.slot = slot
        self.layers = [SlotLayer(self, i) for i in range(len(self.layers))]
        self._release = weakref.finalize(self, store.give, slot)  # also when a run is dropped unfinished

    def room_for(self, rows: int) -> KVStore | None:
        """The store this cache lives in, if its slot can hold `rows` rows; a cache about to outgrow its slot
        leaves the store first (it goes on as an ordinary DynamicCache) and gets None."""
        if self.store is not None and rows > self.store.capacity:
            self.leave()  # every layer, so the cache stays whole
        return self.store

    def leave(self) -> None:
        """Move every layer's rows into tensors of its own and give the slot back (an ordinary DynamicCache now)."""
        if self.store is None:
            return
        for layer in self.layers:
            layer.own()
        self.store = None
        self._release()

    def close(self) -> None:
        """Give the slot back at the run's end (its rows are not read again): an empty cache after."""
        if self.store is None:
            return
        self.store = None
        for layer in self.layers:
            layer.keys = layer.values = None
            layer.is_initialized, layer.length = False, 0
        self._release()


class SlotLayer(DynamicLayer):
    """One layer of a `SlotCache`: `keys`/`values` are views [1, kv_heads, length, head_dim] of the cache's slot
    while it has one, and tensors of its own after."""

    def __init__(self, cache: SlotCache, index: int):
        super().__init__()
        self._cache = weakref.ref(cache)  # no cycle: a dropped run's cache goes (and frees its slot) at once
        self.index, self.length = index, 0
        self.is_initialized = True
        self.device = cache.store.keys[index].device

    @property
    def cache(self) -> SlotCache:
        return self._cache()

    def _view(self, which: str) -> torch.Tensor | None:
        """This layer's rows of the store's `which` ("keys" or "values") while the cache has a slot, else its own."""
        store = self.cache.store if hasattr(self, "_cache") else None  # (the base __init__ sets keys before _cache)
        if store is None:
            return getattr(self, "_" + which)
        slot = self.cache.slot
        return getattr(store, which)[self.index][slot:slot + 1, :, :self.length]

    keys = property(lambda self: self._view("keys"), lambda self, value: setattr(self, "_keys", value))
    values = property(lambda self: self._view("values"), lambda self, value: setattr(self, "_values", value))

    def own(self) -> None:
        """Copy this layer's rows out of the store (`SlotCache.leave`)."""
        self._keys, self._values = self.keys.clone(), self.values.clone()

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        store = self.cache.room_for(self.length + key_states.shape[-2])
        if store is None:
            return super().update(key_states, value_states, *args, **kwargs)
        n, slot = key_states.shape[-2], self.cache.slot
        store.keys[self.index][slot, :, self.length:self.length + n] = key_states[0]
        store.values[self.index][slot, :, self.length:self.length + n] = value_states[0]
        self.length += n
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length if self.cache.store is not None else super().get_seq_length()

    def crop(self, tokens_to_remove: int) -> None:
        if self.cache.store is None:
            return super().crop(tokens_to_remove)
        if tokens_to_remove > 0:
            raise ValueError("crop takes the number of rows to remove as a negative number")
        self.length = max(0, self.length + tokens_to_remove)

    def reset(self) -> None:
        if self.cache.store is None:
            return super().reset()
        self.length = 0


def kv_store(lm: Any) -> KVStore | None:
    """The model's K/V store, made on first use and kept in `lm.runtime` (CUDA by default, see the module's
    docstring); None where off."""
    runtime = lm.runtime
    with runtime.lock:
        if runtime.kv_store is None:
            runtime.kv_store = _store_from_env(lm)
        return runtime.kv_store or None


def slot_cache(lm: Any) -> DynamicCache:
    """A cache for a run that shares forwards with others: in a slot of the model's K/V store where it has one and
    a slot is free, else an ordinary DynamicCache."""
    store = kv_store(lm)
    return (store.cache() if store else None) or DynamicCache(config=lm.model.config)


def _store_from_env(lm: Any) -> KVStore | bool:
    rows = env_count("TEMPO_SHARED_KV_ROWS", 2048 if lm.device.type == "cuda" else 0, 0, log)
    slots = env_count("TEMPO_SHARED_KV_SLOTS", 32, 0, log)
    cache = DynamicCache(config=lm.model.config)
    if not rows or not slots or any(type(layer) is not DynamicLayer for layer in cache.layers):
        return False  # off, or a model whose cache layers are not all plain (e.g. sliding windows)
    if lm.device.type == "cuda":  # at most a quarter of the memory still free: a small GPU keeps room for the rest
        free, _ = torch.cuda.mem_get_info(lm.device)
        fits = int(free * MAX_SHARE_OF_FREE) // ((slots + 1) * kv_cache_bytes(lm.model.config, 1, lm.dtype.itemsize))
        if fits < rows:
            log.warning("shared K/V store: %d rows a slot do not fit in a quarter of the free GPU memory; %d do",
                        rows, fits)
            rows = fits
        if rows < MIN_ROWS:
            return False
    store = KVStore(lm.model.config, slots, rows, lm.dtype, lm.device)
    log.info("shared K/V store: %d slots of %d rows, %.0f MB", slots, rows, store.nbytes / 2**20)
    return store
