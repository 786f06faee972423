"""The recorded run: plain dataclasses that serialise to the JSON trace.

Everything a picture or a report needs is in here; nothing refers to live model state.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from .config import MODES, echo_name, echo_value

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


# --- traces from outside (uploads): every field checked, so a bad file gives one clear message ------------------
MAX_TEXT = 100_000  # characters in any one string of an uploaded trace


class TraceError(ValueError):
    """An uploaded trace is malformed; the message starts with the path of the offending field."""


def _number(where: str, v: Any, lo: float | None = None, hi: float | None = None, nullable: bool = False) -> None:
    if v is None and nullable:
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise TraceError(f"{where}: must be a finite number{' or null' if nullable else ''}, got {_brief(v)}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise TraceError(f"{where}: must be in [{lo:g}, {hi:g}], got {v!r}")


MAX_INT = 2**31 - 1  # no count, row, step or token id of a real trace comes near it


def _integer(where: str, v: Any, lo: int = 0, nullable: bool = False) -> None:
    if v is None and nullable:
        return
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= MAX_INT:
        raise TraceError(f"{where}: must be an integer in [{lo}, {MAX_INT}]{' or null' if nullable else ''}, "
                         f"got {_brief(v)}")


def _text(where: str, v: Any) -> None:
    if not isinstance(v, str):
        raise TraceError(f"{where}: must be a string, got {_brief(v)}")
    if len(v) > MAX_TEXT:
        raise TraceError(f"{where}: at most {MAX_TEXT:,} characters, got {len(v):,}")
    try:  # a lone surrogate ('\\ud800' in JSON) would break every view that encodes the text later
        v.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise TraceError(f"{where}: must be valid Unicode text; character {exc.start} is a lone surrogate") from None


def _object(where: str, v: Any) -> dict:
    if not isinstance(v, dict):
        raise TraceError(f"{where}: must be an object, got {_brief(v)}")
    return v


def _mapping(where: str, v: Any, allowed: set[str], required: set[str]) -> dict:
    _object(where, v)
    unknown = set(v) - allowed
    if unknown:
        raise TraceError(f"{where}: unknown field {sorted(unknown)[0]!a}")
    missing = required - set(v)
    if missing:
        raise TraceError(f"{where}: missing field {sorted(missing)[0]!r}")
    return v


def _brief(v: Any) -> str:
    """A value from the file as a message shows it: scalars as written, containers by their type."""
    return echo_value(v) if isinstance(v, (str, int, float, bool, type(None))) else type(v).__name__


def _check_candidate(where: str, c: Any) -> None:
    names = set(Candidate.__dataclass_fields__)
    _mapping(where, c, names, {"token_id", "text", "prob"})
    _integer(f"{where}.token_id", c["token_id"])
    _text(f"{where}.text", c["text"])
    _number(f"{where}.prob", c["prob"], 0.0, 1.0)
    _integer(f"{where}.row", c.get("row", -1), lo=-1)
    _integer(f"{where}.pruned_at", c.get("pruned_at"), nullable=True)
    _integer(f"{where}.visits", c.get("visits"), nullable=True)
    _number(f"{where}.attention", c.get("attention"), nullable=True)
    _number(f"{where}.pruning_score", c.get("pruning_score"), nullable=True)
    _number(f"{where}.value", c.get("value"), nullable=True)
    if c.get("display") is not None:
        _text(f"{where}.display", c["display"])
    if not isinstance(c.get("unattended", False), bool):
        raise TraceError(f"{where}.unattended: must be true or false")
    by_step = c.get("attention_by_step", {})
    _object(f"{where}.attention_by_step", by_step)
    for k, v in by_step.items():
        if not str(k).isdigit():
            raise TraceError(f"{where}.attention_by_step: keys must be step numbers, got {echo_name(k)!r}")
        _number(f"{where}.attention_by_step[{k}]", v)
    by_layer = c.get("attention_by_layer", {})
    _object(f"{where}.attention_by_layer", by_layer)
    for k, per in by_layer.items():
        _object(f"{where}.attention_by_layer[{echo_name(k)}]", per)
        if not str(k).isdigit() or not all(str(layer).isdigit() for layer in per):
            raise TraceError(f"{where}.attention_by_layer: keys must be step and layer numbers")
        for layer, v in per.items():
            _number(f"{where}.attention_by_layer[{k}][{layer}]", v)


def _check_step(where: str, st: Any, max_candidates: int) -> None:
    _mapping(where, st, set(Step.__dataclass_fields__), {"step", "position", "selection_threshold",
                                                         "pruning_threshold", "candidates"})
    _integer(f"{where}.step", st["step"])
    _integer(f"{where}.position", st["position"])
    _number(f"{where}.selection_threshold", st["selection_threshold"], 0.0, 1.0)
    _number(f"{where}.pruning_threshold", st["pruning_threshold"], nullable=True)
    _number(f"{where}.time_ms", st.get("time_ms", 0.0))
    cands = st["candidates"]
    if not isinstance(cands, list) or not 1 <= len(cands) <= max_candidates:
        raise TraceError(f"{where}.candidates: must be a list of 1 to {max_candidates} candidates, "
                         f"got {len(cands) if isinstance(cands, list) else _brief(cands)}")
    for i, c in enumerate(cands):
        _check_candidate(f"{where}.candidates[{i}]", c)
    hidden = st.get("hidden_rows", [])
    if not isinstance(hidden, list):
        raise TraceError(f"{where}.hidden_rows: must be a list of row numbers")
    for i, r in enumerate(hidden):
        _integer(f"{where}.hidden_rows[{i}]", r)
    alts = st.get("alternatives", [])
    if not isinstance(alts, list) or len(alts) > 64:
        raise TraceError(f"{where}.alternatives: must be a list of at most 64 entries")
    for i, a in enumerate(alts):
        _mapping(f"{where}.alternatives[{i}]", a, {"token_id", "text", "prob"}, {"text", "prob"})
        _integer(f"{where}.alternatives[{i}].token_id", a.get("token_id"), nullable=True)
        _text(f"{where}.alternatives[{i}].text", a["text"])
        _number(f"{where}.alternatives[{i}].prob", a["prob"], 0.0, 1.0)
    if not isinstance(st.get("dropped_eos", False), bool):
        raise TraceError(f"{where}.dropped_eos: must be true or false")


def _check_faithfulness(f: Any) -> None:
    if f is None:
        return
    keys = {"max_paths", "steps", "mean_kl", "top_agreement", "mean_set_jaccard", "min_coverage", "clean_ppl",
            "greedy_ppl"}
    threads = {"mean_w", "mean_top_share", "threaded_steps"}  # single-threadedness: absent in older traces
    _mapping("faithfulness", f, keys | threads, keys)
    for k in keys - {"steps", "clean_ppl", "greedy_ppl"}:
        _number(f"faithfulness.{k}", f[k])
    for k in ("clean_ppl", "greedy_ppl"):
        _number(f"faithfulness.{k}", f[k], nullable=True)
    for k in ("mean_w", "mean_top_share"):
        _number(f"faithfulness.{k}", f.get(k), 0.0, 1.0, nullable=True)
    _integer("faithfulness.threaded_steps", f.get("threaded_steps", 0))
    if not isinstance(f["steps"], list):
        raise TraceError("faithfulness.steps: must be a list")
    step_keys = {"step", "kl", "top_agree", "set_jaccard", "paths", "coverage", "branching"}
    for i, x in enumerate(f["steps"]):
        _mapping(f"faithfulness.steps[{i}]", x, step_keys | {"w", "top_share"}, step_keys)
        for k in step_keys - {"top_agree"}:
            _number(f"faithfulness.steps[{i}].{k}", x[k])
        for k in ("w", "top_share"):
            _number(f"faithfulness.steps[{i}].{k}", x.get(k), 0.0, 1.0, nullable=True)
        if not isinstance(x["top_agree"], bool):
            raise TraceError(f"faithfulness.steps[{i}].top_agree: must be true or false")


def check_trace_data(data: Any, max_steps: int, max_candidates: int) -> None:
    """Validate a trace from outside (types, ranges, NaN, sizes); TraceError names the first bad field."""
    _mapping("trace", data, set(Trace.__dataclass_fields__), {"model", "mode", "settings", "prompt", "steps"})
    if data.get("schema_version") != SCHEMA_VERSION:
        raise TraceError(f"schema_version: this build reads {SCHEMA_VERSION}, got {_brief(data.get('schema_version'))}")
    for k in ("model", "prompt", "prompt_text", "text", "clean_text", "stop_reason"):
        _text(k, data.get(k, ""))
    if data["mode"] not in MODES:
        raise TraceError(f"mode: must be one of {', '.join(MODES)}, got {_brief(data['mode'])}")
    if not isinstance(data["settings"], dict):
        raise TraceError(f"settings: must be an object of settings, got {_brief(data['settings'])}")
    ids = data.get("prompt_token_ids", [])
    if not isinstance(ids, list) or len(ids) > MAX_TEXT:
        raise TraceError("prompt_token_ids: must be a list of token ids")
    for i, t in enumerate(ids):
        _integer(f"prompt_token_ids[{i}]", t)
    for k in ("timings", "stats"):
        d = _object(k, data.get(k, {}))
        for name, v in d.items():
            if not isinstance(v, (str, bool)):
                _number(f"{k}.{echo_name(name)}", v, nullable=True)
            elif isinstance(v, str):
                _text(f"{k}.{echo_name(name)}", v)
    steps = data["steps"]
    if not isinstance(steps, list):
        raise TraceError(f"steps: must be a list, got {_brief(steps)}")
    if len(steps) > max_steps:
        raise TraceError(f"steps: this server shows at most {max_steps} steps, the trace has {len(steps)}")
    for i, st in enumerate(steps):
        _check_step(f"steps[{i}]", st, max_candidates)
        if st["step"] != i:
            raise TraceError(f"steps[{i}].step: must be {i} (steps in order), got {st['step']}")
    _check_faithfulness(data.get("faithfulness"))
    _check_commitment(data.get("commitment"), len(steps))


MAX_LAYERS = 1024


def _check_commitment(c: Any, n_steps: int) -> None:
    if c is None:
        return
    _mapping("commitment", c, {"layers", "top_k", "steps"}, {"layers", "top_k", "steps"})
    _integer("commitment.layers", c["layers"])
    layers, top_k = c["layers"], c["top_k"]
    if not 1 <= layers <= MAX_LAYERS:
        raise TraceError(f"commitment.layers: must be in [1, {MAX_LAYERS}], got {layers}")
    _integer("commitment.top_k", top_k)
    if not 1 <= top_k <= 10:
        raise TraceError(f"commitment.top_k: must be in [1, 10], got {top_k}")
    if not isinstance(c["steps"], list) or len(c["steps"]) > n_steps:
        raise TraceError(f"commitment.steps: must be a list of at most {n_steps} steps (one per step)")
    keys = {"step", "token", "p_final", "lens", "js", "commit_layer", "part_layer"}
    for i, x in enumerate(c["steps"]):
        where = f"commitment.steps[{i}]"
        _mapping(where, x, keys, keys)
        if x["step"] != i:
            raise TraceError(f"{where}.step: must be {i} (steps in order), got {_brief(x['step'])}")
        _text(f"{where}.token", x["token"])
        for k in ("commit_layer", "part_layer"):
            _integer(f"{where}.{k}", x[k], lo=1, nullable=k == "part_layer")
            if x[k] is not None and x[k] > layers:
                raise TraceError(f"{where}.{k}: must be in [1, {layers}], got {x[k]}")
        for k in ("p_final", "js"):
            if x[k] is None and k == "js":
                continue
            if not isinstance(x[k], list) or len(x[k]) != layers:
                raise TraceError(f"{where}.{k}: must be a list of {layers} numbers (one per layer)")
            for j, v in enumerate(x[k]):
                _number(f"{where}.{k}[{j}]", v, 0.0, 1.0 if k == "p_final" else 100.0)
        if not isinstance(x["lens"], list) or len(x["lens"]) != layers:
            raise TraceError(f"{where}.lens: must be a list of {layers} entries (one per layer)")
        for j, top in enumerate(x["lens"]):
            if not isinstance(top, list) or len(top) > top_k:
                raise TraceError(f"{where}.lens[{j}]: must be a list of at most {top_k} [token, probability] pairs")
            for n, pair in enumerate(top):
                if not isinstance(pair, list) or len(pair) != 2:
                    raise TraceError(f"{where}.lens[{j}][{n}]: must be a [token, probability] pair")
                _text(f"{where}.lens[{j}][{n}][0]", pair[0])
                _number(f"{where}.lens[{j}][{n}][1]", pair[1], 0.0, 1.0)


def step_text(s: Step, show_ids: bool = False) -> str:
    """One step's part of the text: its token, or `[a/b]` for a set of several; pruned ones as `~~x~~`."""
    label = (lambda c: f"{c.text}<{c.token_id}>") if show_ids else (lambda c: c.text)
    parts = [label(c) if c.alive else f"~~{label(c)}~~" for c in s.candidates]
    return parts[0] if len(parts) == 1 else "[" + "/".join(parts) + "]" if parts else ""


