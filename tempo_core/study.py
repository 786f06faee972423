"""A study you can rerun: is TEMPO's superposition real, over a bundled set of prompts, with the prompt as the unit.

    python -m tempo_core.study [--quick] [--prompts FILE] [--out DIR]

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

import argparse
import json
import sys
import threading
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from .attention import record_attention
from .config import MAX_PROMPT_CHARS, SettingsError, build_settings
from .faithfulness import measure as measure_faithfulness
from .limits import stop_reason
from .model import LoadedModel
from .modes import run
from .replay import replay_inputs
from .stats import bootstrap_mean
from .trace import Trace, clean_token_ids

BUNDLED_PROMPTS = Path(__file__).resolve().parents[1] / "assets" / "study" / "prompts.json"
BUNDLED_RESULTS = Path(__file__).resolve().parents[1] / "assets" / "study" / "results.json"
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
        per_run = (self.tokens + 1) + 1 + self.tokens * -(-self.paths // 16) + 1
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
def attention_by_distance(lm: LoadedModel, trace: Trace, parallel_steps: set[int], max_d: int
                          ) -> dict[str, dict[int, float]]:
    """Mean attention each kind of generated row ("parallel": rows of `parallel_steps`, "ordinary": the rest)
    receives from the step d later, per d (see the module doc); "set" sums a parallel step's siblings."""
    kwargs, rows = replay_inputs(lm, trace)
    layers = range(lm.model.config.num_hidden_layers)
    with torch.inference_mode(), record_attention(layers) as rec:
        lm.model(**kwargs, use_cache=False, logits_to_keep=1)
    att = torch.stack([rec.weights[layer] for layer in layers]).mean(0)  # [rows, rows], mean over layers and heads
    visible = kwargs["attention_mask"][0, 0] if "attention_mask" in kwargs else torch.ones_like(att, dtype=torch.bool)
    sums: dict[str, dict[int, list[float]]] = {"parallel": defaultdict(list), "ordinary": defaultdict(list),
                                               "set": defaultdict(list)}
    for s, keys in enumerate(rows):
        for d in range(1, max_d + 1):
            if s + d >= len(rows):
                break
            queries = torch.tensor(rows[s + d])
            received = []
            for key in keys:
                seen = visible[queries, key]
                if seen.any():  # masked pairs (a pruned key) are not "receiving nothing": they are left out
                    received.append(float(att[queries[seen], key].mean()))
            if not received:
                continue
            kind = "parallel" if s in parallel_steps else "ordinary"
            sums[kind][d] += received
            if kind == "parallel":
                sums["set"][d].append(sum(received))
    return {kind: {d: sum(v) / len(v) for d, v in per.items()} for kind, per in sums.items()}


def matched_ratio(by_d: dict[str, dict[int, float]], kind: str = "parallel") -> float | None:
    """Mean over the distances both kinds have of `kind` / ordinary (None when they share none)."""
    ds = [d for d in by_d[kind] if d in by_d["ordinary"] and by_d["ordinary"][d] > 0]
    return sum(by_d[kind][d] / by_d["ordinary"][d] for d in ds) / len(ds) if ds else None


def repetitive(ids: list[int]) -> bool:
    """A run that fell into repetition: some 2- to 4-token sequence occurs three times or more."""
    for n in (2, 3, 4):
        grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
        if any(grams.count(g) >= 3 for g in set(grams)):
            return True
    return False


def samples(lm: LoadedModel, prompt_ids: list[int], n: int, k: int, seed: int) -> list[list[int]]:
    """`n` temperature-1 samples of `k` tokens (plain transformers generate, seeded); EOS ends a sample early."""
    ids = torch.tensor([prompt_ids], device=lm.device)
    torch.manual_seed(seed)
    with torch.inference_mode():
        out = lm.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0, top_k=0,
                                top_p=1.0, max_new_tokens=k, num_return_sequences=n,
                                pad_token_id=lm.tokenizer.pad_token_id or next(iter(lm.eos_ids), 0))
    result = []
    for row in out[:, len(prompt_ids):].tolist():
        cut = next((i for i, t in enumerate(row) if t in lm.eos_ids), len(row))
        result.append(row[:cut + 1] if cut < len(row) else row)
    return result


