"""One validated settings object for every way TEMPO is driven (CLI, env, file, API, UI, code).

Precedence: explicit values (CLI / API body / code) > `TEMPO_*` environment > `--config` file > defaults.
Every field declares its allowed range once, here; every error names the field and that range.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Mapping

MAX_TOKENS_LIMIT = 2048
MAX_PARALLEL_LIMIT = 64
MAX_PROMPT_CHARS = 20_000
PRUNING_MODES = ("keep_token", "keep_unattended", "remove_position")
CURVE_FORMS = ("start_to_final", "seed_scaled")
MODES = ("tempo", "default", "mcts", "soft")
# the seeds' switches for the mode: true selects that mode, false goes back to TEMPO if it was that mode
MODE_FLAGS = {"default_mode": "default", "use_mcts": "mcts"}


class SettingsError(ValueError):
    """A setting is missing, of the wrong type or out of range. `field` names it."""

    def __init__(self, field_name: str, message: str):
        self.field = field_name
        super().__init__(f"{field_name}: {message}")


def _f(default: Any, help: str, lo: float | None = None, hi: float | None = None, *,
       lo_open: bool = False, choices: tuple[str, ...] | None = None, nullable: bool = False):
    meta = {"help": help, "lo": lo, "hi": hi, "lo_open": lo_open, "choices": choices, "nullable": nullable}
    return field(default=default, metadata=meta)


@dataclass
class TempoSettings:
    # --- what to generate
    mode: str = _f("tempo", "tempo: keep every token above the threshold at one position; default: plain transformers "
                            "generate (greedy, or sampling with do_sample); mcts: Monte Carlo tree search over "
                            "threshold-selected candidates (aliases: --default-mode, --use-mcts); soft: Soft "
                            "Thinking, each threshold set fed as ONE input row, the probability-weighted mixture of its "
                            "tokens' embeddings (no masks, nothing to prune)", choices=MODES)
    prompt: str = _f("", "Text prompt (non-empty)")
    max_tokens: int = _f(100, "Maximum logical steps", 1, MAX_TOKENS_LIMIT)
    min_steps: int = _f(0, "Steps before an EOS may end the run", 0, MAX_TOKENS_LIMIT)
    selection_threshold: float = _f(0.1, "Keep every token with probability >= this", 0.0, 1.0)
    max_parallel_tokens: int = _f(8, "Cap on candidates per logical step", 1, MAX_PARALLEL_LIMIT)
    # from 0.01: logits / 1e-300 overflow to inf and every probability becomes NaN
    temperature: float = _f(1.0, "Softmax temperature for selection", 0.01, 10.0)
    seed: int = _f(42, "Random seed (sampling, sigmoid pruning, MCTS ties)", 0, 2**32 - 1)
    raw_prompt: bool = _f(False, "Feed the prompt exactly as given (no chat template)")
    enable_thinking: bool = _f(False, "System prompt 'Enable deep thinking subroutine.' via the chat template")
    allow_intraset_token_visibility: bool = _f(False, "Let siblings of one set see each other")
    use_custom_rope: bool = _f(True, "Siblings of a set share one position id (off: consecutive positions, the "
                                     "research baseline of what happens without the position trick)")
    disable_kv_cache: bool = _f(False, "Recompute the whole sequence every step (same positions and mask)")
    # --- retroactive pruning
    use_retroactive_pruning: bool = _f(False, "Prune candidates that later tokens barely attend to")
    attention_threshold: float = _f(0.01, "Prune below this mean attention", 0.0, 1.0)
    pruning_window: int = _f(3, "Later steps whose attention scores a set", 1, 64)
    use_relative_attention: bool = _f(False, "Also require score < relative_threshold x the set's best")
    relative_threshold: float = _f(0.5, "Relative cut-off (fraction of the set's best score)", 0.0, 1.0)
    use_multi_scale_attention: bool = _f(False, "Weight the scored layers linspace(multi_scale_min_weight, 1), "
                                                "normalised, instead of a plain mean")
    multi_scale_min_weight: float = _f(0.5, "Multi-scale weight of the first scored layer (the seeds' 0.5)", 0.0, 1.0)
    num_layers_to_use: int | None = _f(None, "Score with the last N layers (None = all)", 1, 1024, nullable=True)
    use_sigmoid_threshold: bool = _f(False, "Seeded probabilistic pruning: P(prune) = sigmoid(k (thr-score)/thr)")
    sigmoid_steepness: float = _f(10.0, "Steepness k of the sigmoid decision", 0.0, 1000.0, lo_open=True)
    complete_pruning_mode: str = _f("keep_token", "What happens when a whole set fails", choices=PRUNING_MODES)
    preserve_isolated_tokens: bool = _f(True, "Never score single-candidate steps")
    # --- dynamic pruning threshold
    dynamic_threshold: bool = _f(False, "Pruning threshold follows a curve over the run")
    final_threshold: float = _f(0.05, "Pruning threshold at the last step (start_to_final form). Not the seeds' "
                                      "1.0: that prunes nearly every candidate near the end", 0.0, 1.0)
    dynamic_threshold_form: str = _f("start_to_final", "start_to_final: from attention_threshold to "
                                     "final_threshold along the curve; seed_scaled: the seeds' attention_threshold x "
                                     "curve(step / max_tokens), starting at 0", choices=CURVE_FORMS)
    bezier_p1: float = _f(0.2, "First Bezier control value", 0.0, 1.0)
    bezier_p2: float = _f(0.8, "Second Bezier control value", 0.0, 1.0)
    use_relu: bool = _f(False, "ReLU curve instead of Bezier")
    relu_activation_point: float = _f(0.5, "Fraction of the run where the ReLU ramp starts", 0.0, 0.99)
    # --- other modes
    do_sample: bool = _f(False, "Default mode: sample instead of greedy")
    top_p: float = _f(1.0, "Default mode: nucleus sampling", 0.0, 1.0, lo_open=True)
    top_k: int = _f(0, "Default mode: top-k sampling (0 = off)", 0, 100_000)
    mcts_simulations: int = _f(10, "MCTS simulations per step", 1, 1000)
    mcts_c_puct: float = _f(1.0, "MCTS exploration constant", 0.0, 100.0, lo_open=True)
    mcts_depth: int = _f(5, "MCTS maximum search depth", 1, 64)
    # --- output and analysis
    show_token_ids: bool = _f(False, "Show token ids in the bracketed text")
    faithfulness: bool = _f(False, "After a TEMPO or soft run, compare it with its explicit branch paths")
    faithfulness_paths: int = _f(8, "Explicit paths per step for the faithfulness meter (most probable)", 1, 256)
    commitment: bool = _f(False, "After a TEMPO or soft run, read every step through the logit lens at every layer "
                                 "(commitment strip: where each prediction settles, where siblings part)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def replace(self, **changes: Any) -> "TempoSettings":
        return build_settings(changes, base=self)


FIELDS = {f.name: f for f in fields(TempoSettings)}
ALIASES = {"threshold": "selection_threshold", "use_retroactive_removal": "use_retroactive_pruning",
           "complete_removal_mode": "complete_pruning_mode"}


def upper_bound(name: str, caps: Mapping[str, float] | None = None) -> float | None:
    """The largest allowed value of a numeric setting: the field's own, or a lower cap (a server's limit)."""
    hi = FIELDS[name].metadata["hi"]
    if caps and name in caps and hi is not None:
        return min(hi, caps[name])
    return hi


def _num(x: float, integer: bool) -> str:
    return str(int(x)) if integer else f"{x:g}"


def describe_range(name: str, caps: Mapping[str, float] | None = None) -> str:
    m = FIELDS[name].metadata
    if m["choices"]:
        return "one of " + ", ".join(m["choices"])
    typ = str(FIELDS[name].type)
    if "bool" in typ:
        return "true or false"
    if typ == "str":
        return "a string"
    integer = "int" in typ
    kind = "an integer" if integer else "a number"
    lo, hi = m["lo"], upper_bound(name, caps)
    if lo is None:
        return kind
    left = "(" if m["lo_open"] else "["
    extra = " or null" if m["nullable"] else ""
    limit = f" {getattr(caps, 'where', 'on this server')}" if caps and name in caps and hi < m["hi"] else ""
    return f"{kind} in {left}{_num(lo, integer)}, {_num(hi, integer)}]{extra}{limit}"


def _check_text(name: str, value: str) -> str:
    """Strings must be encodable (a lone surrogate such as '\\ud800' from JSON would crash the tokenizer)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise SettingsError(name, f"must be valid Unicode text; character {exc.start} is a lone surrogate "
                                  f"({value[exc.start]!a})") from None
    return value


