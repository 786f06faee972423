"""Commitment strip: where, layer by layer, each step's prediction settles (the logit lens).

For every logical step t of a finished TEMPO or soft run, the rows of step t's set are replayed in one forward
(TEMPO: the run's rows, positions and masks; soft: its concept token) and each row's hidden state after every
decoder layer l is read through the model's own final norm and lm_head: q_{l,i} = softmax(lm_head(norm(h_{l,i})) / T).
The merged lens m_l = sum_i w_i q_{l,i} uses the siblings' renormalised probabilities, as the run's own mixture
does, so m_L is exactly the distribution step t+1 was selected from. Recorded per step:
  * `p_final[l]`: m_l's probability of the output's top token (argmax m_L: the most probable token of the
    distribution step t+1 is selected from; not necessarily kept by the run, and after the last step not chosen);
  * `commit_layer`: the first layer from which that token stays m's top-1 through the last layer (NDIF's
    commitment layer; equal to the number of layers when it settles only at the output);
  * `js[l]`: the siblings' generalised Jensen-Shannon divergence H(m_l) - sum_i w_i H(q_{l,i}) (nats; None for
    a set of one), and `part_layer`: the first layer from which the siblings' top-1 predictions differ through
    the last layer (None when they end up agreeing, or for a set of one);
  * `lens[l]`: m_l's top-k tokens and probabilities, what the strip's hover shows.
Only these numbers are kept (steps x layers x top-k), never the hidden states or the vocabulary-sized rows.
"""

from __future__ import annotations

import threading
from typing import Any, Iterator

import torch

from ..config import build_settings
from ..model import LoadedModel
from ..trace import Trace
from .replay import in_chunks, replay_inputs

LENS_TOP_K = 3
ROWS_PER_PROJECTION = 256  # rows projected to the vocabulary at once: bounds the [rows, vocab] buffer


def final_norm_and_head(lm: LoadedModel) -> tuple[Any, Any]:
    """The model's final norm and lm_head (the lens); ValueError naming what is missing."""
    base = getattr(lm.model, "model", None)
    norm = getattr(base, "norm", None)
    head = lm.model.get_output_embeddings()
    if norm is None or head is None:
        raise ValueError(f"commitment: {type(lm.model).__name__} has no final norm ('model.norm') and lm_head to "
                         "read hidden states through")
    return norm, head


def layer_states(lm: LoadedModel, trace: Trace, stop: threading.Event | None = None
                 ) -> tuple[list[torch.Tensor], list[list[int]]]:
    """Each decoder layer's output for the run's generated rows through the final norm, as lm_head reads it
    ([generated rows, hidden] per layer, layer 1 first; the prompt's rows are not kept), and the rows of each
    step's set counted from the first generated row."""
    try:
        kwargs, rows = replay_inputs(lm, trace)
    except ValueError as exc:
        raise ValueError(f"commitment: {exc}") from None
    norm, _ = final_norm_and_head(lm)
    final: list[torch.Tensor] = []
    hook = norm.register_forward_hook(lambda module, args, output: final.append(output))
    # hidden_states: the embeddings, then each decoder layer's output; the last layer's is read where the model
    # itself normalises it (transformers versions differ on whether the last entry is normed already). A long
    # replay comes in pieces: of each, only the generated rows are kept, and each layer's are joined.
    first = len(trace.prompt_token_ids)

    def generated(out: Any, at: int) -> list[torch.Tensor]:
        skip = max(0, first - at)
        last = final.pop()[0, skip:]  # the model's own pass through the norm (the calls below are hooked too)
        states = [norm(h[0, skip:]) for h in out.hidden_states[1:-1]]
        final.clear()
        return states + [last]
    try:
        with torch.inference_mode():
            pieces = in_chunks(lm, lm.model, kwargs, stop, keep=generated, output_hidden_states=True,
                               logits_to_keep=1)
    finally:
        hook.remove()
    with torch.inference_mode():
        states = [torch.cat(layer) for layer in zip(*pieces)]
    return states, [[r - first for r in step_rows] for step_rows in rows]


