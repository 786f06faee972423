"""Runs batched in one forward (tempo_core/serving/) against the same runs made alone, and against plain
transformers: each run's trace in a batch must be its solo trace (same candidates, probabilities to 1e-5, the
same pruning), whoever it shares the forward with and whenever they join or leave."""

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from tiny import tiny_llama

from tempo_core import build_settings, generate, run
from tempo_core.engine import PREFILL_CHUNK
from tempo_core.forward import ForwardRequest, serve_alone
from tempo_core.runtime.kvstore import KVStore
from tempo_core.runtime.prefix import PrefixStore
from tempo_core.sequence import ParallelSequence
from tempo_core.serving.graphed import BatchGraphs
from tempo_core.serving.scheduler import Batcher
from tempo_core.serving.warmup import warm_batch_graphs, warm_prompt_head
from tempo_core.stop import RunStop

pytestmark = pytest.mark.floor  # also run on the oldest transformers allowed (make test-floor)

TOL = 1e-5
LONG = " ".join(["once upon a time there was a small robot who liked to read books"] * 12)


@pytest.fixture(scope="module")
def lm():
    return tiny_llama(seed=0)


@pytest.fixture(autouse=True)
def fresh_prefixes(lm):
    lm.runtime.prefixes = PrefixStore()  # each test starts with no prompt prefixes known (runtime/prefix.py)


@pytest.fixture(params=["own caches", "K/V store", "small K/V store", "fixed layout"])
def kv(lm, request):
    """Where batched runs keep their caches: each its own DynamicCache (the CPU default), slots of one K/V store
    (kvstore.py), or a store too small for some runs (3 slots of 40 rows: runs find no slot, or outgrow theirs
    mid-run and move out). "fixed layout": the store, and forwards laid out in fixed shapes as the GPU captures
    them (serving/graphed.py, the CUDA default), here run eagerly. Every slot is free again once the runs are done."""
    store = {"own caches": False,
             "K/V store": KVStore(lm.model.config, 16, 512, torch.float32, lm.device),
             "small K/V store": KVStore(lm.model.config, 3, 40, torch.float32, lm.device),
             "fixed layout": KVStore(lm.model.config, 6, 256, torch.float32, lm.device)}[request.param]
    lm.runtime.kv_store = store
    lm.runtime.batch_graphs = BatchGraphs(lm, store, capture=False) if request.param == "fixed layout" else None
    yield store
    lm.runtime.kv_store = lm.runtime.batch_graphs = None
    if store:
        assert store.free_slots == store.slots


def settings(**kw):
    return build_settings({"raw_prompt": True, **kw})


RUNS = [  # different prompt lengths, thresholds, pruning on and off, sibling visibility, modes and analyses
    dict(prompt="the cat sat", selection_threshold=0.05, max_tokens=12, use_retroactive_pruning=True,
         attention_threshold=0.02),
    dict(prompt="once upon a time there was a small robot who liked", selection_threshold=0.1, max_tokens=9),
    dict(prompt="hello", selection_threshold=1.0, max_tokens=10, use_retroactive_pruning=True),
    dict(prompt="the dog ran to the park and the cat", selection_threshold=0.02, max_tokens=15,
         allow_intraset_token_visibility=True, use_retroactive_pruning=True, attention_threshold=0.05,
         dynamic_threshold=True),
    dict(prompt=LONG, selection_threshold=0.03, max_tokens=8, faithfulness=True, faithfulness_paths=4),
    dict(prompt="the mat", selection_threshold=0.05, max_tokens=6, mode="mcts", mcts_simulations=3),
    dict(prompt="the park", max_tokens=6, mode="default"),
    dict(prompt="hello world", selection_threshold=0.05, max_tokens=6, mode="soft"),
    dict(prompt="the cat", selection_threshold=0.05, max_tokens=7, commitment=True),
    dict(prompt="a small robot read", selection_threshold=0.04, max_tokens=10, use_retroactive_pruning=True,
         attention_threshold=0.03, use_multi_scale_attention=True, num_layers_to_use=2),  # each layer's share kept
]