def _coerce(name: str, value: Any, caps: Mapping[str, float] | None = None) -> Any:
    f = FIELDS[name]
    m = f.metadata
    typ = str(f.type)
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null") and m["nullable"]):
        if m["nullable"]:
            return None
        raise SettingsError(name, f"must be {describe_range(name, caps)}, got null")
    if typ == "bool":
        return _as_bool(name, value)
    if typ == "str":
        if not isinstance(value, str):
            raise SettingsError(name, f"must be {describe_range(name)}, got {type(value).__name__}")
        if m["choices"] and value not in m["choices"]:
            raise SettingsError(name, f"must be {describe_range(name)}, got {value!r}")
        return _check_text(name, value)
    # numbers
    allowed = describe_range(name, caps)
    if isinstance(value, bool):
        raise SettingsError(name, f"must be {allowed}, got {value!r}")
    try:
        num = float(value) if "float" in typ else _to_int(value)
    except (TypeError, ValueError, OverflowError):
        raise SettingsError(name, f"must be {allowed}, got {echo_value(value)}") from None
    if isinstance(num, float) and not math.isfinite(num):
        raise SettingsError(name, f"must be {allowed}, got {value!r}")
    lo, hi = m["lo"], upper_bound(name, caps)
    if lo is not None and (num < lo or num > hi or (m["lo_open"] and num == lo)):
        raise SettingsError(name, f"must be {allowed}, got {echo_value(value)}")
    return num


