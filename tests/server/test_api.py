"""The JSON API: /health, /api/generate (the engine's trace), errors that name the field, the docs."""

from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from tiny import tiny_llama

import app as tempo_app
from tempo_core import Trace, build_settings, run
from tempo_core.runtime.kvstore import KVStore
from tempo_core.runtime.sizes import kv_cache_bytes


@pytest.fixture(scope="module")
def lm():
    return tiny_llama(seed=3)


@pytest.fixture(scope="module")
def client(lm):
    return TestClient(tempo_app.build_app(lm, concurrency=2))


def test_health_names_the_model_its_device_and_version(client):
    r = client.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["model_loaded"] is True and body["model"] == "tiny-llama-3" and body["device"] == "cpu"
    assert body["version"]
    assert "kv_store_bytes" not in body  # the K/V store of batched runs is off on a CPU by default (runtime/kvstore.py)


def test_health_reports_the_kv_store_and_its_free_slots(lm, client):
    store = KVStore(lm.model.config, 4, 64, lm.dtype, lm.device)
    lm.runtime.kv_store = store
    try:
        body = client.get("/health").json()
        assert (body["kv_store_slots"], body["kv_store_slots_free"]) == (4, 4)
        assert body["kv_store_bytes"] == store.nbytes == kv_cache_bytes(lm.model.config, (4 + 1) * 64, 4)  # + scratch
        cache = store.cache()
        assert client.get("/health").json()["kv_store_slots_free"] == 3
        cache.close()
        assert client.get("/health").json()["kv_store_slots_free"] == 4
    finally:
        lm.runtime.kv_store = None


def test_health_counts_the_captured_batch_forwards(lm, client):
    """The batch forwards of fixed shapes (serving/graphed.py, captured on CUDA, eager here) are counted: bounded
    memory."""
    import threading

    from tempo_core import generate
    from tempo_core.serving.graphed import BatchGraphs
    from tempo_core.serving.scheduler import Batcher
    store = KVStore(lm.model.config, 4, 256, lm.dtype, lm.device)
    lm.runtime.kv_store, lm.runtime.batch_graphs = store, BatchGraphs(lm, store, capture=False)
    try:
        assert client.get("/health").json()["batch_graphs"] == 0
        done = threading.Semaphore(0)
        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher(pool)
            for prompt in ("the cat", "a dog ran"):
                s = build_settings({"prompt": prompt, "max_tokens": 4, "raw_prompt": True})
                batcher.add(lambda s=s: generate(lm, s, cooperative=True),
                            lambda event, error: done.release() if error or event.done else None)
            assert done.acquire(timeout=60) and done.acquire(timeout=60)
        shapes = len(lm.runtime.batch_graphs.graphs)
        assert shapes >= 1 and lm.runtime.batch_graphs.replays >= 3  # two runs' sets shared one laid-out forward a tick
        assert client.get("/health").json()["batch_graphs"] == shapes
    finally:
        lm.runtime.kv_store = lm.runtime.batch_graphs = None


@pytest.mark.parametrize("path", ["/api/generate", "/api/v2/generate"])
def test_api_generate_answers_with_the_engines_trace(client, lm, path):
    body = {"prompt": "the cat", "max_tokens": 6, "selection_threshold": 0.05, "use_retroactive_pruning": True}
    r = client.post(path, json=body)
    assert r.status_code == 200, r.text
    trace = Trace.from_dict(r.json())
    direct = run(lm, build_settings(body))
    assert [[c.token_id for c in st.candidates] for st in trace.steps] == \
           [[c.token_id for c in st.candidates] for st in direct.steps]
    assert trace.settings["use_retroactive_pruning"] is True


@pytest.mark.parametrize("body,field", [
    ({"prompt": "x", "selection_threshold": 1.5}, "selection_threshold"),
    ({"prompt": "x", "selection_threshold": "high"}, "selection_threshold"),
    ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "x", "max_tokens": 100000}, "max_tokens"),
    ({"prompt": "x", "max_parallel_tokens": 64}, "max_parallel_tokens"),  # above this server's cap of 16
    ({"prompt": ""}, "prompt"),
    ({"prompt": "   "}, "prompt"),
    ({"selection_threshold": 0.1}, "prompt"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": "x", "temperature": 0}, "temperature"),
    ({"prompt": "x", "complete_pruning_mode": "nuke"}, "complete_pruning_mode"),
    ({"prompt": "x", "use_mcts": True, "default_mode": True}, "use_mcts"),
    ({"prompt": "x", "unknown_knob": 1}, "unknown_knob"),
    ([1, 2, 3], "body"),
    ("just a string", "body"),
])
def test_malformed_bodies_are_422_naming_the_field(client, body, field):
    r = client.post("/api/generate", json=body)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"][0]
    assert detail["loc"] == (["body"] if field == "body" else ["body", field]) and field in detail["msg"]


def test_invalid_json_and_nan_are_422(client):
    r = client.post("/api/generate", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422
    r = client.post("/api/generate", content=b'{"prompt": "x", "selection_threshold": NaN}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 422 and "selection_threshold" in r.text


def test_the_api_documents_itself_at_docs(client):
    assert client.get("/docs").status_code == 200
    assert "/api/generate" in client.get("/openapi.json").json()["paths"]


def test_concurrent_runs_do_not_interfere(client, lm):
    bodies = [{"prompt": "the cat sat", "max_tokens": 8, "selection_threshold": 0.05, "seed": 1},
              {"prompt": "hello world", "max_tokens": 8, "selection_threshold": 0.02, "use_retroactive_pruning": True,
               "attention_threshold": 0.1}]
    alone = [client.post("/api/generate", json=b).json() for b in bodies]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda b: client.post("/api/generate", json=b).json(), bodies * 3))
    for i, t in enumerate(together):
        ref = alone[i % 2]
        assert t["text"] == ref["text"] and t["clean_text"] == ref["clean_text"]
