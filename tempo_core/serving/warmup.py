"""Work a server does once at start, before any visitor, so that a class's first runs do not pay for it."""

from __future__ import annotations

import dataclasses

from ..config import TempoSettings
from ..engine import tempo_events
from ..events import encode_prompt
from ..model import LoadedModel
from ..runtime.kvstore import kv_store
from ..runtime.prefix import MIN_SHARED, shared_length
from ..sequence import ParallelSequence
from .graphed import batch_graphs
from .scheduler import Batcher


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
        lm.runtime.prefixes.put(head, seq.cache)
    finally:
        seq.close()
    return len(head)


def warm_batch_graphs(lm: LoadedModel, s: TempoSettings, runs: tuple[int, ...] = (2, 4, 8, 16, 32),
                      sizes: tuple[int, ...] = (1, 2, 4)) -> int:
    """On a GPU, before any visitor: make the batch forwards a class of runs like `s` will use (graphed.py: one
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