def on_the_sets(sample: list[int], trace: Trace, eos: set[int]) -> bool:
    """Every token of `sample` is a live candidate of the run's step at its index (an EOS ends it: the run would
    have stopped there too only if EOS led, so an EOS simply ends the comparison)."""
    for i, token in enumerate(sample):
        if token in eos:
            return True
        if i >= len(trace.steps) or token not in {c.token_id for c in trace.steps[i].alive}:
            return False
    return True


def commitment_by_prediction(trace: Trace) -> dict[str, float | None]:
    """Mean commitment layer of the steps whose prediction became a set (the next step has siblings) and of those
    whose prediction became a single token."""
    steps = trace.commitment["steps"]
    groups: dict[str, list[int]] = {"set": [], "single": []}
    for x, after in zip(steps, trace.steps[1:]):
        groups["set" if len(after.candidates) > 1 else "single"].append(x["commit_layer"])
    return {k: sum(v) / len(v) if v else None for k, v in groups.items()}


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


def _fmt(e: dict[str, Any], digits: int = 3) -> str:
    if e["mean"] is None:
        return "n/a"
    if e["low"] is None:
        return f"{e['mean']:.{digits}f} (n=1)"
    return f"{e['mean']:.{digits}f} [{e['low']:.{digits}f}, {e['high']:.{digits}f}] (n={e['n']})"


def table(result: dict[str, Any]) -> str:
    """The study's results as a Markdown table (mean [95% CI] over prompts), what the README shows."""
    s, cfg = result["summary"], result["config"]
    a = s["attention"]
    rows = [("a. attention received, parallel / ordinary rows (matched distance)", _fmt(a["all"]["ratio"])),
            ("a. the same, non-repetitive runs / repetitive runs",
             f"{_fmt(a['not repetitive']['ratio'])} / {_fmt(a['repetitive']['ratio'])}"),
            ("a. siblings summed per set / ordinary", _fmt(a["all"]["set_ratio"])),
            ("a. control: the same steps decoded greedily", _fmt(a["all"]["control_ratio"])),
            ("a. TEMPO ratio minus control (paired)", _fmt(a["all"]["ratio_minus_control"]))]
    for thr, per in s["by_threshold"].items():
        rows += [(f"b. threshold {thr}: KL TEMPO / soft (nats)",
                  f"{_fmt(per['tempo']['mean_kl'])} / {_fmt(per['soft']['mean_kl'])}"),
                 (f"b. threshold {thr}: w minus top share, TEMPO / soft",
                  f"{_fmt(per['tempo']['w_minus_share'])} / {_fmt(per['soft']['w_minus_share'])}"),
                 (f"c. threshold {thr}: samples on the sets, TEMPO / soft",
                  f"{_fmt(per['tempo']['coverage'])} / {_fmt(per['soft']['coverage'])}")]
    c = s["commitment"]
    rows += [(f"d. commitment layer (of {c['layers']}): predictions that became a set / a single token",
              f"{_fmt(c['set'], 1)} / {_fmt(c['single'], 1)}"),
             ("d. set minus single (paired)", _fmt(c["set_minus_single"], 2))]
    head = (f"{s['prompts']} prompts ({s['repetitive_prompts']} repetitive), {cfg['tokens']} steps, main threshold "
            f"{cfg['main_threshold']}, {cfg['samples']} samples, {cfg['paths']} paths; mean [95% bootstrap CI] "
            f"(n = prompts that have the quantity)\n\n")
    return head + "| quantity | result |\n|---|---|\n" + "\n".join(f"| {q} | {v} |" for q, v in rows)


