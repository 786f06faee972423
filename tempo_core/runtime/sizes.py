"""Sizes of the runtime: the bytes of a KV cache, and counts read from the environment."""

from __future__ import annotations

import logging
import os


def kv_heads_and_dim(config: object) -> tuple[int, int]:
    """A model's KV heads and head size: the shape of one cached row of one layer's keys (or values)."""
    heads = getattr(config, "num_attention_heads")
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return kv_heads, getattr(config, "head_dim", None) or config.hidden_size // heads


def kv_cache_bytes(config: object, rows: int, dtype_bytes: int) -> int:
    """Bytes of a KV cache holding `rows` rows: keys and values of every layer, one row per KV head of
    head_dim numbers (what a run's DynamicCache holds once it has fed that many rows)."""
    kv_heads, head_dim = kv_heads_and_dim(config)
    return 2 * config.num_hidden_layers * kv_heads * head_dim * rows * dtype_bytes


def env_count(name: str, default: int, minimum: int, log: logging.Logger) -> int:
    """A whole-number setting of the engine from the environment, at least `minimum`; a bad value is logged and
    `default` used (the engine runs under the CLI too, where the server's strict `env_int` does not apply)."""
    raw = os.environ.get(name, "").strip()
    if raw.isdigit() and int(raw) >= minimum:
        return int(raw)
    if raw:
        log.warning("%s must be a whole number >= %d, got %r: using %d", name, minimum, raw, default)
    return default
