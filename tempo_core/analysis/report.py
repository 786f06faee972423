"""The analyses' results as text: one line for a run's faithfulness or commitment (the CLI prints it, the HTML
report shows it), and the study's table (the README's, and the Research tab's)."""

from __future__ import annotations

import math
from typing import Any


def faithfulness_line(result: dict[str, Any]) -> str:
    """One line of a faithfulness result; a perplexity of no text (NaN, or null once it went through JSON) is n/a."""
    ppl = lambda v: f"{v:.2f}" if v is not None and math.isfinite(v) else "n/a (no text)"  # noqa: E731
    threads = ""
    if result.get("mean_w") is not None:
        threads = (f", single-threadedness w {result['mean_w']:.2f} vs top sibling's share "
                   f"{result['mean_top_share']:.2f} over {result['threaded_steps']} steps")
    return (f"faithfulness: mean KL {result['mean_kl']:.4f} nats, top-token agreement "
            f"{result['top_agreement']:.0%}, selected-set overlap {result['mean_set_jaccard']:.2f}, "
            f"clean-text perplexity {ppl(result['clean_ppl'])} vs greedy {ppl(result['greedy_ppl'])}{threads}")


def commitment_line(result: dict[str, Any]) -> str:
    """One line: the mean commitment layer, and how many steps settle only at the output."""
    steps, layers = result["steps"], result["layers"]
    if not steps:
        return "commitment: no steps to read"
    mean = sum(x["commit_layer"] for x in steps) / len(steps)
    late = sum(1 for x in steps if x["commit_layer"] == layers)
    sets = [x["part_layer"] for x in steps if x["js"] is not None]
    parted = [p for p in sets if p is not None]
    part = (f"; siblings' predictions part at layer {sum(parted) / len(parted):.1f} on average ({len(parted)} of "
            f"{len(sets)} sets)" if parted else "")
    return (f"commitment: predictions settle at layer {mean:.1f} of {layers} on average; {late} of {len(steps)} "
            f"only at the output{part}")


def _fmt(e: dict[str, Any], digits: int = 3) -> str:
    if e["mean"] is None:
        return "n/a"
    if e["low"] is None:
        return f"{e['mean']:.{digits}f} (n=1)"
    return f"{e['mean']:.{digits}f} [{e['low']:.{digits}f}, {e['high']:.{digits}f}] (n={e['n']})"


def study_table(result: dict[str, Any]) -> str:
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