def bracket_text(steps: list[Step], show_ids: bool = False) -> str:
    """`[a/b]` for sets of several candidates; pruned alternatives as `~~x~~`."""
    return "".join(step_text(s, show_ids) for s in steps)


def clean_token_id(s: Step) -> int | None:
    """The step's most probable surviving candidate (None when its whole set was removed)."""
    alive = s.alive
    return max(alive, key=lambda c: c.prob).token_id if alive else None


def clean_token_ids(steps: list[Step]) -> list[int]:
    """The most probable surviving candidate of each step (steps whose whole set was removed are skipped)."""
    return [i for i in map(clean_token_id, steps) if i is not None]


class RunningText:
    """`bracket_text` and `clean_token_ids` of a run that grows a step at a time: a step is rendered when it is
    made and again only when one of its candidates is pruned. Keeping a streamed trace's text current this way
    cost 0.04 ms at step 96 of sets of 8 on this CPU; rebuilding it from every step cost 0.37 ms, and grows
    with the run (on a GPU a whole step is ~5 ms)."""

    def __init__(self, show_ids: bool = False):
        self.show_ids = show_ids
        self.parts: list[str] = []
        self.clean: list[int | None] = []

    def update(self, steps: list[Step], pruned: list[Candidate]) -> None:
        """Render the steps made since the last call and re-render those that hold a `pruned` candidate."""
        for s in steps[len(self.parts):]:
            self.parts.append(step_text(s, self.show_ids))
            self.clean.append(clean_token_id(s))
        left = {id(c) for c in pruned}
        for i in range(len(steps) - 1, -1, -1):  # pruning reaches back a few steps: search from the end
            if not left:
                break
            hit = left & {id(c) for c in steps[i].candidates}
            if hit:
                self.parts[i], self.clean[i] = step_text(steps[i], self.show_ids), clean_token_id(steps[i])
                left -= hit

    def finalise(self, trace: Trace, decode: Callable[[list[int]], str]) -> None:
        """Fill `text` and `clean_text` as `finalise_text` would."""
        trace.text = "".join(self.parts)
        trace.clean_text = decode([i for i in self.clean if i is not None])


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


def finalise_text(trace: Trace, decode: Callable[[list[int]], str], show_ids: bool = False) -> None:
    """Fill `text` and `clean_text`; clean text is decoded as one sequence so spaces survive."""
    trace.text = bracket_text(trace.steps, show_ids=show_ids)
    trace.clean_text = decode(clean_token_ids(trace.steps))


def text_decoder(trace: Trace) -> Callable[[list[int]], str]:
    """Decode ids from the trace's own token texts (replay needs no tokenizer)."""
    texts = {c.token_id: c.text for st in trace.steps for c in st.candidates}
    return lambda ids: "".join(texts.get(i, "") for i in ids)


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
