"""The runtime wing, below the algorithm: how a run's rows are computed and where its KV cache lives.

attention.py  the attention function TEMPO registers with transformers (records what pruning reads; batches)
fastpath.py   CPU forwards of a few rows (the linear layers' fast path, a 3-row set fed as 4)
fused.py      RMSNorm, rotary and SiLU x up as compiled kernels inside captured graphs
graphs.py     static caches reused run after run, and a set replayed from a captured CUDA graph
kvstore.py    one K/V store holding every batched run's cache in a slot
prefix.py     prompt prefixes shared between runs
placement.py  one run's cache: a pool slot, a store slot or a DynamicCache, moved as the run grows
sizes.py      KV bytes per row, and the runtime's sizes from the environment

`Runtime` is what one loaded model keeps between its runs (`LoadedModel.runtime`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .graphs import SlotPool
from .kvstore import KVStore
from .prefix import PrefixStore

if TYPE_CHECKING:  # annotations only: the serving wing makes and keeps its batch graphs here
    from ..serving.graphed import BatchGraphs


@dataclass(eq=False)
class Runtime:
    """One model's caches and captures, shared by its runs. The K/V store and the batch graphs take memory (and
    on a GPU, captures), so they are made on first use (`kvstore.kv_store`, `serving.graphed.batch_graphs`) under
    `lock`; for both, None means not made yet and False switched off (the benches' A/B)."""
    slots: SlotPool = field(default_factory=SlotPool)  # static caches and their CUDA graphs, lent one per run
    prefixes: PrefixStore = field(default_factory=PrefixStore)  # prompt prefixes fed before
    kv_store: KVStore | bool | None = None
    batch_graphs: BatchGraphs | bool | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