TEMPO_COLOR, SOFT_COLOR, OTHER_COLOR = "#1f77b4", "#d62728", "#7f7f7f"
UPSTREAM_CLAIM = (0.36, 0.61)  # the upstream TEMPO's parallel / ordinary attention (one prompt)


def study_panels(result: dict[str, Any]) -> list[tuple[str, float | None, list[tuple[str, dict[str, Any], str]]]]:
    """The forest plot's panels, one unit each: (title, reference value, [(row label, estimate, colour)])."""
    s = result["summary"]
    a, c = s["attention"]["all"], s["commitment"]
    per = s["by_threshold"]
    both = lambda key: [row for thr, x in per.items() for row in (  # noqa: E731
        (f"TEMPO @{thr}", x["tempo"][key], TEMPO_COLOR), (f"soft @{thr}", x["soft"][key], SOFT_COLOR))]
    return [("a. attention received, parallel / ordinary row (1 = no difference)", 1.0,
             [("TEMPO", a["ratio"], TEMPO_COLOR), ("same steps, greedy", a["control_ratio"], OTHER_COLOR)]),
            ("b. KL to the branches' mixture (nats)", None, both("mean_kl")),
            ("b. w minus the top sibling's share (0 = a faithful mixture)", 0.0, both("w_minus_share")),
            ("c. samples whose first tokens lie on the sets (share)", None, both("coverage")),
            (f"d. commitment layer (of {c['layers']}): set minus single token", 0.0,
             [("paired difference", c["set_minus_single"], TEMPO_COLOR)])]


def study_figure(result: dict[str, Any]) -> dict:
    """A forest plot (a Plotly figure dict) in one panel per unit: every estimate with its 95% interval; the
    reference line of no effect where there is one, and the upstream claim's range on the attention panel."""
    panels = study_panels(result)
    sizes = [len(rows) for _, _, rows in panels]
    gap, total = 0.06, sum(sizes)
    room = 1 - gap * (len(panels) - 1)
    data, layout_axes, shapes, notes = [], {}, [], []
    top = 1.0
    for n, ((title, reference, rows), size) in enumerate(zip(panels, sizes), start=1):
        bottom = max(0.0, top - room * size / total)
        rows = [r for r in rows if r[1]["mean"] is not None][::-1]  # the first row on top
        x, y = f"x{n if n > 1 else ''}", f"y{n if n > 1 else ''}"
        data.append({"type": "scatter", "mode": "markers", "name": title, "xaxis": x, "yaxis": y,
                     "x": [r[1]["mean"] for r in rows], "y": [r[0] for r in rows],
                     "marker": {"color": [r[2] for r in rows], "size": 8}, "showlegend": False,
                     "error_x": {"type": "data", "symmetric": False, "thickness": 1.5,
                                 "array": [r[1]["high"] - r[1]["mean"] if r[1]["high"] is not None else 0 for r in rows],
                                 "arrayminus": [r[1]["mean"] - r[1]["low"] if r[1]["low"] is not None else 0
                                                for r in rows]},
                     "hovertemplate": "%{y}: %{x:.3f}<extra></extra>"})
        layout_axes[f"xaxis{n if n > 1 else ''}"] = {"anchor": y, "zeroline": False}
        layout_axes[f"yaxis{n if n > 1 else ''}"] = {"domain": [bottom, top], "anchor": x, "automargin": True,
                                                     "tickfont": {"size": 10}}
        if reference is not None:
            shapes.append({"type": "line", "xref": x, "yref": f"{y} domain", "x0": reference, "x1": reference,
                           "y0": 0, "y1": 1, "line": {"color": "#555", "dash": "dot", "width": 1}})
        if n == 1:
            shapes.append({"type": "rect", "xref": x, "yref": f"{y} domain", "x0": UPSTREAM_CLAIM[0],
                           "x1": UPSTREAM_CLAIM[1], "y0": 0, "y1": 1, "fillcolor": "#fdd49e", "opacity": 0.5,
                           "line": {"width": 0}, "layer": "below"})
            notes.append({"text": "upstream claim", "xref": x, "yref": f"{y} domain", "x": sum(UPSTREAM_CLAIM) / 2,
                          "y": 0.5, "yanchor": "middle", "showarrow": False, "font": {"size": 9, "color": "#a63603"}})
        notes.append({"text": title, "xref": "paper", "yref": "paper", "x": 0, "y": top, "xanchor": "left",
                      "yanchor": "bottom", "showarrow": False, "font": {"size": 11}})
        top = bottom - gap
    s = result["summary"]
    return {"data": data, "layout": {
        "title": {"text": f"Study: {s['prompts']} prompts, mean and 95% bootstrap interval over prompts",
                  "font": {"size": 13}, "x": 0.01, "xanchor": "left"},
        "template": "plotly_white", "height": 160 + 24 * total + 40 * len(panels),
        "margin": {"l": 110, "r": 10, "t": 60, "b": 30}, "shapes": shapes, "annotations": notes, **layout_axes}}


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


