"""What the page's form means: its values by setting name -> validated settings and back, where a fresh page
starts, and the example rows. No Gradio here: the form itself is laid out in tabs/controls.py."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from tempo_core.config import FIELDS, MODE_FLAGS, TempoSettings, build_settings
from tempo_core.serving.limits import Limits

APP_ATTENTION_THRESHOLD = 0.02  # the embedded model's examples prune 2-6 candidates each at 0.02, none at 0.01
# where the page's form starts when it differs from the engine's defaults (a share link states what differs from
# this, so opening it on a fresh page gives back every setting)
PAGE_START = {"prompt": "What is the capital of France?", "max_tokens": 40, "use_retroactive_pruning": True,
              "attention_threshold": APP_ATTENTION_THRESHOLD}
MODES = {"TEMPO": "tempo", "Soft Thinking": "soft",
         "Greedy / sampling (transformers generate)": "default", "MCTS": "mcts"}

EXAMPLES = [
    ["What is the capital of France?", 0.1, 40, "TEMPO"],
    ["Write a haiku about servers.", 0.05, 40, "TEMPO"],
    ["Explain the theory of relativity simply.", 0.15, 60, "TEMPO"],
    ["Once upon a time, a small robot", 0.1, 30, "MCTS"],
    ["List three uses of a paperclip.", 0.1, 40, "Greedy / sampling (transformers generate)"],
]

# One preset per research view: (label, values for RESEARCH_FIELDS)
RESEARCH_FIELDS = ["prompt", "selection_threshold", "max_tokens", "mode", "use_retroactive_pruning",
                   "attention_threshold", "dynamic_threshold", "faithfulness"]
RESEARCH_EXAMPLES = [
    ("Faithfulness meter: a short answer", ["What is the capital of France?", 0.1, 16, "TEMPO", False, 0.01, False, True]),
    ("Pruning rewind + positions & mask", ["Write a haiku about servers.", 0.05, 24, "TEMPO", True, 0.03, False, False]),
    ("Bezier schedule rising to 0.05", ["Explain the theory of relativity simply.", 0.1, 40, "TEMPO", True, 0.005,
                                        True, False]),
    ("Soft Thinking on the same prompt (then Compare it with the first)",
     ["What is the capital of France?", 0.1, 16, "Soft Thinking", False, 0.01, False, True]),
    ("Then: Baselines, Threshold sweep, Tree diff", ["List three uses of a paperclip.", 0.1, 24, "TEMPO", False, 0.01,
                                                     False, False]),
]


def examples(limits: Limits) -> list[list[Any]]:
    """The Examples rows (prompt, threshold, max tokens, mode) within this server's max_tokens."""
    return [[p, t, min(n, limits.max_tokens), m] for p, t, n, m in EXAMPLES]


def research_examples(limits: Limits) -> list[list[Any]]:
    """The research presets' values (RESEARCH_FIELDS) within this server's caps."""
    at = RESEARCH_FIELDS.index("max_tokens")
    return [[min(v, limits.max_tokens) if i == at else v for i, v in enumerate(values)]
            for _, values in RESEARCH_EXAMPLES]


EXAMPLE_FIELDS = ["prompt", "selection_threshold", "max_tokens", "mode"]


def example_settings(index: int, research: bool, limits: Limits) -> TempoSettings:
    """An Examples row (or, `research`, a research preset) as whole settings: what the row names, and the page's
    defaults for everything it does not (a row must not inherit the hidden settings of whatever came before it).
    IndexError for a row that is not there."""
    rows, fields = (research_examples(limits), RESEARCH_FIELDS) if research else (examples(limits), EXAMPLE_FIELDS)
    if not 0 <= index < len(rows):
        raise IndexError(index)
    return settings_from_form({**page_defaults(limits).to_dict(), **dict(zip(fields, rows[index]))}, limits)


def page_defaults(limits: Limits) -> TempoSettings:
    """The settings the form shows on a plain visit to a server with these limits."""
    return limits.fit(build_settings(PAGE_START))


def settings_from_form(form: dict[str, Any], limits: Limits) -> TempoSettings:
    """Form values by setting name -> validated settings (the same validation as CLI and API), within the
    server's caps (errors name the field and the range that applies here)."""
    raw = dict(form)
    raw["mode"] = MODES.get(raw.get("mode", "TEMPO"), raw.get("mode"))  # a label, or the setting's own value
    if raw.get("num_layers_to_use") in (0, None, ""):
        raw["num_layers_to_use"] = None
    for key in ("max_tokens", "min_steps", "pruning_window", "max_parallel_tokens", "mcts_simulations",
                "mcts_depth", "top_k", "seed", "num_layers_to_use", "faithfulness_paths"):
        if isinstance(raw.get(key), float) and raw[key].is_integer():
            raw[key] = int(raw[key])
    return build_settings(raw, caps=limits.caps)


def form_values(s: TempoSettings, names: list[str]) -> list[Any]:
    """Settings -> form values (to fill the form from a shared link or an uploaded trace)."""
    mode = {v: k for k, v in MODES.items()}[s.mode]
    out = []
    for n in names:
        if n == "mode":
            out.append(mode)
        elif n == "num_layers_to_use":
            out.append(s.num_layers_to_use or 0)
        else:
            out.append(getattr(s, n))
    return out


def share_query(s: TempoSettings, start: TempoSettings) -> str:
    """Query string of the settings that differ from `start`, the form of a fresh page (opening it there gives
    back every setting of `s`)."""
    defaults = start.to_dict()
    changed = {k: v for k, v in s.to_dict().items() if v != defaults[k]}
    return "?" + urlencode({k: json.dumps(v) if not isinstance(v, str) else v for k, v in changed.items()})


def settings_from_link(params: dict[str, str], form: dict[str, Any], limits: Limits
                       ) -> tuple[TempoSettings, set[str]] | None:
    """A shared link's settings on top of the form's own values, and the form fields the link changes; None for a
    plain visit. SettingsError names a bad field."""
    known = {k: v for k, v in params.items() if k in FIELDS or k in MODE_FLAGS}
    if not known:
        return None
    s = build_settings({k: _parse_param(v) for k, v in known.items()}, settings_from_form(form, limits),
                       caps=limits.caps)
    return s, set(known) | ({"mode"} if set(MODE_FLAGS) & set(known) else set())


def _parse_param(v: str) -> Any:
    try:
        return json.loads(v)
    except ValueError:
        return v
