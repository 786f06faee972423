"""The attention function TEMPO registers with transformers (`AttentionInterface`).

It is SDPA everywhere, except on the layers retroactive pruning reads: there it computes the softmax
explicitly (grouped by KV head, no `repeat_kv` copy) and keeps the head-mean attention rows. This is the
perf study's recommended capture: `output_attentions` under sdpa returns nothing, and eager costs up to +18 %.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol

import torch
import torch.nn.functional as F

ATTN_NAME = "tempo"


@dataclass
class AttentionRecorder:
    """Collects head-averaged attention probabilities [queries, keys] for the chosen layers of one forward,
    for the last `last_rows` queries only (None = all): pruning needs what the newest set pays earlier rows,
    never the prompt x prompt map of a long prefill."""
    layers: frozenset[int]
    last_rows: int | None = None
    weights: dict[int, torch.Tensor] = field(default_factory=dict)


_RECORDER: ContextVar[AttentionRecorder | None] = ContextVar("tempo_attention_recorder", default=None)


class BatchAttention(Protocol):
    """Set by `batched_attention` while one forward carries several runs' rows (serving/runner.py)."""
    def attend(self, layer: int | None, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               scaling: float) -> torch.Tensor: ...


_BATCH: ContextVar[BatchAttention | None] = ContextVar("tempo_batch_attention", default=None)


@contextlib.contextmanager
def batched_attention(batch: BatchAttention) -> Iterator[None]:
    """Within this block, every attention layer hands its rows to `batch`, which splits them by run."""
    token = _BATCH.set(batch)
    try:
        yield
    finally:
        _BATCH.reset(token)


@contextlib.contextmanager
def record_attention(layers: frozenset[int] | set[int], last_rows: int | None = None) -> Iterator[AttentionRecorder]:
    """Within this block, forwards record attention of `layers` for the last `last_rows` queries (per
    thread/context, so runs don't mix)."""
    rec = AttentionRecorder(frozenset(layers), last_rows)
    token = _RECORDER.set(rec)
    try:
        yield rec
    finally:
        _RECORDER.reset(token)


def bool_causal(q: int, kv: int, device: torch.device) -> torch.Tensor:
    # bottom-right aligned causal mask: query i sits at kv position kv - q + i
    return torch.ones(q, kv, dtype=torch.bool, device=device).tril(diagonal=kv - q)[None, None]


def fill_causal(mask: torch.Tensor, kv: int) -> None:
    """Set `mask` [q, >= kv] (a CPU bool tensor of a few rows) to `bool_causal(q, kv)` over its first kv columns, by
    slices: on a busy many-core host CPU `tril` took ~5 ms a call (its thread pool), 150 ms a 32-run tick."""
    q = mask.shape[0]
    mask[:, :kv] = False
    for i in range(q):
        mask[i, :kv - q + i + 1] = True


