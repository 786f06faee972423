"""What the faithfulness meter reports for the embedded model: 5 prompts x thresholds x pruning on/off.

    .venv/bin/python bench/bench_faithfulness.py --json-out bench/results/faithfulness_smollm2.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tempo_core import build_settings, load_model, run  # noqa: E402

PROMPTS = ["What is the capital of France?", "Write a haiku about servers.",
           "Explain the theory of relativity simply.", "List three uses of a paperclip.",
           "Once upon a time, a small robot"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--paths", type=int, default=8)
    ap.add_argument("--thresholds", default="0.05,0.1,0.2")
    ap.add_argument("--json-out")
    a = ap.parse_args()
    lm = load_model()
    rows = []
    for thr in [float(x) for x in a.thresholds.split(",")]:
        for pruning in (False, True):
            per = []
            for p in PROMPTS:
                s = build_settings(dict(prompt=p, max_tokens=a.max_tokens, selection_threshold=thr,
                                        use_retroactive_pruning=pruning, attention_threshold=0.02,
                                        faithfulness=True, faithfulness_paths=a.paths))
                t = run(lm, s)
                f = t.faithfulness
                per.append({"prompt": p, "steps": len(t.steps), "mean_set": t.stats["mean_set_size"],
                            "pruned": t.stats["pruned"], **{k: f[k] for k in (
                                "mean_kl", "top_agreement", "mean_set_jaccard", "min_coverage", "clean_ppl",
                                "greedy_ppl", "mean_w", "mean_top_share", "threaded_steps")}, "clean_text": t.clean_text})
                print(f"thr {thr} pruning {pruning} | {p[:30]:30} | KL {f['mean_kl']:.3f} agree "
                      f"{f['top_agreement']:.2f} ppl {f['clean_ppl']:.2f}/{f['greedy_ppl']:.2f}", flush=True)
            # a run that never branched has no w: the means are over the runs that have one
            med = lambda k: statistics.mean([x[k] for x in per if x[k] is not None] or [float("nan")])  # noqa: E731
            rows.append({"threshold": thr, "pruning": pruning, "runs": per,
                         **{f"mean_{k}": med(k) for k in ("mean_set", "pruned", "mean_kl", "top_agreement",
                                                          "mean_set_jaccard", "min_coverage", "clean_ppl",
                                                          "greedy_ppl", "mean_w", "mean_top_share")}})
    print("\n| threshold | pruning | mean set | pruned/run | mean KL (nats) | top-token agreement | "
          "set overlap | min coverage | clean ppl | greedy ppl | mean w | top sibling's share |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['threshold']} | {'on' if r['pruning'] else 'off'} | {r['mean_mean_set']:.2f} | "
              f"{r['mean_pruned']:.1f} | {r['mean_mean_kl']:.3f} | {r['mean_top_agreement']:.0%} | "
              f"{r['mean_mean_set_jaccard']:.2f} | {r['mean_min_coverage']:.2f} | {r['mean_clean_ppl']:.2f} | "
              f"{r['mean_greedy_ppl']:.2f} | {r['mean_mean_w']:.2f} | {r['mean_mean_top_share']:.2f} |")
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