class Collect:
    """Traces of runs served by a Batcher, by name; each run's events checked to arrive in order."""

    def __init__(self):
        self.traces, self.errors, self.steps = {}, [], {}
        self.finished = threading.Semaphore(0)

    def on_event(self, name, then=None):
        def on(event, error):
            if error is not None:
                self.errors.append(error)
                self.finished.release()
                return
            if not event.progress:
                self.steps[name] = self.steps.get(name, 0) + 1
            if then is not None:
                then(event)
            if event.done:
                self.traces[name] = event.trace
                self.finished.release()
        return on

    def wait(self, n):
        for _ in range(n):
            assert self.finished.acquire(timeout=120)
        assert not self.errors, self.errors


def assert_same_run(solo, batched):
    assert batched.text == solo.text and batched.stop_reason == solo.stop_reason
    assert len(batched.steps) == len(solo.steps) > 0
    for a, b in zip(solo.steps, batched.steps):
        assert [c.token_id for c in a.candidates] == [c.token_id for c in b.candidates], a.step
        assert [c.pruned_at for c in a.candidates] == [c.pruned_at for c in b.candidates], a.step
        for x, y in zip(a.candidates, b.candidates):
            assert abs(x.prob - y.prob) <= TOL
            assert (x.attention is None) == (y.attention is None)  # the scores pruning read, too
            assert x.attention is None or abs(x.attention - y.attention) <= TOL
            assert x.attention_by_layer.keys() == y.attention_by_layer.keys()
            for step, layers in x.attention_by_layer.items():
                assert all(abs(v - y.attention_by_layer[step][layer]) <= TOL for layer, v in layers.items())
    if solo.faithfulness:
        assert abs(batched.faithfulness["mean_kl"] - solo.faithfulness["mean_kl"]) <= TOL
    assert (batched.commitment is None) == (solo.commitment is None)


def serve_together(lm, all_settings, max_rows=512):
    """Runs of `all_settings` added to one Batcher at once, served to their ends: (the batcher, their traces)."""
    with ThreadPoolExecutor(1) as pool:
        batcher, got = Batcher(pool, max_rows=max_rows), Collect()
        for i, s in enumerate(all_settings):
            batcher.add(lambda s=s: generate(lm, s, cooperative=True), got.on_event(i))
        got.wait(len(all_settings))
    return batcher, got


