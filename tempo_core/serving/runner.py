"""The model runner: several runs' pending rows fed to the model in ONE forward.

The runs' rows go side by side, each at its own positions, so the linear layers read the weights once; in attention
every run keeps to its own KV cache and its own TEMPO mask (`BatchForward.attend`); selection, merging and pruning
stay in the runs. On a CPU a forward of a small model is bound by reading its weights, so rows added to it cost
little: this is what lets one model serve a class. On a GPU the runs whose caches are in the K/V store go in a
forward of a fixed shape replayed from a CUDA graph instead (graphed.py). A batch also takes for all its runs at
once what each would otherwise launch kernels and sync for on its own: the next distribution and its top-k
(`NextSet`, every batch), and the scores pruning reads (`PaidAttention`, a captured forward).
"""

from __future__ import annotations

from typing import Any

import torch

from ..forward import ForwardRequest
from ..runtime.attention import AttentionRecorder, attend, batched_attention, fill_causal, group_attention
from ..runtime.fastpath import fast_rows
from ..runtime.kvstore import KVStore, SlotCache
from ..selection import next_distributions
from .graphed import batch_graphs

GROUP_MAX_ROWS = 8  # runs feeding more rows (a prompt's chunk) attend on their own
GROUP_SLACK = 1.5  # a group's longest cache is at most this times its shortest (+ 32 rows): little padding


class BatchForward:
    """What attention needs while one forward carries several runs' rows: where each run's rows are, and its own
    cache, mask and attention recorder. Runs of a few rows with caches of similar length attend together, in one
    padded call per layer (`_Group`); the others one by one."""

    def __init__(self, requests: list[ForwardRequest], device: torch.device):
        self.requests = requests
        self.bounds, first = [], 0
        for req in requests:
            self.bounds.append((first, first + len(req.token_ids)))
            first += len(req.token_ids)
        self.recorders = [AttentionRecorder(frozenset(req.seq.capture) if req.record else frozenset(), req.keep)
                          for req in requests]
        lengths = [req.seq.cache.get_seq_length() + len(req.token_ids) for req in requests]  # cache after the rows
        stores = [_store(req.seq.cache, lengths[i]) for i, req in enumerate(requests)]
        few = sorted((i for i, req in enumerate(requests) if len(req.token_ids) <= GROUP_MAX_ROWS),
                     key=lambda i: (stores[i] is None, lengths[i]))
        self.groups: list[_Group] = []
        self.alone = [i for i, req in enumerate(requests) if len(req.token_ids) > GROUP_MAX_ROWS]
        while few:  # runs of one kind (in the K/V store or not) whose caches are of similar length
            n = 1
            while (n < len(few) and stores[few[n]] is stores[few[0]]
                   and lengths[few[n]] <= GROUP_SLACK * lengths[few[0]] + 32):
                n += 1
            members, few = few[:n], few[n:]
            if n == 1:
                self.alone += members
            else:
                self.groups.append(_Group(members, self, lengths, stores[members[0]], device))
        self.masks = {i: None if requests[i].mask is None else requests[i].mask.to(device) for i in self.alone}

    def attend(self, layer: int | None, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               scaling: float) -> torch.Tensor:
        """Each run's queries over its own cache (its new keys and values appended first), under its own mask."""
        out = query.new_empty(1, query.shape[2], query.shape[1], query.shape[3])  # [1, rows, heads, dim]
        for i in self.alone:
            req, (a, b) = self.requests[i], self.bounds[i]
            keys, values = req.seq.cache.update(key[:, :, a:b], value[:, :, a:b], layer)
            out[:, a:b] = attend(layer, query[:, :, a:b], keys, values, self.masks[i], scaling, self.recorders[i])
        for group in self.groups:
            group.attend(layer, query, key, value, scaling, out)
        return out


