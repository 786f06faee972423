"""A study you can rerun: is TEMPO's superposition real, over a bundled set of prompts, with the prompt as the unit.

    python cli.py study [--quick] [--prompts FILE] [--out DIR]   (study_command.py)

For every prompt, on the loaded model (fixed seeds throughout):
  a. attention received: one TEMPO run at the main threshold, replayed in one forward with every layer's attention
     kept; for each generated key row, the mean attention (over layers, heads and the later step's query rows that
     may see it: masked sibling pairs never count) it receives from the step d = 1..D after its own. Per prompt, the
     ratio parallel / ordinary rows at matched d (averaged over the d both have) is the upstream claim re-tested
     (it reported 0.36-0.61x). Control: the same prompt decoded greedily, the same steps called "parallel".
     Runs that fall into repetition are flagged and reported apart.
  b. faithfulness (KL and single-threadedness w, faithfulness.py) by selection threshold, TEMPO against Soft Thinking.
  c. coverage: the share of N temperature-1 samples whose first K tokens lie on the run's sets, per threshold.
  d. commitment (commitment.py): the mean commitment layer of predictions that became a set against those that
     became a single token.
Each figure is a mean over prompts with a percentile-bootstrap 95% interval (stats.py). The result is one JSON
(every prompt's numbers and the summary) and an HTML page of the figures; `--quick` is the small run CI makes.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from ..config import MAX_PROMPT_CHARS, SettingsError, build_settings
from ..model import LoadedModel
from ..stop import stop_reason
from ..text import clean_token_ids
from ..trace import Trace
from .after_run import run
from .faithfulness import PATHS_PER_FORWARD, measure as measure_faithfulness
from .stats import bootstrap_mean
from .study_measures import (attention_by_distance, commitment_by_prediction, matched_ratio, on_the_sets,
                             repetitive, samples)

BUNDLED_PROMPTS = Path(__file__).resolve().parents[2] / "assets" / "study" / "prompts.json"
BUNDLED_RESULTS = Path(__file__).resolve().parents[2] / "assets" / "study" / "results.json"
MAX_PROMPT_FILE_BYTES = 1_000_000
MAX_PROMPTS = 1000


@dataclass
class StudyConfig:
    """What a study runs; every field is checked by `check` with an error naming it and its range."""
    max_prompts: int = 100
    tokens: int = 8  # logical steps per run
    thresholds: list[float] = field(default_factory=lambda: [0.02, 0.05, 0.1, 0.2])
    main_threshold: float = 0.1  # the threshold of parts a and d
    paths: int = 6  # faithfulness: explicit paths per step
    samples: int = 32  # coverage: temperature-1 samples per prompt
    sample_tokens: int = 8  # coverage: the first tokens of each sample that must lie on the sets
    distance: int = 4  # attention: later steps d = 1..distance
    seed: int = 0
    resamples: int = 2000  # bootstrap draws

    RANGES = {"max_prompts": (1, MAX_PROMPTS), "tokens": (2, 64), "paths": (1, 64), "samples": (1, 256),
              "sample_tokens": (1, 64), "distance": (1, 32), "seed": (0, 2**31 - 1), "resamples": (100, 100_000)}

    def check(self) -> "StudyConfig":
        for name, (lo, hi) in self.RANGES.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise SettingsError(name, f"must be an integer in [{lo}, {hi}], got {value!r}")
        if not self.thresholds or len(self.thresholds) > 8:
            raise SettingsError("thresholds", f"must be 1 to 8 numbers in (0, 1], got {len(self.thresholds)}")
        for t in self.thresholds:
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not (0 < t <= 1):
                raise SettingsError("thresholds", f"each must be a number in (0, 1], got {t!r}")
        if self.main_threshold not in self.thresholds:
            raise SettingsError("main_threshold", f"must be one of the thresholds {self.thresholds}, "
                                                  f"got {self.main_threshold!r}")
        if self.sample_tokens > self.tokens:
            raise SettingsError("sample_tokens", f"must be at most tokens ({self.tokens}), got {self.sample_tokens}")
        return self

    def forward_passes(self, prompts: int) -> int:
        """An upper bound of the forward passes a study of `prompts` prompts makes (a server's budget checks it):
        per threshold and mode a run, its replay and its explicit paths; the main run's lens; the greedy control
        and its replay; the samples."""
        per_run = (self.tokens + 1) + 1 + self.tokens * -(-self.paths // PATHS_PER_FORWARD) + 1
        return prompts * (2 * len(self.thresholds) * per_run + 1 + (self.tokens + 2) + self.sample_tokens + 1)


QUICK = StudyConfig(max_prompts=5, tokens=6, thresholds=[0.05, 0.2], main_threshold=0.05, paths=4, samples=8,
                    sample_tokens=4, distance=3, resamples=500)


def load_prompts(path: str | Path | None = None, limit: int = MAX_PROMPTS) -> list[dict[str, str]]:
    """The study's prompts: {"prompts": [{"prompt": ..., "category": ...}, ...]} or a plain list of strings, at
    most `limit` taken (in order). SettingsError("prompts", ...) says what is wrong with a file."""
    p = Path(path) if path is not None else BUNDLED_PROMPTS
    if not p.is_file():
        raise SettingsError("prompts", f"file not found: {p}")
    if p.stat().st_size > MAX_PROMPT_FILE_BYTES:
        raise SettingsError("prompts", f"file must be at most {MAX_PROMPT_FILE_BYTES:,} bytes, got "
                                       f"{p.stat().st_size:,}")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise SettingsError("prompts", f"{p} is not JSON: {exc}") from None
    items = data.get("prompts") if isinstance(data, dict) else data
    if not isinstance(items, list) or not items:
        raise SettingsError("prompts", 'must hold a non-empty list: {"prompts": [{"prompt": "...", "category": '
                                       '"..."}]} or ["...", ...]')
    if len(items) > MAX_PROMPTS:
        raise SettingsError("prompts", f"at most {MAX_PROMPTS} prompts, got {len(items)}")
    out = []
    for i, item in enumerate(items):
        item = {"prompt": item} if isinstance(item, str) else item
        text = item.get("prompt") if isinstance(item, dict) else None
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_PROMPT_CHARS:
            raise SettingsError(f"prompts[{i}].prompt", f"must be a non-empty string of at most {MAX_PROMPT_CHARS} "
                                                        "characters")
        category = item.get("category", "")
        if not isinstance(category, str) or len(category) > 40:
            raise SettingsError(f"prompts[{i}].category", "must be a string of at most 40 characters")
        out.append({"prompt": text, "category": category})
    return out[:limit]


# --- one prompt ---------------------------------------------------------------------------------------------------
def study_prompt(lm: LoadedModel, item: dict[str, str], index: int, cfg: StudyConfig,
                 stop: threading.Event | None = None) -> dict[str, Any]:
    """Every number the study takes from one prompt (plain JSON). `stop` ends its runs early (the caller then
    discards the record)."""
    base = {"prompt": item["prompt"], "max_tokens": cfg.tokens, "seed": cfg.seed + index, "max_parallel_tokens": 8}
    s = lambda **kw: build_settings({**base, **kw})  # noqa: E731
    record: dict[str, Any] = {"prompt": item["prompt"], "category": item["category"], "by_threshold": {}}
    main: Trace | None = None
    draws = None
    for thr in cfg.thresholds:
        per: dict[str, Any] = {}
        for mode in ("tempo", "soft"):
            trace = run(lm, s(mode=mode, selection_threshold=thr, commitment=mode == "tempo" and thr == cfg.main_threshold),
                        stop)
            if stop is not None and stop.is_set():
                return record  # cut short: the caller discards it
            f = measure_faithfulness(lm, trace, cfg.paths, perplexity=False, stop=stop)
            if f is None:
                return record  # stopped within the meter: cut short as above
            if draws is None:
                draws = samples(lm, trace.prompt_token_ids, cfg.samples, cfg.sample_tokens, cfg.seed + index)
                if stop is not None and stop.is_set():
                    return record
            per[mode] = {"mean_kl": f["mean_kl"], "mean_w": f["mean_w"], "mean_top_share": f["mean_top_share"],
                         "threaded_steps": f["threaded_steps"], "mean_set_size": trace.stats["mean_set_size"],
                         "coverage": sum(on_the_sets(x, trace, lm.eos_ids) for x in draws) / len(draws),
                         "steps": len(trace.steps)}
            if mode == "tempo" and thr == cfg.main_threshold:
                main = trace
        record["by_threshold"][str(thr)] = per
    assert main is not None
    parallel = {st.step for st in main.steps if len(st.candidates) > 1}
    greedy = run(lm, s(selection_threshold=1.0, max_parallel_tokens=1), stop)
    if stop is not None and stop.is_set():
        return record
    tempo_d = attention_by_distance(lm, main, parallel, cfg.distance)
    greedy_d = attention_by_distance(lm, greedy, parallel, cfg.distance)
    record["attention"] = {"ratio": matched_ratio(tempo_d), "set_ratio": matched_ratio(tempo_d, "set"),
                           "control_ratio": matched_ratio(greedy_d), "parallel_steps": len(parallel),
                           "by_distance": {k: {str(d): v for d, v in per.items()} for k, per in tempo_d.items()}}
    record["repetitive"] = repetitive(clean_token_ids(main.steps))
    record["commitment"] = {**commitment_by_prediction(main), "layers": main.commitment["layers"]}
    record["text"] = main.text
    return record


# --- the summary --------------------------------------------------------------------------------------------------
def summarise(records: list[dict[str, Any]], cfg: StudyConfig) -> dict[str, Any]:
    """Means over prompts with bootstrap 95% intervals: every figure of the study, and the table rows."""
    est = lambda values: bootstrap_mean(list(values), cfg.resamples, seed=cfg.seed).to_dict()  # noqa: E731
    att = lambda rs, key: [r["attention"][key] for r in rs]  # noqa: E731
    plain = [r for r in records if not r["repetitive"]]
    looped = [r for r in records if r["repetitive"]]
    paired = lambda rs: [a - b for a, b in zip(att(rs, "ratio"), att(rs, "control_ratio"))  # noqa: E731
                         if a is not None and b is not None]
    out: dict[str, Any] = {"prompts": len(records), "repetitive_prompts": len(looped), "attention": {}}
    for name, rs in (("all", records), ("not repetitive", plain), ("repetitive", looped)):
        out["attention"][name] = {"ratio": est(att(rs, "ratio")), "set_ratio": est(att(rs, "set_ratio")),
                                  "control_ratio": est(att(rs, "control_ratio")), "ratio_minus_control": est(paired(rs))}
    out["by_threshold"] = {}
    for thr in cfg.thresholds:
        per = {}
        for mode in ("tempo", "soft"):
            rows = [r["by_threshold"][str(thr)][mode] for r in records]
            per[mode] = {k: est(x[k] for x in rows) for k in ("mean_kl", "mean_w", "mean_top_share", "coverage",
                                                              "mean_set_size")}
            per[mode]["w_minus_share"] = est(x["mean_w"] - x["mean_top_share"] for x in rows
                                             if x["mean_w"] is not None)
        per["kl_soft_minus_tempo"] = est(r["by_threshold"][str(thr)]["soft"]["mean_kl"]
                                         - r["by_threshold"][str(thr)]["tempo"]["mean_kl"] for r in records)
        out["by_threshold"][str(thr)] = per
    c = [r["commitment"] for r in records]
    out["commitment"] = {"set": est(x["set"] for x in c), "single": est(x["single"] for x in c),
                         "set_minus_single": est(x["set"] - x["single"] for x in c
                                                 if x["set"] is not None and x["single"] is not None),
                         "layers": c[0]["layers"] if c else None}
    return out


# --- running it ---------------------------------------------------------------------------------------------------
def study_iter(lm: LoadedModel, cfg: StudyConfig, prompts: list[dict[str, str]],
               stop: threading.Event | None = None) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """(prompts done, None) after each prompt, then (n, the result) at the end. `stop` (Stop, a time limit) ends it
    early: the result then covers the prompts finished before it, and says so in `stopped`."""
    cfg.check()
    t0 = time.perf_counter()
    records = []
    stopped = None
    for i, item in enumerate(prompts[:cfg.max_prompts]):
        record = study_prompt(lm, item, i, cfg, stop)
        if stop is not None and stop.is_set():  # a prompt cut short is not a measurement
            stopped = stop_reason(stop)
            break
        records.append(record)
        yield len(records), None
    result = {"model": lm.name, "config": asdict(cfg), "runtime_s": time.perf_counter() - t0,
              "torch_threads": torch.get_num_threads(), "stopped": stopped, "records": records}
    result["summary"] = summarise(records, cfg)
    yield len(records), result
