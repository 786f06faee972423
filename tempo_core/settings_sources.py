"""Where settings come from, lowest first: the defaults, a JSON or YAML file (`--config`), `TEMPO_*` environment
variables, then what is given explicitly (CLI flags, a form, an API body). Every layer is checked as it is merged."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from .config import ALIASES, FIELDS, MODE_FLAGS, SettingsError, TempoSettings, build_settings


def env_values(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """`TEMPO_SELECTION_THRESHOLD=0.2` -> {'selection_threshold': '0.2'}. Unknown TEMPO_* names are ignored
    so that other TEMPO_ variables (TEMPO_MODEL, TEMPO_CACHE_DIR) can live beside them."""
    environ = os.environ if environ is None else environ
    out = {}
    for key, value in environ.items():
        if key.startswith("TEMPO_"):
            name = key[len("TEMPO_"):].lower()
            name = ALIASES.get(name, name)
            if name in FIELDS or name in MODE_FLAGS:
                out[name] = value
    return out


def file_values(path: str | os.PathLike) -> dict[str, Any]:
    """Read a JSON or YAML settings file (a flat mapping of snake_case names)."""
    p = Path(path)
    if not p.is_file():
        raise SettingsError("config", f"file not found: {p}")
    text = p.read_text()
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # noqa: BLE001 - report any parse error against the field
        raise SettingsError("config", f"cannot parse {p}: {exc}") from None
    if not isinstance(data, dict):
        raise SettingsError("config", f"{p} must hold a mapping of setting names to values")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def load_settings(explicit: Mapping[str, Any] | None = None, config_file: str | None = None,
                  environ: Mapping[str, str] | None = None) -> TempoSettings:
    """Merge defaults < file < env < explicit, validating every layer."""
    settings = TempoSettings()
    if config_file:
        settings = build_settings(file_values(config_file), settings)
    settings = build_settings(env_values(environ), settings)
    return build_settings(dict(explicit or {}), settings)