def measure_iter(lm: LoadedModel, trace: Trace, top_k: int = LENS_TOP_K, stop: threading.Event | None = None
                 ) -> Iterator[float]:
    """Fill `trace.commitment` (see the module doc), yielding the fraction done after each layer. `stop` ends a
    long replay between its forwards (replay.ReplayStopped)."""
    _, head = final_norm_and_head(lm)
    temperature = build_settings(trace.settings).temperature
    states, rows = layer_states(lm, trace, stop)
    n_layers = len(states)
    # each row's share of its step's merged lens (a soft run's one concept row stands for its whole set)
    weights = [torch.tensor([c.prob for c in st.candidates] if len(r) > 1 else [1.0], device=lm.device)
               for st, r in zip(trace.steps, rows)]
    weights = [w / w.sum() for w in weights]
    texts: dict[int, str] = {}

    def read(layer: int) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor, list[list[int]], list[float]]]:
        """Per chunk of steps at `layer`: (steps, merged lens [n, vocab], their entropies [n], each step's siblings'
        top-1s, each step's sum_i w_i H(q_i)); the rows projected a bounded chunk at a time."""
        for chunk in _chunks(rows, ROWS_PER_PROJECTION):
            flat = [r for t in chunk for r in rows[t]]
            mix = torch.zeros(len(chunk), len(flat), device=lm.device)  # each step's weights over its own rows
            at = 0
            for n, t in enumerate(chunk):
                mix[n, at:at + len(rows[t])] = weights[t]
                at += len(rows[t])
            with torch.inference_mode():
                q = torch.softmax(head(states[layer][flat]).float() / temperature, dim=-1)
            m = mix @ q
            own = mix @ -torch.special.xlogy(q, q).sum(-1)
            tops = q.argmax(dim=-1).tolist()
            split, at = [], 0
            for t in chunk:
                split.append(tops[at:at + len(rows[t])])
                at += len(rows[t])
            yield chunk, m, -torch.special.xlogy(m, m).sum(-1), split, own.tolist()

    final: list[int] = []
    per_step = [{"step": t, "p_final": [], "lens": [], "js": [] if len(r) > 1 else None, "top1": [], "apart": []}
                for t, r in enumerate(rows)]
    for n, layer in enumerate(reversed(range(n_layers))):  # the last layer first: it names each step's final token
        for chunk, m, h_m, sibling_tops, h_own in read(layer):
            if layer == n_layers - 1:
                final += m.argmax(dim=-1).tolist()
            top_p, top_i = (x.tolist() for x in m.topk(top_k, dim=-1))
            p_final = m[torch.arange(len(chunk)), [final[t] for t in chunk]].tolist()
            for j, t in enumerate(chunk):
                rec = per_step[t]
                rec["p_final"].append(p_final[j])
                rec["lens"].append([[_text(lm, texts, i), p] for i, p in zip(top_i[j], top_p[j])])
                rec["top1"].append(top_i[j][0] == final[t])
                rec["apart"].append(len(set(sibling_tops[j])) > 1)
                if rec["js"] is not None:
                    rec["js"].append(max(0.0, float(h_m[j]) - h_own[j]))
        yield (n + 1) / n_layers
    steps = []
    for t, rec in enumerate(per_step):
        settled, apart = rec.pop("top1")[::-1], rec.pop("apart")[::-1]  # layer 1 first again
        rec = {k: v[::-1] if isinstance(v, list) else v for k, v in rec.items()}
        steps.append({**rec, "token": _text(lm, texts, final[t]), "commit_layer": _settles_from(settled),
                      "part_layer": _settles_from(apart) if rec["js"] is not None and apart[-1] else None})
    trace.commitment = {"layers": n_layers, "top_k": top_k, "steps": steps}


def _chunks(rows: list[list[int]], limit: int) -> Iterator[list[int]]:
    """Consecutive steps whose rows add up to at most `limit` (a step of more rows goes alone)."""
    chunk: list[int] = []
    size = 0
    for t, r in enumerate(rows):
        if chunk and size + len(r) > limit:
            yield chunk
            chunk, size = [], 0
        chunk.append(t)
        size += len(r)
    if chunk:
        yield chunk


def measure(lm: LoadedModel, trace: Trace, top_k: int = LENS_TOP_K) -> dict[str, Any]:
    for _ in measure_iter(lm, trace, top_k):
        pass
    return trace.commitment


def _settles_from(flags: list[bool]) -> int:
    """The first layer (1-based) from which every flag through the last is True (the last flag must be True)."""
    layer = len(flags)
    while layer > 1 and flags[layer - 2]:
        layer -= 1
    return layer


def _text(lm: LoadedModel, cache: dict[int, str], token_id: int) -> str:
    if token_id not in cache:
        cache[token_id] = lm.decode([token_id])
    return cache[token_id]
