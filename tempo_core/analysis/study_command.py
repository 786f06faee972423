"""The study from the command line: `python -m tempo_core study` (the numbers and the table) and `python cli.py
study` (with the figure). It writes study.json, results.md and, given a figure writer, study.html."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from ..config import SettingsError
from ..model import ModelError, load_model
from .report import study_table
from .study import QUICK, StudyConfig, load_prompts, study_iter

# (result, path) -> None: writes the study's figure as a page (components/figures/study.py)
FigureWriter = Callable[[dict[str, Any], Path], None]


def save(result: dict[str, Any], out: Path, write_figure: FigureWriter | None = None) -> list[Path]:
    """study.json (strict JSON), results.md (the table) and, with `write_figure`, study.html (the figure) in
    `out`; the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    clean = json.loads(json.dumps(result, default=float), parse_constant=lambda c: None)
    paths = [out / "study.json", out / "results.md"]
    paths[0].write_text(json.dumps(clean, indent=1, ensure_ascii=False, allow_nan=False))
    paths[1].write_text(study_table(clean) + "\n")
    if write_figure is not None:
        paths.append(out / "study.html")
        write_figure(clean, paths[2])
    return paths


def main(argv: list[str] | None = None, write_figure: FigureWriter | None = None) -> int:
    """The study's command line (`argv` after `study`); 2 with one line naming the field on bad input."""
    from tqdm import tqdm

    p = argparse.ArgumentParser(prog="python -m tempo_core study", description="The study of README \"Is the "
                                "superposition real?\": every figure a mean over prompts with a 95% interval.")
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
    for path in save(result, Path(opts["out"]), write_figure):
        print(path)
    print(study_table(result))
    return 0