class _Group:
    """Runs that attend in one call: their queries gathered into [runs, heads, q, dim] (q = the most rows any of
    them feeds), their caches padded to the longest, each run's own mask in its slice and nothing past it. With
    their caches in one K/V store (runtime/kvstore.py) the new rows go in with one write per layer and the caches come
    out with one gather; otherwise each run's cache is appended to and copied in on its own."""

    def __init__(self, members: list[int], batch: BatchForward, lengths: list[int], store: KVStore | None,
                 device: torch.device):
        self.members, self.batch, self.store = members, batch, store
        self.q = max(len(batch.requests[i].token_ids) for i in members)
        self.lengths = [lengths[i] for i in members]
        self.kv = max(lengths[i] for i in members)
        mask = torch.zeros(len(members), 1, self.q, self.kv, dtype=torch.bool)
        slots, rows, cache_slots, cache_rows = [], [], [], []
        for j, i in enumerate(members):
            req, (a, b) = batch.requests[i], batch.bounds[i]
            q, kv = b - a, lengths[i]
            if req.mask is not None:
                mask[j, 0, :q, :kv] = req.mask[0, 0]
            else:  # causal, bottom-right aligned (one row: the whole cache)
                fill_causal(mask[j, 0, :q], kv)
            mask[j, 0, q:, 0] = True  # pad query rows see one key (no NaN); their output is dropped
            slots += [j * self.q + r for r in range(q)]
            rows += list(range(a, b))
            if store is not None:  # where the rows go in the store: the run's slot, after its cached rows
                cache_slots += [req.seq.cache.slot] * q
                cache_rows += list(range(kv - q, kv))
        gather = [batch.bounds[i][0] + min(r, batch.bounds[i][1] - batch.bounds[i][0] - 1)
                  for i in members for r in range(self.q)]
        self.mask = mask.to(device)
        self.gather = torch.tensor(gather, device=device)  # padded query slot -> row of the forward
        self.slots, self.rows = torch.tensor(slots, device=device), torch.tensor(rows, device=device)
        if store is not None:
            self.cache_slots = torch.tensor(cache_slots, device=device)
            self.cache_rows = torch.tensor(cache_rows, device=device)
            self.member_slots = torch.tensor([batch.requests[i].seq.cache.slot for i in members], device=device)
            self.caches = [(batch.requests[i].seq.cache, batch.bounds[i][1] - batch.bounds[i][0]) for i in members]

    def _keys_values(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The members' new keys/values appended to their caches, and their caches padded: [runs, kv_heads, kv, dim]."""
        if self.store is not None:
            self.store.write(layer, self.cache_slots, self.cache_rows, key[0].transpose(0, 1).index_select(0, self.rows),
                             value[0].transpose(0, 1).index_select(0, self.rows))  # [rows, kv_heads, dim]
            for cache, q in self.caches:
                cache.layers[layer].length += q
            return self.store.read(layer, self.member_slots, self.kv)
        g, (_, kv_heads, _, dim) = len(self.members), key.shape
        keys = key.new_zeros(g, kv_heads, self.kv, dim)
        values = value.new_zeros(g, kv_heads, self.kv, dim)
        for j, i in enumerate(self.members):
            (a, b), req = self.batch.bounds[i], self.batch.requests[i]
            k, v = req.seq.cache.update(key[:, :, a:b], value[:, :, a:b], layer)
            keys[j, :, :k.shape[2]], values[j, :, :v.shape[2]] = k[0], v[0]
        return keys, values

    def attend(self, layer: int | None, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               scaling: float, out: torch.Tensor) -> None:
        batch, g = self.batch, len(self.members)
        _, heads, _, dim = query.shape
        keys, values = self._keys_values(layer, key, value)
        q = query[0].index_select(1, self.gather).view(heads, g, self.q, dim).transpose(0, 1)
        recorders = [batch.recorders[i] for i in self.members]
        result, means = group_attention(q, keys, values, self.mask, scaling,
                                        record=any(layer in rec.layers for rec in recorders))
        for j, (i, rec) in enumerate(zip(self.members, recorders)):
            if layer in rec.layers:
                (a, b), keep = batch.bounds[i], batch.requests[i].keep
                rec.weights[layer] = means[j, b - a - keep:b - a, :self.lengths[j]]
        result = result.transpose(1, 2).reshape(g * self.q, heads, dim)
        out[0].index_copy_(0, self.rows, result.index_select(0, self.slots))


def _store(cache: Any, rows: int) -> KVStore | None:
    """The K/V store `cache` lives in, if it can hold `rows` rows there (`SlotCache.room_for`)."""
    return cache.room_for(rows) if isinstance(cache, SlotCache) else None


def forward_batch(requests: list[ForwardRequest]) -> int:
    """Serve `requests` (runs on one model, each with its own DynamicCache) in one forward; a lone request gets a
    forward of its own (`ParallelSequence.serve`: the single-run path, unchanged). On a GPU the runs that fit a
    captured forward of a fixed shape go in that (graphed.py) and the others in a second, eager, forward.
    Returns how many runs attended in groups."""
    graphs = batch_graphs(requests[0].seq.lm) if len(requests) > 1 else None
    left = graphs.serve(requests) if graphs is not None else requests
    grouped = len(requests) - len(left)
    if len(left) == 1:
        left[0].seq.serve(left[0])
    elif left:
        grouped += _eager_batch(left)
    _next_sets([req for req in requests if req.next_set is not None])
    return grouped


def _next_sets(requests: list[ForwardRequest]) -> None:
    """Every run's next distribution and top-k from its served logits, for all of `requests` at once."""
    if len(requests) < 2:
        return  # a lone run takes its own, as it does outside a batch
    asked = [req.next_set for req in requests]
    dists, tops = next_distributions([req.logits for req in requests], [a.weights for a in asked],
                                     [a.temperature for a in asked], [a.top for a in asked])
    for j, a in enumerate(asked):
        a.probs, a.top_k = dists[j], tops[j]


def _eager_batch(requests: list[ForwardRequest]) -> int:
    """Several runs' rows in one eager forward, attention split by `BatchForward`."""
    lm = requests[0].seq.lm
    dev = lm.device
    batch = BatchForward(requests, dev)
    keep = [i for req, (a, b) in zip(requests, batch.bounds) for i in range(b - req.keep, b)]
    ids = [t for req in requests for t in req.token_ids]
    positions = [p for req in requests for p in req.positions]
    placeholder = torch.ones(1, 1, 1, 1, dtype=torch.bool, device=dev)  # a 4D mask: HF passes it on untouched
    with torch.inference_mode(), fast_rows(lm.model), batched_attention(batch):
        out = lm.forward(input_ids=torch.tensor([ids], device=dev), position_ids=torch.tensor([positions], device=dev),
                         attention_mask=placeholder, cache=None, use_cache=False,
                         logits_to_keep=torch.tensor(keep, device=dev))
    logits = out.logits[0].split([req.keep for req in requests])
    for req, rec, part in zip(requests, batch.recorders, logits):
        req.logits, req.attention = part, rec.weights
        req.seq.forward_passes += 1
        req.seq.tokens_processed += len(req.token_ids)
    return sum(len(group.members) for group in batch.groups)
