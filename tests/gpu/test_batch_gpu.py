"""On a GPU: runs batched in one forward per tick, their caches in the K/V store with the tick's forward replayed
from captured graphs (the CUDA default, serving/graphed.py), in the store with eager forwards, and in caches of
their own, against each run made alone. The CPU tests check the same layouts (tests/serving/test_batch.py); this
runs the CUDA kernels the store uses and the captured forwards."""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from on_gpu import max_prob_gap, needs_cuda, on_cuda, same_decisions

from tempo_core import build_settings, generate
from tempo_core.runtime.kvstore import kv_store
from tempo_core.serving.graphed import batch_graphs
from tempo_core.serving.scheduler import Batcher
from tempo_core.serving.warmup import warm_batch_graphs

pytestmark = [pytest.mark.gpu, needs_cuda]
RUNS = [dict(prompt="the cat sat", selection_threshold=0.05, max_tokens=12, use_retroactive_pruning=True,
             attention_threshold=0.02),
        dict(prompt="once upon a time there was a small robot who liked", selection_threshold=0.1, max_tokens=9),
        dict(prompt="hello", selection_threshold=1.0, max_tokens=10, use_retroactive_pruning=True),
        dict(prompt="the dog ran to the park and the cat", selection_threshold=0.02, max_tokens=15,
             allow_intraset_token_visibility=True, use_retroactive_pruning=True, attention_threshold=0.05),
        dict(prompt=" ".join(["once upon a time there was a small robot"] * 20), selection_threshold=0.03,
             max_tokens=8),
        dict(prompt="a small robot read", selection_threshold=0.04, max_tokens=10, use_retroactive_pruning=True,
             attention_threshold=0.03, use_multi_scale_attention=True, num_layers_to_use=2)]


def batched(lm, all_settings):
    traces, done, errors = {}, threading.Semaphore(0), []

    def on(i):
        def f(event, error):
            if error is not None:
                errors.append(error)
                done.release()
            elif event.done:
                traces[i] = event.trace
                done.release()
        return f
    with ThreadPoolExecutor(1) as pool:
        batcher = Batcher(pool)
        for i, s in enumerate(all_settings):
            batcher.add(lambda s=s: generate(lm, s, cooperative=True, cuda_graphs=False), on(i))
        for _ in all_settings:
            assert done.acquire(timeout=300)
    assert not errors, errors
    return [traces[i] for i in range(len(all_settings))]


def test_batched_runs_equal_their_solo_runs_in_every_layout():
    lm = on_cuda(seed=0, layers=4)
    all_settings = [build_settings({"raw_prompt": True, **kw}) for kw in RUNS]
    solo = [list(generate(lm, s, cuda_graphs=False))[-1].trace for s in all_settings]
    store, graphs = kv_store(lm), batch_graphs(lm)
    assert store is not None and graphs is not None  # both on by default on CUDA
    assert warm_batch_graphs(lm, build_settings({"raw_prompt": True, "prompt": "warm-up"}), runs=(2, 4)) >= 1
    for kv, graphed in ((store, graphs), (store, False), (False, False)):
        lm.runtime.kv_store, lm.runtime.batch_graphs = kv, graphed
        replays = graphs.replays
        for alone, together in zip(solo, batched(lm, all_settings)):
            assert same_decisions(alone, together) and alone.text == together.text
            assert max_prob_gap(alone, together) < 1e-4
        assert (graphs.replays > replays) == (graphed is not False)
        assert store.free_slots == store.slots  # every run gave its slot back
