"""On a GPU: runs batched in one forward per tick, their caches in the K/V store with the tick's forward replayed
from captured graphs (the CUDA default, batchgraph.py), in the store with eager forwards, and in caches of their
own, against each run made alone (fp32, a small random GQA Llama: 4 layers, 8 query and 2 KV heads).

    python3 bench/check_batch_gpu.py

The CPU tests check the same (tests/engine/test_batch.py); this runs the CUDA kernels the store uses (indexed
writes, gathers, SDPA over the gathered caches) and the captured forwards. Prints, per variant, whether every run's candidates and pruning
equal its solo run's and the largest probability difference. Not a test (CI has no GPU).
"""

from __future__ import annotations

import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tiny import tiny_tokenizer  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from tempo_core import build_settings, generate, wrap_model  # noqa: E402
from tempo_core.runtime.kvstore import kv_store  # noqa: E402
from tempo_core.serving.graphed import batch_graphs  # noqa: E402
from tempo_core.serving.scheduler import Batcher  # noqa: E402
from tempo_core.serving.warmup import warm_batch_graphs  # noqa: E402

RUNS = [dict(prompt="the cat sat", selection_threshold=0.05, max_tokens=12, use_retroactive_pruning=True,
             attention_threshold=0.02),
        dict(prompt="once upon a time there was a small robot who liked", selection_threshold=0.1, max_tokens=9),
        dict(prompt="hello", selection_threshold=1.0, max_tokens=10, use_retroactive_pruning=True),
        dict(prompt="the dog ran to the park and the cat", selection_threshold=0.02, max_tokens=15,
             allow_intraset_token_visibility=True, use_retroactive_pruning=True, attention_threshold=0.05),
        dict(prompt=" ".join(["once upon a time there was a small robot"] * 20), selection_threshold=0.03,
             max_tokens=8),
        dict(prompt="hello world", selection_threshold=0.05, max_tokens=14),
        dict(prompt="a small robot read", selection_threshold=0.04, max_tokens=10, use_retroactive_pruning=True,
             attention_threshold=0.03, use_multi_scale_attention=True, num_layers_to_use=2)]


def small_model():
    tok = tiny_tokenizer(True)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=512, intermediate_size=1024, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=1024,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(cfg).float()
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)  # a few clear favourites per step, like a trained model
    model.generation_config.eos_token_id = tok.eos_token_id
    dev = "cuda" if torch.cuda.is_available() else "cpu"  # a CPU dry run needs TEMPO_SHARED_KV_ROWS set
    return wrap_model(model.to(dev), tok, name=f"small-llama-{dev}")


def batched(lm, all_settings):
    traces, done = {}, threading.Semaphore(0)

    def on(i):
        def f(event, error):
            if error is not None:
                raise SystemExit(f"run {i} failed: {error!r}")
            if event.done:
                traces[i] = event.trace
                done.release()
        return f
    with ThreadPoolExecutor(1) as pool:
        batcher = Batcher(pool)
        for i, s in enumerate(all_settings):
            batcher.add(lambda s=s: generate(lm, s, cooperative=True, cuda_graphs=False), on(i))
        for _ in all_settings:
            assert done.acquire(timeout=300)
    return traces, batcher.grouped_runs


def main() -> None:
    lm = small_model()
    all_settings = [build_settings({"raw_prompt": True, **kw}) for kw in RUNS]
    solo = [list(generate(lm, s, cuda_graphs=False))[-1].trace for s in all_settings]
    store = kv_store(lm)
    assert store is not None, "the K/V store is on by default on CUDA (on a CPU: TEMPO_SHARED_KV_ROWS=512)"
    graphs = batch_graphs(lm)
    assert graphs is not None, "batch graphs are on by default on CUDA"
    t0 = time.perf_counter()  # as the server's start does: shapes captured before the runs, then reused by them
    shapes = warm_batch_graphs(lm, build_settings({"raw_prompt": True, "prompt": "warm-up"}), runs=(2, 4, 8))
    print(f"warm_batch_graphs: {shapes} shapes in {time.perf_counter() - t0:.1f} s; store slots free "
          f"{store.free_slots}/{store.slots}")
    for name, kv, graphed in (("K/V store, graphed", store, graphs), ("K/V store, eager", store, False),
                              ("own caches", False, False)):
        lm.runtime.kv_store, lm.runtime.batch_graphs = kv, graphed
        writes, replays = store.writes, graphs.replays
        got, grouped = batched(lm, all_settings)
        same, worst, worst_score = True, 0.0, 0.0
        for i, trace in enumerate(solo):
            b = got[i]
            for x, y in zip(trace.steps, b.steps):
                same &= [c.token_id for c in x.candidates] == [c.token_id for c in y.candidates]
                same &= [c.pruned_at for c in x.candidates] == [c.pruned_at for c in y.candidates]
                worst = max([worst] + [abs(c.prob - d.prob) for c in x.candidates for d in y.candidates
                                       if c.token_id == d.token_id])
                scores = [(c.attention, d.attention) for c, d in zip(x.candidates, y.candidates)
                          if c.attention is not None and d.attention is not None]
                worst_score = max([worst_score] + [abs(a - b) for a, b in scores])
            same &= len(trace.steps) == len(b.steps) and trace.text == b.text
        print(f"{name}: candidates, pruning and text equal to the solo runs: {same}; max |Δprob| {worst:.2e}; "
              f"max |Δ pruning score| {worst_score:.2e}; "
              f"runs' turns in groups {grouped}; store writes {store.writes - writes}; graph replays "
              f"{graphs.replays - replays} ({len(graphs.graphs)} shapes captured); free slots "
              f"{store.free_slots}/{store.slots}")


if __name__ == "__main__":
    main()
