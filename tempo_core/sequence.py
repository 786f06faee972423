"""The model's view of one TEMPO run: the layout of its rows, its one KV cache, and the forwards that feed them.

`ParallelSequence` turns "append this set at this position" into a forward: the set's rows at one shared
position id, masked as layout.py lays them out, over the run's cache (runtime/placement.py: a static slot, a K/V
store slot or a DynamicCache). A forward is a `ForwardRequest` (forward.py): served here (`serve`), replayed from a
CUDA graph where the run has one, or handed to whoever batches runs (serving/).
"""

from __future__ import annotations

from typing import Any, Iterator

import torch

from .config import TempoSettings
from .forward import ForwardRequest
from .layout import Layout, full_mask, step_mask
from .model import LoadedModel
from .pruning import layer_weights
from .runtime.attention import record_attention
from .runtime.fastpath import fast_rows, pad_set, padded_mask, rows_to_feed, unpad
from .runtime.graphs import BUCKETS, bucket, graphs_unavailable
from .runtime.placement import CachePlacement
from .runtime.prefix import PrefixStore
from .trace import Step


class ParallelSequence:
    """One run's rows, cache and forwards (`plan_set`, `serve`, `feed`), counting what they cost."""

    def __init__(self, lm: LoadedModel, s: TempoSettings, prompt_ids: list[int], static_cache: bool = False,
                 cuda_graphs: bool = False, shared_kv: bool = False):
        """`static_cache`: a preallocated `StaticCache` borrowed from the model's pool, every forward at explicit
        cache positions with a mask over the whole buffer (the shape a captured CUDA graph needs); same results.
        `cuda_graphs`: also replay sets from graphs captured on that cache, where this model and run allow it
        (`graphs_off` says why not). `shared_kv`: otherwise keep the cache in a slot of the model's K/V store where
        it has one. `close()` gives the cache back."""
        self.lm, self.s = lm, s
        self.layout = Layout.for_prompt(prompt_ids, shared_positions=s.use_custom_rope)
        # room for sets of one token (and a bucket's pad rows); `fit` moves to a larger slot when needed
        self.place = CachePlacement(lm, len(prompt_ids) + s.max_tokens + BUCKETS[-1], static_cache,
                                    graphs_unavailable(lm, s) if cuda_graphs else "not requested", shared_kv,
                                    no_cache=s.disable_kv_cache)
        self.forward_passes = 0
        self.tokens_processed = 0
        self.graphed_steps = 0
        self.padded_rows = 0  # pad rows fed besides the real tokens (a CPU 3-row set, a graph's bucket)
        self.capture = (layer_weights(lm.model.config.num_hidden_layers, s)
                        if s.use_retroactive_pruning and s.mode == "tempo" else {})

    @property
    def cache(self) -> Any:
        return self.place.cache

    @property
    def graphs_off(self) -> str | None:
        return self.place.graphs_off

    @property
    def batchable(self) -> bool:
        """Whether this run's forwards may share a forward with other runs' (serving/): a DynamicCache, no graphs."""
        return self.place.batchable

    def close(self) -> None:
        self.place.close()

    def _forward(self, ids: list[int], positions: list[int], mask: torch.Tensor | None, keep: int,
                 record: bool = True, padding: int = 0):
        """One forward of `ids`; logits of the last `keep` rows, and (if `record` and pruning is on) the
        attention those rows pay, never more rows than that."""
        dev = self.lm.device
        layers = self.capture.keys() if record else ()
        mask, extra = self.place.forward_inputs(mask, self.layout.rows - (len(ids) - padding), len(ids))
        mask = None if mask is None else mask.to(dev)
        with torch.inference_mode(), fast_rows(self.lm.model), record_attention(layers, last_rows=keep) as rec:
            out = self.lm.forward(input_ids=torch.tensor([ids], device=dev),
                                  position_ids=torch.tensor([positions], device=dev),
                                  attention_mask=mask, cache=self.cache, use_cache=self.cache is not None,
                                  logits_to_keep=keep, **extra)
        self.forward_passes += 1
        self.tokens_processed += len(ids) - padding  # real tokens; a CPU pad row is not one
        self.padded_rows += padding
        return out.logits[0], rec.weights

    def prefill(self) -> torch.Tensor:
        """Feed the prompt exactly once; returns the last row's logits."""
        return self._forward(self.layout.tokens, self.layout.positions, None, keep=1, record=False)[0][-1]

    def prefill_with(self, steps: list[Step]) -> torch.Tensor:
        """Feed the prompt and the sets of recorded `steps` in ONE forward (each row masked as it was when
        the run fed it; pruning replayed); returns the last set's logits [k, V]. Used to resume from a prefix."""
        for st in steps:
            self.layout.append_set([c.token_id for c in st.candidates], st.position)
            self.replay_pruning(steps, st.step)
        self.place.fit(self.layout.rows, rows_filled=0)
        mask = full_mask(self.layout, self.s.allow_intraset_token_visibility, self.lm.device)
        k = len(steps[-1].candidates)
        return self._forward(self.layout.tokens, self.layout.positions, mask, keep=k, record=False)[0]

    def replay_pruning(self, steps: list[Step], step: int) -> None:
        """Hide the rows a recorded run pruned right after `step` (its pruning decisions come after the forward)."""
        for past in steps[:step + 1]:
            for c in past.candidates:
                if c.pruned_at == step:
                    self.layout.kill(c.row)

    def reuse_prefix(self, store: PrefixStore) -> int:
        """Copy the longest prefix of the prompt that `store` holds into this run's (empty) cache; the rows copied."""
        rows, kv = store.longest(self.layout.tokens)
        self.place.copy_prefix(kv, rows)
        return rows

    def prefill_requests(self, chunk: int, start: int = 0) -> Iterator[ForwardRequest]:
        """The prompt from row `start` (those before are in the cache) as forwards of at most `chunk` rows each,
        each causal over the cache before it (the same cache as one prefill); the last one's logits are the
        prompt's. A long prompt thus takes turns."""
        tokens, positions = self.layout.tokens, self.layout.positions
        for first in range(start, len(tokens), chunk):
            yield ForwardRequest(self, tokens[first:first + chunk], positions[first:first + chunk], None, keep=1,
                                 record=False, ends_prompt=first + chunk >= len(tokens))

    def plan_set(self, token_ids: list[int], position: int) -> ForwardRequest:
        """Append one set at one position and return the forward that feeds it: already served where it replays a
        CUDA graph or re-feeds the whole sequence (no KV cache), else pending (`serve`, or a batch's forward).
        Its logits are [k, V]; its attention {layer: [k, rows]} for the layers pruning reads."""
        k, dev = len(token_ids), self.lm.device
        visible = self.s.allow_intraset_token_visibility
        past_alive = list(self.layout.alive)
        self.place.fit(len(past_alive) + (bucket(k) or k), rows_filled=len(past_alive))  # the set and its pad rows
        rows = self.layout.append_set(token_ids, position)
        positions = self.layout.positions[-k:]
        req = ForwardRequest(self, token_ids, positions, None, keep=k, rows=rows)
        graphs = self.place.graphs
        if graphs is not None and graphs.usable(k, self.layout.rows):
            try:  # the bucket's mask: the set's rows and its pad rows, each seeing the live past
                mask = step_mask(past_alive, bucket(k), visible, torch.device("cpu"))
                req.logits, req.attention = graphs.feed(token_ids, positions, mask, len(past_alive),
                                                        tuple(self.capture))
            except RuntimeError as exc:  # a model the capture cannot take: this run goes on eagerly
                self.place.graphs = None
                self.place.graphs_off = f"capture failed ({str(exc).splitlines()[0][:120]})"
            else:
                self.forward_passes += 1
                self.tokens_processed += k
                self.graphed_steps += 1
                self.padded_rows += bucket(k) - k
                return req
        if self.cache is None:
            mask = full_mask(self.layout, visible, dev)
            req.logits, req.attention = self._forward(self.layout.tokens, self.layout.positions, mask, keep=k)
        elif not (k == 1 and all(past_alive)):  # plain decoding keeps HF's mask-free fast path (mask None)
            req.mask = step_mask(past_alive, k, visible, torch.device("cpu"))  # a batch lays masks out on the CPU
        return req

    def serve(self, req: ForwardRequest) -> None:
        """Run `req` in a forward of its own. On CPU fp32 a 3-row set is fed as 4 (fastpath.py), the pad row a
        copy of the last sibling that no sibling sees, dropped from the cache after."""
        k = len(req.token_ids)
        pad = rows_to_feed(self.lm.model, k) - k if req.mask is not None else 0
        if not pad:
            req.logits, req.attention = self._forward(req.token_ids, req.positions, req.mask, req.keep, req.record)
            return
        ids, positions, mask = pad_set(req.token_ids, req.positions, padded_mask(req.mask, pad))
        logits, attention = self._forward(ids, positions, mask, keep=req.keep + pad, record=req.record, padding=pad)
        self.place.drop_tail(pad)  # a static cache's next write then goes into the pad row's slot
        req.logits, req.attention = unpad(logits, attention, k)

    def feed(self, token_ids: list[int], position: int) -> tuple[list[int], torch.Tensor, dict[int, torch.Tensor]]:
        """Append one set at one position and feed it in a forward of its own; returns (rows, logits [k, V],
        {layer: attention [k, rows]} for the layers pruning reads, empty without pruning)."""
        req = self.plan_set(token_ids, position)
        if req.logits is None:
            self.serve(req)
        return req.rows, req.logits, req.attention
