"""`python -m tempo_core` (the engine alone) and `python cli.py` (with figures): run TEMPO from the command line;
`... study` runs the study instead (analysis/study_command.py).

Flags mirror the settings fields (`selection_threshold` -> `--selection-threshold`) plus the seeds' aliases.
Bad input exits non-zero with one line naming the field and its allowed range; no traceback.
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from .config import FIELDS, SettingsError, TempoSettings, describe_range
from .settings_sources import load_settings
from .model import ModelError, load_model
from .trace import Trace

# seeds' spellings that are not simply --field-name / --no-field-name
EXTRA_FLAGS = {
    "selection_threshold": (["--threshold"], None),
    "use_retroactive_pruning": (["--use-retroactive-removal"], None),
    "complete_pruning_mode": (["--complete-removal-mode"], None),
    "use_relative_attention": ([], "--no-relative-attention"),
    "use_multi_scale_attention": ([], "--no-multi-scale-attention"),
    "use_sigmoid_threshold": ([], "--no-sigmoid-threshold"),
    "preserve_isolated_tokens": ([], "--no-preserve-isolated-tokens"),
}


# flags the seeds name without defining what they do: refused with that reason, not "unrecognized arguments"
UNDEFINED_SEED_FLAGS = ("--disable-kv-cache-consistency", "--use-lci-dynamic-threshold", "--no-lci-dynamic-threshold")


class _Undefined(argparse.Action):
    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any):
        super().__init__(option_strings, dest, nargs=0, help=argparse.SUPPRESS)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        parser.exit(2, f"error: {args[-1]}: the TEMPO seeds name this flag but never define what it does, so it "
                       f"is not supported\n")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage dump
        self.exit(2, f"error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m tempo_core", description="TEMPO: threshold-enabled multipath parallel output.",
                argument_default=argparse.SUPPRESS)
    run = p.add_argument_group("model and output")
    run.add_argument("--model", help="hub id or local path (default: $TEMPO_MODEL, else the bundled SmolLM2-135M)")
    run.add_argument("--device", help="auto | cpu | cuda | mps (default auto)")
    run.add_argument("--dtype", help="auto | float32 | bfloat16 | float16 (default: fp32 on CPU, bf16 on GPU)")
    run.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false",
                     help="on a GPU, run every TEMPO step eagerly instead of replaying captured CUDA graphs "
                          "(same output; for comparison; or TEMPO_CUDA_GRAPHS=0)")
    run.add_argument("--config", help="JSON or YAML file of settings (CLI > TEMPO_* env > file > defaults)")
    run.add_argument("--output-dir", help="write trace.json and text.txt here")
    run.add_argument("--save-visualization", action="store_true", help="with --output-dir: also write figures")
    run.add_argument("--json", action="store_true", help="print the JSON trace to stdout")
    run.add_argument("--debug-mode", action="store_true", help="log every step's candidates and pruning to stderr")
    run.add_argument("--profile", action="store_true", help="print a timing breakdown to stderr")
    run.add_argument("--use-cprofile", action="store_true", help="run under cProfile")
    run.add_argument("--profile-output", help="cProfile stats file (default tempo_profile.prof)")
    gen = p.add_argument_group("generation settings (each also settable as TEMPO_<NAME> or in --config)")
    for name, f in FIELDS.items():
        flag = "--" + name.replace("_", "-")
        aliases, negative = EXTRA_FLAGS.get(name, ([], None))
        default = "" if f.default in ("", None) else f"; default {f.default}"
        help_text = f"{f.metadata['help']} ({describe_range(name)}{default})"
        if f.type == "bool":
            gen.add_argument(flag, *aliases, dest=name, action="store_const", const=True,
                             help=help_text if f.default is not True else f"{f.metadata['help']} (default on)")
            gen.add_argument(negative or "--no-" + flag[2:], dest=name, action="store_const", const=False,
                             help=f"turn {flag} off" + (" (default)" if f.default is False else ""))
        else:
            gen.add_argument(flag, *aliases, dest=name, metavar=name.split("_")[-1].upper(), help=help_text)
    # the seeds' switches for the mode
    gen.add_argument("--default-mode", dest="mode", action="store_const", const="default",
                     help="same as --mode default (plain transformers generate)")
    gen.add_argument("--use-mcts", dest="mode", action="store_const", const="mcts", help="same as --mode mcts")
    for flag in UNDEFINED_SEED_FLAGS:
        p.add_argument(flag, action=_Undefined)
    return p


def _explicit_settings(ns: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(ns).items() if k in FIELDS}


# (trace, folder) -> the names of the files written. The engine draws nothing: the figures live above it
# (components/figures/report.py), and `cli.py` at the top of the repository passes them in.
FigureWriter = Callable[[Trace, Path], list[str]]
StudyFigureWriter = Callable[[dict[str, Any], Path], None]  # the study's result, the page to write


def main(argv: Sequence[str] | None = None, save_figures: FigureWriter | None = None,
         write_study_figure: StudyFigureWriter | None = None) -> int:
    """One run (or, `argv` starting with `study`, the study); the exit status. The figure writers come from above
    the engine (`python cli.py`); without them no figure is drawn."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["study"]:
        from .analysis.study_command import main as study_main
        return study_main(argv[1:], write_study_figure)
    ns = build_parser().parse_args(argv)
    opts = vars(ns)
    logging.basicConfig(level=logging.DEBUG if opts.get("debug_mode") else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        settings = load_settings(_explicit_settings(ns), config_file=opts.get("config"))
        if not settings.prompt.strip():
            raise SettingsError("prompt", "must be a non-empty string (use --prompt)")
        if opts.get("save_visualization") and not opts.get("output_dir"):
            raise SettingsError("save_visualization", "needs --output-dir")
        if opts.get("save_visualization") and save_figures is None:
            raise SettingsError("save_visualization", "the engine alone draws no figures: run `python cli.py` "
                                                      "(the same flags) for them")
        lm = load_model(opts.get("model"), opts.get("device"), opts.get("dtype"), opts.get("cuda_graphs"))
        profiler = cProfile.Profile() if opts.get("use_cprofile") else None
        if profiler:
            profiler.enable()
        trace = _run_with_progress(lm, settings, debug=bool(opts.get("debug_mode")))
        if profiler:
            profiler.disable()
            out = opts.get("profile_output", "tempo_profile.prof")
            profiler.dump_stats(out)
            print(f"cProfile stats written to {out}", file=sys.stderr)
    except (SettingsError, ModelError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    if opts.get("profile"):
        _print_profile(trace, lm.load_seconds)
    if trace.faithfulness:
        from .analysis.report import faithfulness_line
        print(faithfulness_line(trace.faithfulness), file=sys.stderr)
    if trace.commitment:
        from .analysis.report import commitment_line
        print(commitment_line(trace.commitment), file=sys.stderr)
    if opts.get("output_dir"):
        _write_outputs(trace, Path(opts["output_dir"]), save_figures if opts.get("save_visualization") else None)
    if opts.get("json"):
        print(trace.to_json(indent=2))
    else:
        print(trace.text)
        print(f"\nclean: {trace.clean_text}", file=sys.stderr)
    return 0


def _run_with_progress(lm, settings: TempoSettings, debug: bool) -> Trace:
    from tqdm import tqdm

    from .analysis.after_run import generate

    log = logging.getLogger("tempo_core.steps")
    bar = tqdm(total=settings.max_tokens, desc=settings.mode, unit="step", file=sys.stderr, leave=False,
               dynamic_ncols=True)
    event = None
    try:
        for event in generate(lm, settings):
            if event.done:
                break
            if event.progress:  # a phase after the steps (faithfulness)
                bar.set_description(event.progress)
                continue
            st = event.step
            bar.update(1)
            bar.set_postfix(set=len(st.candidates), pruned=event.trace.stats.get("pruned", 0))
            if debug:
                cands = ", ".join(f"{c.text!r}:{c.prob:.3f}" for c in st.candidates)
                log.debug("step %d pos %d [%s]%s", st.step, st.position, cands,
                          "".join(f" pruned {c.text!r}@{c.pruned_at}" for c in event.pruned))
    finally:
        bar.close()
    assert event is not None
    return event.trace


def _print_profile(trace: Trace, load_s: float) -> None:
    t, s = trace.timings, trace.stats
    print(f"profile: load {load_s:.2f}s | prefill {t.get('prefill_ms', 0):.1f} ms | "
          f"{s.get('steps', 0)} steps, mean {t.get('mean_step_ms', 0):.1f} ms/step, "
          f"{t.get('steps_per_s', 0):.2f} steps/s | mean set {s.get('mean_set_size', 0):.2f} | "
          f"{s.get('forward_passes', 0)} forwards, {s.get('tokens_processed', 0)} tokens processed | "
          f"CUDA graphs {s.get('cuda_graphs', 'n/a')}", file=sys.stderr)


def _write_outputs(trace: Trace, out: Path, save_figures: FigureWriter | None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "trace.json").write_text(trace.to_json(indent=2))
    (out / "text.txt").write_text(f"{trace.text}\n\nclean: {trace.clean_text}\n")
    written = ["trace.json", "text.txt"]
    if save_figures is not None:
        written += save_figures(trace, out)
    print(f"wrote {', '.join(written)} to {out}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