def tempo_attention_forward(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: torch.Tensor | None, dropout: float = 0.0,
                            scaling: float | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    layer = getattr(module, "layer_idx", None)
    batch = _BATCH.get()
    if batch is not None:  # several runs' rows in one forward: each run attends to its own cache with its own mask
        return batch.attend(layer, query, key, value, scaling), None
    return attend(layer, query, key, value, attention_mask, scaling, _RECORDER.get()), None


def attend(layer: int | None, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
           attention_mask: torch.Tensor | None, scaling: float, rec: AttentionRecorder | None) -> torch.Tensor:
    """One run's attention: queries [b, heads, q, dim] over its keys/values [b, kv_heads, kv, dim] under its mask
    (None: causal, bottom-right aligned); records the probabilities `rec` asks for. [b, q, heads, dim] out."""
    heads, q_len = query.shape[1], query.shape[2]
    kv_heads, kv_len = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    if attention_mask is None and q_len > 1 and q_len != kv_len:
        attention_mask = bool_causal(q_len, kv_len, query.device)  # queries after a cache: bottom-right causal
    if attention_mask is not None:
        if attention_mask.shape[-1] < kv_len:  # a static cache's slots past the mask are empty: not read at all
            kv_len = attention_mask.shape[-1]
            key, value = key[:, :, :kv_len], value[:, :, :kv_len]
        attention_mask = attention_mask[..., :kv_len]
    probs = None
    if rec is not None and layer in rec.layers:
        rows = q_len if rec.last_rows is None else min(rec.last_rows, q_len)
        probs = explicit_probs(query[:, :, q_len - rows:], key, attention_mask, groups, scaling)
        rec.weights[layer] = probs.mean(dim=(1, 2))[0]  # mean over heads -> [rows, kv]
    return attention_output(query, key, value, attention_mask, scaling, probs).transpose(1, 2).contiguous()


def attention_output(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
                     scaling: float, probs: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T) v, [b, heads, q, dim]: from `probs` (explicit_probs) when they cover every query row, else
    by SDPA (mask None: a plain prefill, SDPA's own causal kernel with no q x kv mask, or one query row)."""
    b, heads, q_len, dim = query.shape
    groups = heads // key.shape[1]
    if probs is not None and probs.shape[-2] == q_len:  # the recorded rows are all the rows: use them
        return torch.matmul(probs.to(value.dtype), value.unsqueeze(2)).reshape(b, heads, q_len, dim)
    if query.device.type == "cpu" or mask is None:
        # CPU SDPA handles GQA natively with a mask; this skips HF's repeat_kv copy (perf study: -1..13 %)
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling,
                                              is_causal=mask is None and q_len > 1, enable_gqa=groups > 1)
    # GPU with a custom mask: memory-efficient SDPA (cuDNN is switched off at install, below). enable_gqa here
    # falls back to the math kernel (1.4-1.6x greedy, less exact in bf16), and repeating K/V for every query
    # head copies the whole cache every layer (+0.4 ms per step per 256 cached rows on an H200, 3B).
    return stacked_gqa_attention(query, key, value, mask, scaling)


def group_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor, scaling: float,
                    record: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Several runs' queries [runs, heads, q, dim] over their own padded caches [runs, kv_heads, kv, dim], each under
    its own mask [runs, 1, q, kv] (serving/runner.py, graphed.py): the output [runs, heads, q, dim], and with `record` the
    head-mean probabilities [runs, q, kv] that pruning reads."""
    probs = explicit_probs(query, key, mask, query.shape[1] // key.shape[1], scaling) if record else None
    out = attention_output(query, key, value, mask, scaling, probs)
    return out, None if probs is None else probs.mean(dim=(1, 2))


def stacked_gqa_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor,
                          scaling: float) -> torch.Tensor:
    """SDPA for grouped-query attention with a mask, K/V read once: each KV head's query heads are stacked as
    extra query rows (the mask repeated to match). [b, heads, q, dim] out, as with K/V repeated per head."""
    b, heads, q_len, dim = query.shape
    kv_heads, kv_len = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    stacked_mask = mask.unsqueeze(2).expand(-1, -1, groups, -1, -1).reshape(mask.shape[0], 1, groups * q_len, kv_len)
    out = F.scaled_dot_product_attention(query.reshape(b, kv_heads, groups * q_len, dim), key, value,
                                         attn_mask=stacked_mask, scale=scaling)
    return out.reshape(b, heads, q_len, dim)


def explicit_probs(query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None, groups: int,
                    scaling: float) -> torch.Tensor:
    """softmax(q k^T) in fp32 for the given (last) query rows, grouped by KV head: [b, kv_heads, groups, q, kv]."""
    b, heads, q_len, dim = query.shape
    qg = query.reshape(b, heads // groups, groups, q_len, dim)
    scores = torch.matmul(qg, key.unsqueeze(2).transpose(-1, -2)).float() * scaling
    if mask is None and q_len > 1:
        mask = bool_causal(q_len, key.shape[2], query.device)
    if mask is not None:
        m = mask[..., mask.shape[-2] - q_len:, :].unsqueeze(1)  # [b, 1, 1, q, kv]: the same last rows
        scores = scores.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else scores + m.float()
    return scores.softmax(dim=-1)


def install_tempo_attention(model: Any) -> None:
    """Register the function (once per process) and switch `model` to it."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTN_NAME, tempo_attention_forward)
    AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)
    model.set_attn_implementation(ATTN_NAME)
    if next(model.parameters()).device.type == "cuda":
        # With a custom mask SDPA would pick cuDNN attention, which builds a new plan for every new KV length
        # (~45 ms per TEMPO step on an H100, bench/README.md). Process-wide: the flash path of plain decoding
        # (no mask) never used cuDNN anyway.
        torch.backends.cuda.enable_cudnn_sdp(False)
