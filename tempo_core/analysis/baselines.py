"""Baselines side by side: greedy, beam search and TEMPO on the same prompt and settings, with their cost."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from ..baseline import beam_search
from ..config import TempoSettings
from ..model import LoadedModel
from .after_run import run


def kv_bytes_per_row(lm: LoadedModel) -> int:
    cfg = lm.model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    return cfg.num_hidden_layers * 2 * kv_heads * head_dim * lm.dtype.itemsize


def baselines(lm: LoadedModel, s: TempoSettings, num_beams: int | None = None, stop: threading.Event | None = None,
              progress: Callable[[int, int, str], None] | None = None) -> dict[str, Any]:
    """Run all three; `num_beams` defaults to TEMPO's mean set size (rounded, at least 2). `stop` ends the
    runs early, beam search included; `progress(done, 3, what)` before each."""
    report = progress or (lambda done, total, what: None)
    report(0, 3, "TEMPO")
    tempo_s = s.replace(mode="tempo")
    tempo = run(lm, tempo_s, stop)
    report(1, 3, "greedy")
    greedy = run(lm, s.replace(mode="default", do_sample=False, faithfulness=False), stop)
    report(2, 3, "beam search")
    p = len(tempo.prompt_token_ids)
    beams = num_beams or max(2, round(tempo.stats.get("mean_set_size", 2)))
    t0 = time.perf_counter()
    beam = beam_search(lm, tempo.prompt_token_ids, beams, s.max_tokens, fixed_length=False, stop=stop)
    beam_s = time.perf_counter() - t0
    per_row = kv_bytes_per_row(lm)
    n_b = beam["steps"]
    eos = lm.eos_ids | {lm.tokenizer.pad_token_id}
    seqs = [_until_eos(seq, eos) for seq in beam["sequences"]]
    cost = {
        "greedy": {"forward_passes": greedy.stats["forward_passes"], "tokens_processed": greedy.stats["tokens_processed"],
                   "peak_kv_rows": greedy.stats["tokens_processed"], "wall_s": greedy.timings["total_ms"] / 1e3},
        "beam": {"forward_passes": n_b, "tokens_processed": beams * (p + max(0, n_b - 1)),
                 "peak_kv_rows": beams * (p + max(0, n_b - 1)), "wall_s": beam_s, "num_beams": beams},
        "tempo": {"forward_passes": tempo.stats["forward_passes"], "tokens_processed": tempo.stats["tokens_processed"],
                  "peak_kv_rows": p + tempo.stats["physical_tokens"], "wall_s": tempo.timings["total_ms"] / 1e3},
    }
    for c in cost.values():
        c["peak_kv_mb"] = c["peak_kv_rows"] * per_row / 2**20
    return {"greedy": greedy, "tempo": tempo, "cost": cost,
            "beam": {"sequences": seqs, "scores": beam["scores"], "num_beams": beams, "stopped": beam["stopped"],
                     "texts": [lm.decode(seq) for seq in seqs], "best_ids": seqs[0] if seqs else [],
                     "token_texts": {t: lm.decode([t]) for seq in seqs for t in seq}}}


def _until_eos(seq: list[int], eos: set[int]) -> list[int]:
    """A returned beam without its end-of-sequence token and the padding after it."""
    for i, t in enumerate(seq):
        if t in eos:
            return seq[:i]
    return seq
