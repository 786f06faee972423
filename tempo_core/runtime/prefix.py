"""Prompt prefixes shared between runs.

A class asks different questions after the same chat template: the system prompt is most of every prompt (25 of
SmolLM2's 37 tokens for "Tell me one fact about the moon."). A prompt's keys and values at a position depend only
on the tokens up to it, so a run whose prompt starts like one fed before copies those rows into its own cache and
feeds only the rest. The store keeps the first `max_rows` rows of the last `max_prompts` prompts (least recently
used out), per model, touched only from the model's thread.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Sequence

import torch

MIN_SHARED = 8  # fewer shared tokens are not worth the copy


class PrefixStore:
    def __init__(self, max_prompts: int = 64, max_rows: int = 512):
        self.max_prompts, self.max_rows = max_prompts, max_rows
        self._kv: OrderedDict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = OrderedDict()
        self._lock = threading.Lock()

    def longest(self, ids: list[int]) -> tuple[int, list[tuple[torch.Tensor, torch.Tensor]]]:
        """The most rows of `ids`' prompt already known (never its last token, whose logits the run needs), and the
        stored keys and values holding them ([1, kv_heads, >= rows, head_dim] per layer); (0, []) when none."""
        best, kv = 0, []
        with self._lock:
            for known, layers in self._kv.items():
                n = shared_length(known, ids, len(ids) - 1)
                if n > best:
                    best, kv, hit = n, layers, known
            if best < MIN_SHARED:
                return 0, []
            self._kv.move_to_end(hit)
        return best, kv

    def put(self, ids: list[int], cache: Any) -> None:
        """Keep the first rows of a prompt just fed into `cache` (a DynamicCache holding exactly the prompt)."""
        n = min(len(ids), self.max_rows)
        layers = [(layer.keys[:, :, :n].clone(), layer.values[:, :, :n].clone()) for layer in cache.layers]
        with self._lock:
            self._kv[tuple(ids[:n])] = layers
            self._kv.move_to_end(tuple(ids[:n]))
            while len(self._kv) > self.max_prompts:
                self._kv.popitem(last=False)

    def __len__(self) -> int:
        return len(self._kv)


def shared_length(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    """How many tokens `a` and the first `limit` of `b` share from the start."""
    n = 0
    for x, y in zip(a, b[:limit]):
        if x != y:
            break
        n += 1
    return n