def echo_name(key: Any) -> str:
    """A client-supplied name, made safe to echo back in a message (ASCII, at most 40 characters)."""
    return _clip(ascii(str(key))[1:-1])


def echo_value(value: Any) -> str:
    """A client-supplied value as a message shows it (its ASCII repr, at most 40 characters)."""
    if isinstance(value, int) and value.bit_length() > 128:  # str() of a 5000-digit integer raises
        return f"an integer of about {int(value.bit_length() * 0.30103) + 1:,} digits"
    return _clip(ascii(value))


def _clip(text: str) -> str:
    return text if len(text) <= 40 else text[:37] + "..."


def _to_int(value: Any) -> int:
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError
        return int(value)
    if isinstance(value, str):
        return int(value.strip())
    if isinstance(value, int):
        return value
    raise TypeError


def build_settings(values: Mapping[str, Any], base: TempoSettings | None = None,
                   caps: Mapping[str, float] | None = None) -> TempoSettings:
    """Validate `values` (snake_case names or known aliases) on top of `base` (or defaults).

    `caps` lowers the upper bound of numeric settings (a shared server's limits); errors then name that bound."""
    current = asdict(base) if base is not None else {
        f.name: f.default for f in fields(TempoSettings) if f.default is not MISSING}
    named = {ALIASES.get(key, key): value for key, value in values.items()}
    switched_on = [key for key in MODE_FLAGS if key in named and _as_bool(key, named[key])]
    if len(switched_on) > 1:
        raise SettingsError("use_mcts", "cannot be combined with default_mode; choose one mode")
    if switched_on and "mode" in named:  # two answers to one question: refuse rather than pick one silently
        mode, flag = _coerce("mode", named["mode"], caps), switched_on[0]
        if mode != MODE_FLAGS[flag]:
            raise SettingsError(flag, f"is true, which asks for mode {MODE_FLAGS[flag]!r}, but mode is {mode!r}; "
                                      f"give one of them")
    for key, value in values.items():
        name = ALIASES.get(key, key)
        if name in MODE_FLAGS:  # the seeds' booleans for the one `mode` setting
            if _as_bool(name, value):
                current["mode"] = MODE_FLAGS[name]
            elif current["mode"] == MODE_FLAGS[name] and "mode" not in values:
                current["mode"] = "tempo"
            continue
        if name not in FIELDS:
            raise SettingsError(echo_name(key), "unknown setting")
        current[name] = _coerce(name, value, caps)
    settings = TempoSettings(**current)
    _check_consistency(settings)
    return settings


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        return value.strip().lower() in ("1", "true", "yes", "on")
    raise SettingsError(name, f"must be true or false, got {echo_value(value)}")


def _check_consistency(s: TempoSettings) -> None:
    if s.min_steps > s.max_tokens:
        raise SettingsError("min_steps", f"must be in [0, max_tokens={s.max_tokens}], got {s.min_steps}")


def validate_prompt(s: TempoSettings) -> None:
    if not s.prompt or not s.prompt.strip():
        raise SettingsError("prompt", "must be a non-empty string")
    if len(s.prompt) > MAX_PROMPT_CHARS:
        raise SettingsError("prompt", f"must be at most {MAX_PROMPT_CHARS} characters, got {len(s.prompt)}")
