"""Traces from outside (uploads): every field checked, so a bad file gives one clear message naming the field."""

from __future__ import annotations

import math
from typing import Any

from .config import MODES, echo_name, echo_value
from .trace import Candidate, SCHEMA_VERSION, Step, Trace

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
