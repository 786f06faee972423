"""A finished run's inputs, fed again in ONE forward: what the analyses after a run (faithfulness, commitment,
the study's attention) read the model's state from, instead of stepping through the run again."""

from __future__ import annotations

from typing import Any

import torch

from .config import build_settings
from .layout import Layout, full_mask
from .model import LoadedModel
from .soft import soft_inputs
from .trace import Trace


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


def merged_distributions(lm: LoadedModel, trace: Trace) -> list[torch.Tensor]:
    """Element t: the distribution the run selected step t+1 from (TEMPO: the probability-weighted mixture of step
    t's siblings' next-token distributions; soft: the output after its concept token), recomputed in one forward."""
    if not trace.steps:
        return []
    kwargs, rows = replay_inputs(lm, trace)
    temperature = build_settings(trace.settings).temperature
    head = lm.model.get_output_embeddings()
    out = []
    with torch.inference_mode():
        hidden = lm.model.get_decoder()(**kwargs, use_cache=False).last_hidden_state[0]
        for st, r in zip(trace.steps, rows):  # one set's [k, vocab] at a time: memory stays that of a step
            probs = torch.softmax(head(hidden[r]).float() / temperature, dim=-1)
            w = torch.tensor([c.prob for c in st.candidates] if len(r) > 1 else [1.0], device=probs.device)
            out.append((w / w.sum()) @ probs)
    return out