def test_runs_batched_in_one_forward_equal_their_solo_runs(lm, kv):
    all_settings = [settings(**kw) for kw in RUNS]
    solo = [run(lm, s) for s in all_settings]
    assert any(c.pruned_at is not None for st in solo[0].steps for c in st.candidates)  # pruning is exercised
    assert any(len(st.candidates) > 1 for st in solo[3].steps)
    batcher, got = serve_together(lm, all_settings)
    for i, trace in enumerate(solo):
        assert_same_run(trace, got.traces[i])
    # the TEMPO runs shared forwards: far fewer ticks than their steps together
    tempo_steps = sum(len(t.steps) for t, kw in zip(solo, RUNS) if kw.get("mode", "tempo") == "tempo")
    assert batcher.batched_forwards < tempo_steps / 2
    assert batcher.grouped_runs > tempo_steps / 2  # most turns attended in padded groups of runs
    if kv:  # groups wrote their new rows in the store with one write per layer
        assert kv.writes >= lm.model.config.num_hidden_layers
    if lm.runtime.batch_graphs:  # most ticks were laid out in fixed shapes, with runs of 1 and 2 rows in blocks of 2
        assert lm.runtime.batch_graphs.replays > tempo_steps / len(RUNS)
    fed = len(solo[4].prompt_token_ids) - got.traces[4].stats.get("prompt_rows_reused", 0)
    chunks = -(-fed // PREFILL_CHUNK)  # the long prompt went in chunks
    assert chunks > 1 and got.traces[4].stats["forward_passes"] == solo[4].stats["forward_passes"] + chunks - 1


def test_runs_joining_and_leaving_mid_way_and_a_small_row_budget(lm, kv):
    """Runs that join while others are mid-run, leave early (EOS, max_tokens), and a tick budget of 8 rows that
    leaves some runs out of a tick (they go first in the next): every trace still equals its solo run."""
    kws = [RUNS[0], RUNS[1], RUNS[3], dict(RUNS[2], max_tokens=3), dict(prompt=LONG, selection_threshold=0.1,
                                                                       max_tokens=5)]
    all_settings = [settings(**kw) for kw in kws]
    solo = [run(lm, s) for s in all_settings]
    with ThreadPoolExecutor(1) as pool:
        batcher, got = Batcher(pool, max_rows=8), Collect()

        def join_later(event):
            if event.index == 3 and not event.progress:  # run 0's fourth step: two more runs join
                for j in (3, 4):
                    batcher.add(lambda j=j: generate(lm, all_settings[j], cooperative=True), got.on_event(j))

        batcher.add(lambda: generate(lm, all_settings[0], cooperative=True), got.on_event(0, join_later))
        for j in (1, 2):
            batcher.add(lambda j=j: generate(lm, all_settings[j], cooperative=True), got.on_event(j))
        got.wait(len(all_settings))
    for i, trace in enumerate(solo):
        assert_same_run(trace, got.traces[i])


@pytest.mark.parametrize("chat", [False, True])
def test_a_batched_run_at_threshold_one_equals_hf_greedy(lm, chat, kv):
    s = settings(prompt="once upon a time", max_tokens=16, selection_threshold=1.0, raw_prompt=not chat,
                 use_retroactive_pruning=True)
    with ThreadPoolExecutor(1) as pool:
        batcher, got = Batcher(pool), Collect()
        batcher.add(lambda: generate(lm, s, cooperative=True), got.on_event("greedy"))
        for j, kw in enumerate(RUNS[:4]):  # company in the same forwards
            batcher.add(lambda kw=kw: generate(lm, settings(**kw), cooperative=True), got.on_event(j))
        got.wait(5)
    trace = got.traces["greedy"]
    ids = torch.tensor([trace.prompt_token_ids])
    out = lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False,
                            temperature=None, top_p=None, top_k=None)[0, ids.shape[1]:].tolist()
    ours = [st.candidates[0].token_id for st in trace.steps]
    assert all(len(st.candidates) == 1 for st in trace.steps)
    assert ours == out[:len(ours)] and len(ours) > 0
    assert len(ours) == 16 or out[len(ours)] in lm.eos_ids


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_chunked_prefill_equals_one_prefill(lm, chunk):
    s = settings(prompt=LONG)
    whole = ParallelSequence(lm, s, lm.tokenizer(LONG)["input_ids"])
    chunked = ParallelSequence(lm, s, lm.tokenizer(LONG)["input_ids"])
    expected = whole.prefill()
    requests = list(serve_alone_requests(chunked, chunk))
    assert len(requests) == -(-whole.layout.rows // chunk)
    assert (requests[-1].logits[-1] - expected).abs().max() <= TOL
    for layer in range(len(whole.cache.layers)):
        assert (whole.cache.layers[layer].keys - chunked.cache.layers[layer].keys).abs().max() <= TOL
        assert (whole.cache.layers[layer].values - chunked.cache.layers[layer].values).abs().max() <= TOL


def serve_alone_requests(seq, chunk):
    for req in seq.prefill_requests(chunk):
        seq.serve(req)
        yield req


def test_stop_between_prompt_chunks_ends_a_long_prompt(lm):
    """A long prompt is fed in chunks; a stop (or the time limit) between two ends the run there, no steps made."""
    stop = RunStop()
    s = settings(prompt=LONG, max_tokens=5)
    events = generate(lm, s, stop, cooperative=True)
    first = next(events)
    assert isinstance(first, ForwardRequest) and len(first.token_ids) == PREFILL_CHUNK
    first.seq.serve(first)
    stop.stop()
    rest = list(serve_alone(events))
    assert len(rest) == 1 and rest[0].done
    assert rest[0].trace.stop_reason == "stopped" and rest[0].trace.steps == []
    timed = RunStop(0.0)  # a time limit already past: the prompt's first chunk is the last
    events = list(serve_alone(generate(lm, s, timed, cooperative=True)))
    assert events[-1].trace.stop_reason == "time_limit" and events[-1].trace.steps == []


@pytest.mark.parametrize("early", [True, False])
def test_a_run_shows_its_first_step_the_tick_after_its_prompt_ends(lm, early):
    """The tick that feeds a prompt's last chunk also feeds the run's first set (a second forward): its first step
    arrives at the start of the next tick, also while other runs are mid-run, and every trace is its solo run's.
    With `early_first_sets` off the first set waits a tick more."""
    kws = [dict(prompt="the cat sat", selection_threshold=0.05, max_tokens=8, use_retroactive_pruning=True),
           dict(prompt=LONG, selection_threshold=0.05, max_tokens=4), dict(prompt="hello", max_tokens=4)]
    all_settings = [settings(**kw) for kw in kws]
    solo = [run(lm, s) for s in all_settings]
    first_at, joined_at = {}, {}
    with ThreadPoolExecutor(1) as pool:
        batcher, got = Batcher(pool, early_first_sets=early), Collect()

        def make(i):
            joined_at[i] = batcher.ticks  # made in the first tick it takes part in
            return generate(lm, all_settings[i], cooperative=True)

        def add(i):
            batcher.add(lambda: make(i), got.on_event(i, first_step(i)))

        def first_step(i):
            def seen(event):
                first_at.setdefault(i, batcher.ticks)
                if i == 0 and event.index == 2:  # run 0 mid-run: the others join
                    add(1), add(2)
            return seen
        add(0)
        got.wait(3)
    chunks = -(-len(solo[1].prompt_token_ids) // PREFILL_CHUNK)
    assert chunks > 1
    late = 0 if early else 1
    assert first_at == {0: joined_at[0] + 1 + late, 1: joined_at[1] + chunks + late, 2: joined_at[2] + 1 + late}
    for i, trace in enumerate(solo):
        assert_same_run(trace, got.traces[i])


def test_serving_alone_equals_the_plain_run(lm):
    for kw in RUNS[:4]:
        s = settings(**kw)
        events = list(serve_alone(generate(lm, s, cooperative=True)))
        assert_same_run(run(lm, s), events[-1].trace)


def test_a_paused_run_resumes_where_it_left(lm):
    """Step mode: a run leaves the batcher after each step (pause_after) and a later add resumes its iterator."""
    s = settings(**RUNS[3])
    solo = run(lm, s)
    events = generate(lm, s, cooperative=True)
    with ThreadPoolExecutor(1) as pool:
        batcher, seen = Batcher(pool), []
        for _ in range(len(solo.steps) + 1):
            pressed = threading.Event()
            batcher.add(lambda: events, lambda e, err: seen.append(err or e), pause_after=lambda e: not e.progress,
                        paused=pressed.set)
            for _ in range(3):  # another run's steps meanwhile
                batcher.add(lambda: generate(lm, settings(**RUNS[1]), cooperative=True), lambda e, err: None)
            assert pressed.wait(30) or seen[-1].done
            if seen[-1].done:
                break
    assert [e.index for e in seen[:-1]] == list(range(len(solo.steps)))
    assert_same_run(solo, seen[-1].trace)


def test_a_failing_run_leaves_and_the_others_go_on(lm):
    """A run whose events raise, or whose consumer raises on every call, ends with the error; the batcher and the
    other runs go on (one visitor's fault never stalls the class)."""
    def fails_at_once():
        raise ValueError("bad run")
        yield

    s = settings(**RUNS[0])
    with ThreadPoolExecutor(1) as pool:
        batcher, got = Batcher(pool), Collect()
        errors = []
        batcher.add(fails_at_once, lambda e, err: errors.append(err))

        def always_fails(event, error):
            errors.append(error)
            raise RuntimeError("a consumer that fails")
        batcher.add(lambda: generate(lm, settings(**RUNS[1]), cooperative=True), always_fails)
        batcher.add(lambda: generate(lm, s, cooperative=True), got.on_event("ok"))
        got.wait(1)
        assert wait_for(lambda: batcher.active == 0)
    assert isinstance(errors[0], ValueError)
    assert any(isinstance(e, RuntimeError) for e in errors[1:])
    assert_same_run(run(lm, s), got.traces["ok"])


def wait_for(cond, timeout=10.0):
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return False


def test_the_meter_works_in_pieces_and_gives_the_same_result(lm, monkeypatch):
    """The faithfulness meter yields between pieces of at most PIECE_ROWS path rows and one greedy token each, so a
    shared model thread serves other runs between them; the pieces give exactly the one-shot result, and the
    greedy reference is HF generate's."""
    from tempo_core.analysis import faithfulness
    trace = run(lm, settings(prompt="the cat sat", selection_threshold=0.02, max_tokens=8))
    whole = list(faithfulness.measure_iter(lm, trace, max_paths=16))
    result = trace.faithfulness
    monkeypatch.setattr(faithfulness, "PIECE_ROWS", 4)
    pieces = list(faithfulness.measure_iter(lm, trace, max_paths=16))
    assert len(pieces) > len(whole) + 8 and pieces == sorted(pieces) and pieces[-1] < 1
    for a, b in zip(result["steps"], trace.faithfulness["steps"]):
        assert abs(a["kl"] - b["kl"]) <= TOL and a["paths"] == b["paths"]
    assert abs(result["greedy_ppl"] - trace.faithfulness["greedy_ppl"]) <= TOL
    greedy = []
    list(faithfulness._greedy_ids(lm, trace.prompt_token_ids, 12, greedy))
    ids = torch.tensor([trace.prompt_token_ids])
    out = lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                            temperature=None, top_p=None, top_k=None)[0, ids.shape[1]:].tolist()
    assert greedy == out[:len(greedy)] and (len(greedy) == 12 or out[len(greedy)] in lm.eos_ids)


def test_a_cooperative_mcts_step_yields_between_simulations(lm, monkeypatch):
    from tempo_core import mcts
    s = settings(prompt="the cat", mode="mcts", mcts_simulations=6, max_tokens=4)
    solo = run(lm, s)
    monkeypatch.setattr(mcts, "PIECE_S", 0.0)
    events = list(generate(lm, s, cooperative=True))
    progress = [e for e in events if e.progress]
    assert len(progress) == 5 * len(solo.steps) and "of 6 simulations" in progress[0].progress
    assert [[c.token_id for c in st.candidates] for st in events[-1].trace.steps] == \
        [[c.token_id for c in st.candidates] for st in solo.steps]


def test_runs_reuse_a_prompt_prefix_another_run_fed(lm, kv):
    """A class types different questions after the same chat template: a run whose prompt starts like one fed
    before copies those rows and feeds the rest; its trace is still its solo run's."""
    questions = ["the cat sat on the mat", "the dog ran to the park", "hello world", "once upon a time"]
    all_settings = [settings(prompt=q, raw_prompt=False, enable_thinking=True, selection_threshold=0.05, max_tokens=8,
                             use_retroactive_pruning=True) for q in questions]
    solo = [run(lm, s) for s in all_settings]
    with ThreadPoolExecutor(1) as pool:
        batcher, got = Batcher(pool, max_rows=512), Collect()
        batcher.add(lambda: generate(lm, all_settings[0], cooperative=True), got.on_event(0))
        got.wait(1)  # the first prompt is in the store now
        for i, s in enumerate(all_settings[1:], 1):
            batcher.add(lambda s=s: generate(lm, s, cooperative=True), got.on_event(i))
        got.wait(len(all_settings) - 1)
    shared = len(os.path.commonprefix([t.prompt_token_ids for t in solo]))
    assert shared >= 8
    assert "prompt_rows_reused" not in got.traces[0].stats
    for i, trace in enumerate(solo):
        assert_same_run(trace, got.traces[i])
        if i:
            assert got.traces[i].stats["prompt_rows_reused"] >= shared
            assert got.traces[i].stats["tokens_processed"] < trace.stats["tokens_processed"]
    # the same prompt again: all but its last token come from the store
    events = list(serve_alone(generate(lm, all_settings[2], cooperative=True)))
    assert events[-1].trace.stats["prompt_rows_reused"] == len(solo[2].prompt_token_ids) - 1
    assert_same_run(solo[2], events[-1].trace)


def test_a_class_joining_together_copies_the_warmed_template_head(lm, kv):
    """Runs that join in the same tick cannot copy from each other; once the server has warmed the template's head
    (warm_prompt_head), every one of them copies it, and each trace is still its solo run's."""
    questions = ["the cat sat on the mat", "once upon a time", "hello world"]  # no two share a first word
    all_settings = [settings(prompt=q, raw_prompt=False, enable_thinking=True, selection_threshold=0.05, max_tokens=6,
                             use_retroactive_pruning=True) for q in questions]
    solo = [run(lm, s) for s in all_settings]
    head = warm_prompt_head(lm, all_settings[0])
    assert head == len(os.path.commonprefix([t.prompt_token_ids for t in solo])) >= 8
    assert warm_prompt_head(lm, settings(prompt="x")) == 0  # raw prompts share no head
    batcher, got = serve_together(lm, all_settings)
    for i, trace in enumerate(solo):
        assert_same_run(trace, got.traces[i])
        assert got.traces[i].stats["prompt_rows_reused"] == head


def test_alone_says_whether_a_starting_run_has_company(lm):
    """A run asks `alone` from inside its make (where it is counted): only the first of several is alone."""
    answers = []
    with ThreadPoolExecutor(1) as pool:
        batcher, got = Batcher(pool), Collect()

        def make(i):
            answers.append((i, batcher.alone))
            return generate(lm, settings(**RUNS[1]), cooperative=True)
        batcher.add(lambda: make(0), got.on_event(0))
        got.wait(1)
        pool.submit(lambda: None).result()  # the batcher has let the finished run go
        for i in (1, 2):
            batcher.add(lambda i=i: make(i), got.on_event(i))
        got.wait(2)
    assert answers == [(0, True), (1, False), (2, False)]


def test_warming_the_batch_forwards_makes_a_class_shapes_and_leaves_the_store_free(lm):
    """`warm_batch_graphs` (the server's start on a GPU) serves short batched runs of each size to their ends, so
    the shapes a class's ticks use exist before it comes; here, with the fixed layout run eagerly, the shapes are
    made and every store slot is free after. Without batch graphs (a CPU) it does nothing."""
    assert warm_batch_graphs(lm, settings(prompt="warm-up")) == 0
    store = KVStore(lm.model.config, 4, 256, torch.float32, lm.device)
    lm.runtime.kv_store, lm.runtime.batch_graphs = store, BatchGraphs(lm, store, capture=False)
    try:
        made = warm_batch_graphs(lm, settings(prompt="warm-up", use_retroactive_pruning=True), runs=(2, 4, 8),
                                 sizes=(1, 2))
        sets = {(shape.runs, shape.rows) for shape in lm.runtime.batch_graphs.graphs if shape.layers}  # pruning records
        assert made == len(lm.runtime.batch_graphs.graphs) and {(2, 1), (2, 2), (4, 1), (4, 2)} <= sets
        assert not any(shape.runs > 4 for shape in lm.runtime.batch_graphs.graphs)  # 8 runs do not fit 4 slots: skipped
        assert store.free_slots == store.slots
    finally:
        lm.runtime.kv_store = lm.runtime.batch_graphs = None


def test_a_runs_clock_counts_its_rows_share_of_a_forward_not_the_other_runs_work(lm, monkeypatch):
    """Time a run waits behind others' work does not count against its limit: beside a long prompt fed in
    128-row chunks, a short run's clock advances by its own rows' share of each forward, exactly as if it had
    been alone. A fake clock advances 1 ms per row fed, and nowhere else."""
    import tempo_core.serving.scheduler as batch
    now = [0.0]
    real_forward = batch.forward_batch

    def timed_forward(group):
        rows = sum(len(req.token_ids) for req in group)
        out = real_forward(group)
        now[0] += rows * 1e-3
        return out
    monkeypatch.setattr(batch, "forward_batch", timed_forward)
    monkeypatch.setattr(batch.time, "monotonic", lambda: now[0])

    def own_seconds(beside_long_prompt: bool) -> float:
        """The short run's elapsed clock minus the time it was told it waited."""
        batcher, waited, done = Batcher(None), [], []
        short = build_settings({"prompt": "the cat", "max_tokens": 6, "raw_prompt": True})
        started = now[0]
        batcher.add(lambda: generate(lm, short, cooperative=True),
                    lambda event, error: done.append(event) if event is not None and event.done else None,
                    waited.append)
        if beside_long_prompt:
            long_s = build_settings({"prompt": LONG, "max_tokens": 6, "raw_prompt": True})
            batcher.add(lambda: generate(lm, long_s, cooperative=True), lambda event, error: None)
        while not done:
            batcher.tick()
        return (now[0] - started) - sum(waited), sum(waited)
    alone, _ = own_seconds(False)
    beside, waited_beside = own_seconds(True)
    assert waited_beside > 0.1  # the long prompt's chunks: hundreds of rows at 1 ms
    assert beside == pytest.approx(alone, abs=0.02)
