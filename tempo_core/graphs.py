"""A TEMPO step replayed from a captured CUDA graph (GPU only; experimental, opt-in).

On a GPU a decode step of a few rows is bound by kernel launches, not by the rows: HF eager decoding of a 3B
model runs ~15x above the weight-bandwidth floor. Capturing the forward once per set-size bucket (1, 2, 4, 8,
16; smaller sets padded with isolated rows) and replaying it removes the launches. Everything that changes per
step lives in static buffers filled in place before `replay()`: token ids, position ids, cache positions and the
mask over the whole static cache. The attention pruning reads is recorded inside the graph (its tensors are
rewritten by every replay).

A StaticCache writes after the rows it counts (`cumulative_length`, a device tensor the graph increments), so pad
rows are taken back off that count after each replay (`ParallelSequence.drop_tail`, in place, as the graph
expects).
"""

from __future__ import annotations

from typing import Any

import torch

from .attention import record_attention
from .fastpath import pad_set
from .layout import step_mask

BUCKETS = (1, 2, 4, 8, 16)


def bucket(k: int) -> int | None:
    return next((b for b in BUCKETS if b >= k), None)


class GraphedSteps:
    """Captured forwards of one ParallelSequence's static cache, one per bucket, captured on first use."""

    def __init__(self, seq: Any):
        self.seq = seq
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, dict[str, torch.Tensor], torch.Tensor, dict]] = {}

    def usable(self, k: int) -> bool:
        b = bucket(k)
        return b is not None and self.seq.layout.rows - k + b <= self.seq.static_len

    def _buffers(self, b: int) -> dict[str, torch.Tensor]:
        dev = self.seq.lm.device
        return {"ids": torch.zeros(1, b, dtype=torch.long, device=dev),
                "pos": torch.zeros(1, b, dtype=torch.long, device=dev),
                "cpos": torch.zeros(b, dtype=torch.long, device=dev),
                "mask": torch.zeros(1, 1, b, self.seq.static_len, dtype=torch.bool, device=dev)}

    def _fill(self, buf: dict[str, torch.Tensor], token_ids: list[int], positions: list[int],
              past_alive: list[bool], first: int, visible: bool) -> None:
        """The set's inputs into the bucket's buffers: padded like any set (fastpath.pad_set), masked like any
        static-cache forward (ParallelSequence.static_mask)."""
        b = buf["ids"].shape[1]
        ids, pos, mask = pad_set(token_ids, positions, step_mask(past_alive, b, visible, torch.device("cpu")))
        buf["ids"].copy_(torch.tensor([ids]), non_blocking=True)
        buf["pos"].copy_(torch.tensor([pos]), non_blocking=True)
        buf["cpos"].copy_(torch.arange(first, first + b), non_blocking=True)
        buf["mask"].copy_(self.seq.static_mask(mask, first, b))

    def _forward(self, buf: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        seq = self.seq
        b = buf["ids"].shape[1]
        with record_attention(seq.capture.keys(), last_rows=b) as rec:
            out = seq.lm.forward(input_ids=buf["ids"], position_ids=buf["pos"], attention_mask=buf["mask"],
                                 cache=seq.cache, use_cache=True, logits_to_keep=b, cache_position=buf["cpos"])
        return out.logits, rec.weights

    def _counts(self) -> list[torch.Tensor]:
        return [layer.cumulative_length for layer in self.seq.cache.layers]

    def feed(self, token_ids: list[int], positions: list[int], past_alive: list[bool], visible: bool
             ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """One set through its bucket's graph (captured now if it is the first of that size): logits [k, V] and
        the attention its rows paid, {layer: [k, static_len]}."""
        k, b = len(token_ids), bucket(len(token_ids))
        first = self.seq.layout.rows - k
        if b not in self.graphs:
            buf = self._buffers(b)
            self._fill(buf, token_ids, positions, past_alive, first, visible)
            counts = [c.clone() for c in self._counts()]
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), torch.inference_mode():
                for _ in range(2):  # warm-up writes the same rows the real step writes, then forgets them
                    self._forward(buf)
                    for c, saved in zip(self._counts(), counts):
                        c.copy_(saved)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.inference_mode(), torch.cuda.graph(graph):
                logits, weights = self._forward(buf)
            self.graphs[b] = (graph, buf, logits, weights)
        graph, buf, logits, weights = self.graphs[b]
        self._fill(buf, token_ids, positions, past_alive, first, visible)
        graph.replay()
        if b > k:  # the pad rows leave the cache's count: the next set writes into their slots
            self.seq.drop_tail(b - k)
        return logits[0, :k], {layer: w[:k] for layer, w in weights.items()}
