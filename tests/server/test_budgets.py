"""Every request has a bounded, checked cost: refused before running when too big, ended by the time limit or a
closed connection, and a bad body gets a message that names the field."""

from __future__ import annotations

import json
import types
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fastapi.testclient import TestClient
from page_client import wait_until
from tiny import tiny_llama

import app as tempo_app
import tempo_core.runtime.attention as attention
from tempo_core import build_settings, run
from tempo_core.serving.limits import Limits, check_budget, estimate_cost
from tempo_core.stop import RunStop

LONG_MCTS = {"prompt": "the cat", "use_mcts": True, "mcts_simulations": 500, "mcts_depth": 4, "max_tokens": 200}


ROOMY = Limits(mcts_simulations=1000, max_forward_passes=10**7, max_tokens_fed=10**8, max_seconds=600)


@pytest.fixture(scope="module")
def lm():
    return tiny_llama(seed=3)


def test_too_big_requests_are_refused_before_running_naming_the_setting(lm):
    limits = Limits(max_tokens_fed=50_000)
    client = TestClient(tempo_app.build_app(lm, limits=limits))
    explorer = client.app.state.shared
    cases = [({"prompt": "x", "use_mcts": True, "mcts_simulations": 50, "max_tokens": 200}, "mcts_simulations",
              "forward passes"),
             ({"prompt": "x", "faithfulness": True, "faithfulness_paths": 32, "selection_threshold": 0,
               "max_tokens": 200}, "faithfulness_paths", "tokens"),
             ({"prompt": "the cat " * 100, "raw_prompt": True, "disable_kv_cache": True,
               "use_retroactive_pruning": True, "max_tokens": 200}, "disable_kv_cache", "tokens"),
             ({"prompt": "x", "use_mcts": True, "mcts_simulations": 51}, "mcts_simulations", "[1, 50] on this server"),
             ({"prompt": "x", "faithfulness_paths": 33}, "faithfulness_paths", "[1, 32] on this server")]
    with explorer.slots.hold():  # the model is busy: a request that ran (or waited) would hang here
        with ThreadPoolExecutor(1) as pool:
            for body, field, words in cases:
                r = pool.submit(client.post, "/api/generate", json=body).result(timeout=600)
                assert r.status_code == 422, r.text
                detail = r.json()["detail"][0]
                assert detail["loc"] == ["body", field] and words in detail["msg"], detail
    assert "this server allows" in client.post("/api/generate", json=cases[0][0]).json()["detail"][0]["msg"]


def test_cost_estimate_bounds_what_a_run_does(lm):
    """The estimate is an upper bound of the forward passes and tokens a run really makes."""
    for body in ({"prompt": "the cat", "max_tokens": 12, "selection_threshold": 0.02},
                 {"prompt": "the cat", "max_tokens": 8, "use_mcts": True, "mcts_simulations": 5},
                 {"prompt": "the cat", "max_tokens": 8, "disable_kv_cache": True, "selection_threshold": 0.05},
                 {"prompt": "the cat", "max_tokens": 8, "default_mode": True}):
        s = build_settings(body)
        trace = run(lm, s)
        cost = estimate_cost(s, len(trace.prompt_token_ids))
        assert trace.stats["forward_passes"] <= cost.forward_passes
        assert trace.stats["tokens_processed"] <= cost.tokens_fed
        check_budget(s, len(trace.prompt_token_ids), Limits())


@pytest.mark.parametrize("mode", [{}, {"use_mcts": True, "mcts_simulations": 3}, {"default_mode": True}])
def test_a_deadline_ends_every_mode_with_time_limit_keeping_what_was_made(lm, mode):
    s = build_settings({"prompt": "the cat", "max_tokens": 50, **mode})
    assert run(lm, s, RunStop(0.0)).stop_reason == "time_limit"
    stop = RunStop()
    stop.stop()
    assert run(lm, s, stop).stop_reason == "stopped"


def test_a_long_api_run_is_ended_by_the_time_limit(lm):
    client = TestClient(tempo_app.build_app(lm, limits=Limits(**{**ROOMY.__dict__, "max_seconds": 1.0})))
    r = client.post("/api/generate", json=LONG_MCTS)
    assert r.status_code == 200, r.text
    trace = r.json()
    assert trace["stop_reason"] == "time_limit" and 0 < len(trace["steps"]) < 200


def test_closing_the_connection_stops_an_api_run(lm, live_server):
    url, fastapi_app = live_server(lm, limits=ROOMY)
    slots = fastapi_app.state.shared.slots
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url + "/api/generate", json=LONG_MCTS, timeout=1.5)  # ~minutes of work, then we hang up
    assert wait_until(lambda: slots.active == 0, 20), "the run went on after its client left"
    # and the model is free for the next request
    assert httpx.post(url + "/api/generate", json={"prompt": "the cat", "max_tokens": 3}).status_code == 200


