"""A finished run's inputs, fed again in one pass: what the analyses after a run (faithfulness, commitment,
the study's attention) read the model's state from, instead of stepping through the run again. A long run is fed
in forwards of REPLAY_CHUNK rows on one cache (each row masked as it was), with a stop flag checked between them:
on a shared server no single forward then outlasts a time limit by more than one chunk."""

from __future__ import annotations

import threading
from typing import Any, Callable

import torch

from ..config import build_settings
from ..layout import Layout, full_mask
from ..model import LoadedModel, cache_argument
from ..soft import soft_inputs
from ..trace import Trace


def replay_inputs(lm: LoadedModel, trace: Trace) -> tuple[dict[str, Any], list[list[int]]]:
    """The model inputs that feed a whole TEMPO or soft run in one forward (TEMPO: its rows, positions and masks,
    pruning included; soft: its concept tokens), and the rows of each step's set."""
    s = build_settings(trace.settings)
    if trace.mode == "soft":
        rows = [[len(trace.prompt_token_ids) + st.step] for st in trace.steps]
        return {"inputs_embeds": soft_inputs(lm, trace.prompt_token_ids, trace.steps)}, rows
    if trace.mode != "tempo":
        raise ValueError(f"defined for TEMPO and soft runs, not {trace.mode!r}")
    layout = Layout.for_prompt(trace.prompt_token_ids, shared_positions=s.use_custom_rope)
    rows = []
    for st in trace.steps:
        rows.append(layout.append_set([c.token_id for c in st.candidates], st.position))
        if rows[-1] != [c.row for c in st.candidates]:
            raise ValueError(f"trace does not replay: step {st.step} rows {rows[-1]} != recorded")
        for past in trace.steps[:st.step + 1]:  # rows the run pruned right after this step
            for c in past.candidates:
                if c.pruned_at == st.step:
                    layout.kill(c.row)
    return {"input_ids": torch.tensor([layout.tokens], device=lm.device),
            "position_ids": torch.tensor([layout.positions], device=lm.device),
            "attention_mask": full_mask(layout, s.allow_intraset_token_visibility, lm.device)}, rows


REPLAY_CHUNK = 128  # rows per forward of a long replay (engine.PREFILL_CHUNK: the same cost a forward)


class ReplayStopped(Exception):
    """The stop flag was set between two forwards of a replay."""


def in_chunks(lm: LoadedModel, module: Callable[..., Any], kwargs: dict[str, Any],
              stop: threading.Event | None = None, keep: Callable[[Any, int], Any] = lambda out, first: out,
              chunk: int = REPLAY_CHUNK, **extra: Any) -> list[Any]:
    """`module(**kwargs, **extra)` over a sequence of N rows: one forward if N <= `chunk`, else forwards of `chunk`
    rows on one DynamicCache, each with its rows of the full mask (rows before it are in the cache); for each
    forward `keep(output, its first row)` (what to hold on to of it). ReplayStopped if `stop` is set between two."""
    seq = kwargs.get("input_ids", kwargs.get("inputs_embeds"))
    n = seq.shape[1]
    if n <= chunk:
        return [keep(module(**kwargs, use_cache=False, **extra), 0)]
    from transformers import DynamicCache
    cache = DynamicCache(config=lm.model.config)
    outs = []
    for a in range(0, n, chunk):
        if stop is not None and stop.is_set():
            raise ReplayStopped
        b = min(n, a + chunk)
        piece = {k: v[:, :, a:b, :b] if k == "attention_mask" else v[:, a:b] for k, v in kwargs.items()}
        outs.append(keep(module(**piece, **{cache_argument(module): cache}, use_cache=True, **extra), a))
    return outs


def merged_distributions(lm: LoadedModel, trace: Trace, stop: threading.Event | None = None) -> list[torch.Tensor]:
    """Element t: the distribution the run selected step t+1 from (TEMPO: the probability-weighted mixture of step
    t's siblings' next-token distributions; soft: the output after its concept token), recomputed by a replay."""
    if not trace.steps:
        return []
    kwargs, rows = replay_inputs(lm, trace)
    temperature = build_settings(trace.settings).temperature
    head = lm.model.get_output_embeddings()
    out = []
    with torch.inference_mode():
        hidden = torch.cat(in_chunks(lm, lm.model.get_decoder(), kwargs, stop,
                                     keep=lambda out, first: out.last_hidden_state[0]))
        for st, r in zip(trace.steps, rows):  # one set's [k, vocab] at a time: memory stays that of a step
            probs = torch.softmax(head(hidden[r]).float() / temperature, dim=-1)
            w = torch.tensor([c.prob for c in st.candidates] if len(r) > 1 else [1.0], device=probs.device)
            out.append((w / w.sum()) @ probs)
    return out
