"""On a GPU: the CUDA-graphed TEMPO step (the default on CUDA) against the eager one, and its speed against HF
static-cache greedy, all in one process (that both make the same run is a test too: tests/gpu/test_graphs_gpu.py).

    python bench/bench_graphs.py [--steps 32] [--ks 1,2,4,8,16]

Random Llama-3.2-3B shape, bf16. For k forced (threshold 0, max_parallel_tokens k), with and without pruning:
the graphed run's candidates and pruning decisions against an eager static-cache run with the same (fused)
kernels, the largest probability difference, ms per logical step (mean of the second half), and the first graphed run's extra time (its captures:
graphs are kept with their cache in the model's pool, so the second run captures nothing). Then each captured
graph's replay alone, to split a step into GPU time and the engine's own work around it, and the fused
kernels' logits against the model's own (tempo_core/fused.py).
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_steps import random_model, static_step_ms  # noqa: E402
from tempo_core import build_settings  # noqa: E402
from tempo_core.engine import tempo_events  # noqa: E402
from tempo_core.events import encode_prompt  # noqa: E402
from tempo_core.runtime.fused import fused_kernels  # noqa: E402


def run(lm, s, **kw):
    trace, t0 = None, time.perf_counter()
    for event in tempo_events(lm, s, **kw):
        trace = event.trace
    torch.cuda.synchronize()
    return trace, time.perf_counter() - t0


def replay_ms(graphed, key, n=50):
    graph, buf = graphed.graphs[key][:2]
    counts = [layer.cumulative_length for layer in graphed.cache.layers]
    b = key[0]
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.inference_mode():
        for c in counts:  # an idle slot's count is where its last run ended: start from an empty cache
            c.zero_()
        for _ in range(n):
            graph.replay()
            for c in counts:
                c.sub_(b)
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n * 1e3


def fused_vs_plain(lm, ids):
    """One prefill's logits, bf16 with the model's own kernels and with the fused ones, against the same model in
    fp32: the bf16 noise each has (largest |dlogit|), and the largest logit."""
    x = torch.tensor([ids], device=lm.device)
    with torch.inference_mode():
        plain = lm.model(x).logits.float()
        with fused_kernels(lm.model):
            fused = lm.model(x).logits.float()
        lm.model.float()
        exact = lm.model(x).logits.float()
        lm.model.to(torch.bfloat16)  # bf16 -> fp32 -> bf16 is exact: the same model again
    return (plain - exact).abs().max().item(), (fused - exact).abs().max().item(), exact.abs().max().item()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--ks", default="1,2,4,8")
    a = ap.parse_args()
    lm = random_model("llama3b", "cuda", "bf16")
    prompt = "Explain the theory of relativity simply."
    warm = build_settings(dict(prompt=prompt, raw_prompt=True, selection_threshold=0.0, max_parallel_tokens=8,
                               max_tokens=a.steps, min_steps=a.steps, use_retroactive_pruning=True))
    _, t_warm = run(lm, warm)
    _, t_again = run(lm, warm)
    print(f"process warm-up: first graphed run (compiles the fused kernels, captures) {t_warm:.1f} s, the same run "
          f"again {t_again:.2f} s", flush=True)
    ok = True
    rows = []
    for pruning in (False, True):
        for k in map(int, a.ks.split(",")):
            s = build_settings(dict(prompt=prompt, raw_prompt=True, selection_threshold=0.0, max_parallel_tokens=k,
                                    max_tokens=a.steps, min_steps=a.steps, use_retroactive_pruning=pruning,
                                    attention_threshold=0.02))
            plain, _ = run(lm, s, static_cache=True, cuda_graphs=False)  # what a run without graphs costs
            with fused_kernels(lm.model):  # the graphs' kernels everywhere, the prefill included
                eager, _ = run(lm, s, static_cache=True, cuda_graphs=False)  # the reference for the graphs' decisions
                graphed, t_first = run(lm, s)  # captures what this shape needs
                graphed2, t_second = run(lm, s)  # reuses them
            same = ([[(c.token_id, c.pruned_at) for c in st.candidates] for st in eager.steps]
                    == [[(c.token_id, c.pruned_at) for c in st.candidates] for st in graphed.steps])
            dprob = max(abs(x.prob - y.prob) for p, q in zip(eager.steps, graphed.steps)
                        for x, y in zip(p.candidates, q.candidates))
            half = a.steps // 2
            e_ms = statistics.mean(st.time_ms for st in plain.steps[half:])
            g_ms = statistics.mean(st.time_ms for st in graphed2.steps[half:])
            ok &= same and graphed2.stats["cuda_graphs"] == "on"
            rows.append((pruning, k, e_ms, g_ms))
            print(f"pruning={pruning!s:5} k={k:2}: same candidates & pruning {same}, max |dprob| {dprob:.4f}; "
                  f"eager (plain kernels) {e_ms:.2f} ms/step, graphed {g_ms:.2f} ms/step ({graphed2.stats['cuda_graphs']}, "
                  f"{graphed2.stats['graphed_steps']} graphed steps); first run {t_first:.2f} s, second {t_second:.2f} s",
                  flush=True)
    pool = lm.runtime.slots
    print(f"pool: {len(pool.idle)} idle slot(s), {pool.lent} lent, capacities {[x.capacity for x in pool.idle]}, "
          f"{sum(len(x.graphs.graphs) for x in pool.idle if x.graphs)} graphs")
    for slot in (x for x in pool.idle if x.graphs):
        for key in sorted(slot.graphs.graphs, key=lambda k: (len(k[2]), k[0], k[1])):
            print(f"replay alone: bucket {key[0]:2}, window {key[1]}, {len(key[2])} recorded layers: "
                  f"{replay_ms(slot.graphs, key):.2f} ms")
    _, ids = encode_prompt(lm, build_settings(dict(prompt=prompt, raw_prompt=True)))
    d_plain, d_fused, top = fused_vs_plain(lm, ids)
    print(f"one prefill against fp32 (largest |logit| {top:.2f}): max |dlogit| bf16 plain {d_plain:.4f}, "
          f"bf16 fused {d_fused:.4f}")
    greedy = static_step_ms(lm, ids, a.steps)
    print(f"HF static-cache greedy (compiled): {greedy:.2f} ms/step")
    for pruning, k, e_ms, g_ms in rows:
        print(f"ratio pruning={pruning!s:5} k={k:2}: graphed / static greedy {g_ms / greedy:.2f}; eager / graphed "
              f"{e_ms / g_ms:.1f}")
    print("SAME" if ok else "DIFFERENT")


if __name__ == "__main__":
    main()
