"""The recorded run: plain dataclasses that serialise to the JSON trace.

Everything a picture or a report needs is in here; nothing refers to live model state.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from .text import finalise_text, text_decoder

SCHEMA_VERSION = 1


@dataclass
class Candidate:
    token_id: int
    text: str
    prob: float  # probability in the distribution it was selected from
    row: int = -1  # physical row (KV-cache index) the token was fed at; -1 if never fed
    pruned_at: int | None = None  # logical step after which it was pruned (None = alive)
    attention: float | None = None  # cumulative attention score used by pruning (frozen once pruned)
    pruning_score: float | None = None  # the score that pruned it, against its step's threshold then
    attention_by_step: dict[int, float] = field(default_factory=dict)  # later step -> mean attention
    attention_by_layer: dict[int, dict[int, float]] = field(default_factory=dict)  # multi-scale: step -> layer -> att
    unattended: bool = False  # kept only because its whole set failed (keep_unattended)
    visits: int | None = None  # MCTS visit count
    value: float | None = None  # MCTS mean value
    display: str | None = None  # how to show a piece of a multi-byte character (None: as `text`)

    @property
    def shown(self) -> str:
        return self.text if self.display is None else self.display

    @property
    def alive(self) -> bool:
        return self.pruned_at is None


@dataclass
class Step:
    step: int
    position: int  # logical position id shared by every candidate of the set
    selection_threshold: float
    pruning_threshold: float | None
    candidates: list[Candidate]
    hidden_rows: list[int] = field(default_factory=list)  # rows masked from this step's queries
    dropped_eos: bool = False  # a less probable EOS candidate was removed from this set
    alternatives: list[dict[str, Any]] = field(default_factory=list)  # top tokens not chosen (TEMPO: the next 3)
    time_ms: float = 0.0

    @property
    def alive(self) -> list[Candidate]:
        return [c for c in self.candidates if c.alive]


@dataclass
class Trace:
    model: str
    mode: str
    settings: dict[str, Any]
    prompt: str
    prompt_text: str  # the prompt as fed to the model (chat template applied)
    prompt_token_ids: list[int]
    steps: list[Step] = field(default_factory=list)
    text: str = ""
    clean_text: str = ""
    stop_reason: str = "running"
    timings: dict[str, float] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    faithfulness: dict[str, Any] | None = None  # filled by tempo_core.faithfulness.measure
    commitment: dict[str, Any] | None = None  # filled by tempo_core.commitment.measure
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_plain(self) -> dict[str, Any]:
        """`to_dict` as strict JSON allows it: a non-finite number (a perplexity of no text) becomes null. What
        leaves the server (the API's answer, the page's trace state, downloads) is this."""
        return _finite(self.to_dict())

    def to_json(self, **kwargs: Any) -> str:
        """Strict JSON (`to_plain`)."""
        return json.dumps(self.to_plain(), ensure_ascii=False, allow_nan=False, **kwargs)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Trace":
        if not isinstance(data, dict) or "steps" not in data:
            raise ValueError("not a TEMPO trace: expected a JSON object with 'steps'")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(f"unsupported trace schema_version {version!r}; this build reads {SCHEMA_VERSION}")
        steps = []
        for s in data["steps"]:
            cands = []
            for c in s["candidates"]:
                c = dict(c)
                c["attention_by_step"] = {int(k): v for k, v in c.get("attention_by_step", {}).items()}
                c["attention_by_layer"] = {int(k): {int(layer): v for layer, v in per.items()}
                                           for k, per in c.get("attention_by_layer", {}).items()}
                cands.append(Candidate(**c))
            steps.append(Step(**{**s, "candidates": cands}))
        return cls(**{**data, "steps": steps})

    @classmethod
    def from_json(cls, text: str) -> "Trace":
        return cls.from_dict(json.loads(text))


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def summarise(trace: Trace, total_ms: float, forward_passes: int, tokens_processed: int,
              physical_tokens: int) -> None:
    """Fill `timings` (per logical step) and `stats` from the steps so far; every mode reports the same fields."""
    n = len(trace.steps)
    sizes = [len(st.candidates) for st in trace.steps]
    trace.timings.update(total_ms=total_ms, mean_step_ms=sum(st.time_ms for st in trace.steps) / n if n else 0.0,
                         steps_per_s=n / (total_ms / 1e3) if total_ms > 0 else 0.0)
    trace.stats.update(steps=n, physical_tokens=physical_tokens, mean_set_size=sum(sizes) / n if n else 0.0,
                       max_set_size=max(sizes, default=0),
                       pruned=sum(1 for st in trace.steps for c in st.candidates if not c.alive),
                       forward_passes=forward_passes, tokens_processed=tokens_processed)


def rewind(trace: Trace, step: int) -> Trace:
    """The run as it stood right after logical `step`: later steps removed, later pruning undone."""
    past = copy.deepcopy(trace)
    past.steps = past.steps[:max(0, step + 1)]
    past.faithfulness = None
    if past.commitment is not None:  # a step's lens depends only on what came before it: still true
        past.commitment = {**past.commitment, "steps": past.commitment["steps"][:len(past.steps)]}
    for st in past.steps:
        for c in st.candidates:
            if trace.mode != "mcts" and c.pruned_at is not None and c.pruned_at > step:
                c.pruned_at, c.pruning_score = None, None
            c.attention_by_step = {s: v for s, v in c.attention_by_step.items() if s <= step}
            c.attention_by_layer = {s: v for s, v in c.attention_by_layer.items() if s <= step}
            c.attention = (sum(c.attention_by_step.values()) / len(c.attention_by_step)
                           if c.attention_by_step else None)
            c.unattended = c.unattended and c.pruned_at is None and bool(c.attention_by_step)
    finalise_text(past, text_decoder(past))
    return past