def save(result: dict[str, Any], out: Path) -> list[Path]:
    """study.json (strict JSON), results.md (the table) and study.html (the figure) in `out`."""
    import plotly.io as pio

    out.mkdir(parents=True, exist_ok=True)
    clean = json.loads(json.dumps(result, default=float), parse_constant=lambda c: None)
    paths = [out / "study.json", out / "results.md", out / "study.html"]
    paths[0].write_text(json.dumps(clean, indent=1, ensure_ascii=False, allow_nan=False))
    paths[1].write_text(table(clean) + "\n")
    pio.write_html(study_figure(clean), paths[2], include_plotlyjs=True, full_html=True)
    return paths


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    from .model import ModelError, load_model

    p = argparse.ArgumentParser(prog="python -m tempo_core.study", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="the small study CI runs (5 prompts, 6 steps)")
    p.add_argument("--prompts", help="a JSON prompt file (default: the bundled assets/study/prompts.json)")
    p.add_argument("--out", default="study-results", help="folder for study.json, results.md and study.html")
    p.add_argument("--model", help="model id or path (default: the embedded SmolLM2-135M-Instruct)")
    for name in ("max_prompts", "tokens", "paths", "samples", "sample_tokens", "distance", "seed"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, dest=name)
    p.add_argument("--thresholds", help="comma-separated selection thresholds, e.g. 0.02,0.05,0.1,0.2")
    p.add_argument("--main-threshold", type=float, dest="main_threshold")
    opts = vars(p.parse_args(argv))
    cfg = StudyConfig(**asdict(QUICK)) if opts["quick"] else StudyConfig()
    try:
        if opts["thresholds"]:
            try:
                cfg.thresholds = [float(x) for x in opts["thresholds"].split(",")]
            except ValueError:
                raise SettingsError("thresholds", f"must be comma-separated numbers, got {opts['thresholds']!r}")
            if opts["main_threshold"] is None and cfg.main_threshold not in cfg.thresholds:
                cfg.main_threshold = cfg.thresholds[len(cfg.thresholds) // 2]
        for name in (*StudyConfig.RANGES, "main_threshold"):
            if opts.get(name) is not None:
                setattr(cfg, name, opts[name])
        cfg.check()
        prompts = load_prompts(opts["prompts"])
        lm = load_model(opts["model"])
    except (SettingsError, ModelError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    n = min(cfg.max_prompts, len(prompts))
    bar = tqdm(total=n, desc="study", unit="prompt", file=sys.stderr)
    result = None
    for done, result in study_iter(lm, cfg, prompts):
        bar.update(done - bar.n)
    bar.close()
    for path in save(result, Path(opts["out"])):
        print(path)
    print(table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
