"""The contract between a run and whoever serves its forwards (the serving wing's scheduler, or the run itself).

A run made with `cooperative=True` (engine.tempo_events) yields a `ForwardRequest` wherever it needs the model:
each chunk of its prompt, then each set. Whoever drives it serves the request (alone: `RunSequence.serve`; with
other runs' rows: serving/runner.py) and the run resumes with its logits. A request may also ask its server for
what the run would otherwise compute on its own after the forward: the next distribution and its top-k
(`NextSet`) and the scores pruning reads (`PaidAttention`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol

import torch

from .events import StepEvent
from .pruning import AttentionPaid


class RunSequence(Protocol):
    """What a batch needs of a run (sequence.ParallelSequence, which imports this module)."""
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
    layer's share where `by_layer`), asked of a batch that takes every run's at once (serving/graphed.py). Served:
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


def serve_alone(items: Iterator[StepEvent | ForwardRequest]) -> Iterator[StepEvent]:
    """A cooperative run's events, each of its forwards served alone as it comes (one run, no batcher)."""
    for item in items:
        if isinstance(item, ForwardRequest):
            item.seq.serve(item)
        else:
            yield item