@pytest.mark.parametrize("extra", [{}, {"disable_kv_cache": True}])
def test_a_long_prompt_with_pruning_records_attention_of_the_newest_rows_only(lm, monkeypatch, extra):
    shapes = []
    real = attention.explicit_probs

    def spy(query, key, mask, groups, scaling):
        probs = real(query, key, mask, groups, scaling)
        shapes.append(tuple(probs.shape[-2:]))
        return probs
    monkeypatch.setattr(attention, "explicit_probs", spy)
    s = build_settings({"prompt": "the cat sat on the mat " * 50, "raw_prompt": True, "max_tokens": 6,
                        "selection_threshold": 0.02, "max_parallel_tokens": 8, "use_retroactive_pruning": True,
                        **extra})
    trace = run(lm, s)
    prompt_len = len(trace.prompt_token_ids)
    assert prompt_len > 250 and shapes
    assert max(q for q, _ in shapes) <= s.max_parallel_tokens + 1  # (+1: the CPU pads 3-row steps to 4)
    assert max(kv for _, kv in shapes) > prompt_len  # the rows later tokens pay attention to are all there
    # and the prefill did not record at all: every recorded query is a candidate row
    assert all(q < prompt_len for q, _ in shapes)


@pytest.mark.parametrize("body,status,loc,message", [
    (b'{"prompt": null}', 422, ["body", "prompt"], "prompt: must be a string, got null"),
    (b'{"prompt": "\\ud800"}', 422, ["body", "prompt"], "prompt: must be valid Unicode text; character 0 is a lone"),
    (b'{"prompt": "x", "max_tokens": 500}', 422, ["body", "max_tokens"],
     "max_tokens: must be an integer in [1, 200] on this server, got 500"),
    (b'{"prompt": "x", "seed": -1}', 422, ["body", "seed"], "seed: must be an integer in [0, 4294967295], got -1"),
    (b'{"prompt": "x",}', 422, ["body"], "body: is not valid JSON: Expecting property name enclosed in double quotes"),
    (b"\xff\xfe{}", 422, ["body"], "body: is not UTF-8"),
    (b"", 422, ["body"], "body: is empty"),
    (b"[" * 50_000, 422, ["body"], "body: is nested too deeply"),
    (b'{"prompt": "' + b"a" * 300_000 + b'"}', 413, ["body"], "body: is 300,014 bytes; this server accepts at most"),
    (b'{"prompt": "x", "max_tokens": ' + b"7" * 5000 + b'}', 422, ["body", "max_tokens"],
     "max_tokens: must be an integer in [1, 200] on this server, got inf"),
    (b'{"prompt": "x", "mode": "mcts", "temperature": 1e-300}', 422, ["body", "temperature"],
     "temperature: must be a number in [0.01, 10], got 1e-300"),
    # the tiny model's context is 512 positions; each "7 " is a token or more
    (b'{"prompt": "' + b"7 " * 600 + b'"}', 422, ["body", "prompt"], "prompt: is "),
    (b'{"prompt": "' + b"7 " * 200 + b'", "max_tokens": 200}', 422, ["body", "max_tokens"], "max_tokens: prompt ("),
])
def test_bad_bodies_get_a_message_naming_the_field(lm, body, status, loc, message):
    client = TestClient(tempo_app.build_app(lm))
    r = client.post("/api/generate", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    detail = r.json()["detail"][0]
    assert detail["loc"] == loc and detail["msg"].startswith(message), detail


def test_a_prompt_past_the_context_is_refused_naming_the_context_before_any_run(lm, built_page):
    client = TestClient(tempo_app.build_app(lm))
    r = client.post("/api/generate", json={"prompt": "7 " * 600})
    assert r.status_code == 422 and "the model's context is 512 tokens" in r.json()["detail"][0]["msg"]
    site = built_page(lm)
    status = site.page.view.status
    frames = list(site.explore.run_stream(types.SimpleNamespace(session_hash="long"), prompt="7 " * 600))
    assert frames[-1][status].startswith("**Error:** prompt: is ") and "context is 512 tokens" in frames[-1][status]
    out = site.explore.step_mode.step(types.SimpleNamespace(session_hash="long-step"), False, prompt="7 " * 600)
    assert out[status].startswith("**Error:** prompt: is ") and "max_tokens <= 1" not in out[status]


def test_a_run_that_ends_at_step_0_answers_with_strict_json():
    """A faithfulness run whose first token is EOS has no text, so no perplexity: null, never NaN (a 500)."""
    lm = tiny_llama(seed=3)
    first = run(lm, build_settings({"prompt": "the cat", "max_tokens": 1})).steps[0].candidates[0].token_id
    lm.model.generation_config.eos_token_id = [lm.tokenizer.eos_token_id, first]
    client = TestClient(tempo_app.build_app(lm))
    r = client.post("/api/generate", json={"prompt": "the cat", "max_tokens": 5, "faithfulness": True})
    assert r.status_code == 200, r.text
    data = json.loads(r.text)  # strict: json.loads would also read NaN, so check the text itself
    assert "NaN" not in r.text and data["stop_reason"] == "eos" and data["steps"] == []
    assert data["faithfulness"]["clean_ppl"] is None


def test_no_route_parses_a_huge_body(lm):
    client = TestClient(tempo_app.build_app(lm))
    big = b'{"data": ["' + b"a" * 1_000_000 + b'"], "fn_index": 0, "session_hash": "x"}'
    r = client.post("/gradio_api/queue/join", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "request body over" in r.json()["detail"]
    r = client.post("/gradio_api/queue/join", content=iter([b"a" * 100_000] * 10))  # chunked, no length
    assert r.status_code == 413
