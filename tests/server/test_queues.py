"""Queues: /health answers while the model is busy, waiting is bounded, research jobs queue apart, Stop reaches a
queued run, long work reports progress."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from page_client import PageClient, wait_until
from tiny import tiny_llama

from tempo_core import build_settings
from tempo_core.serving.limits import Limits

LONG_MCTS = {"prompt": "the cat", "use_mcts": True, "mcts_simulations": 500, "mcts_depth": 4, "max_tokens": 200}


ROOMY = Limits(mcts_simulations=1000, max_forward_passes=10**7, max_tokens_fed=10**8, max_seconds=600)


@pytest.fixture(scope="module")
def lm():
    return tiny_llama(seed=3)


def _post_and_hang_up(url: str, body: dict, after_s: float) -> None:
    try:
        httpx.post(url + "/api/generate", json=body, timeout=after_s)
    except httpx.TimeoutException:
        pass


def _occupy(pool: ThreadPoolExecutor, url: str, slots, waiting: int, long_s: float, short_s: float) -> None:
    """One long API run holds the model (hanging up after `long_s`); `waiting` short ones queue behind it
    (hanging up after `short_s`)."""
    pool.submit(_post_and_hang_up, url, LONG_MCTS, long_s)
    assert wait_until(lambda: slots.active == 1)
    for _ in range(waiting):
        pool.submit(_post_and_hang_up, url, {"prompt": "the dog", "max_tokens": 4}, short_s)
    assert wait_until(lambda: slots.waiting == waiting), slots.waiting


def test_baselines_and_sweep_show_a_progress_bar_saying_what_is_computed(lm, live_server):
    url, fastapi_app = live_server(lm)
    browser = PageClient(url, fastapi_app, "progress")
    form = browser.form(prompt="the cat", max_tokens=60)  # run_sweep takes the thresholds, then the form
    for name, data in (("run_sweep", ["0.05, 0.1, 0.2", *form]), ("run_baselines", form)):
        seen: list = []
        out = browser.call(name, data, seen=seen)
        assert not any("Error" in str(v) for v in out["data"]), out["data"]
        bars = [p for m in seen if m.get("msg") == "progress" for p in m.get("progress_data") or []]
        assert bars, (name, [m.get("msg") for m in seen])
        assert all(p["desc"] and " of " in p["desc"] for p in bars), bars


def test_health_answers_while_dozens_of_api_requests_wait(lm, live_server):
    url, fastapi_app = live_server(lm, concurrency=1, limits=Limits(**{**ROOMY.__dict__, "max_per_address": 64}))
    slots = fastapi_app.state.shared.slots
    with ThreadPoolExecutor(31) as pool:
        _occupy(pool, url, slots, 30, 12.0, 8.0)
        for _ in range(5):
            t0 = time.perf_counter()
            health = httpx.get(url + "/health", timeout=5).json()
            assert time.perf_counter() - t0 < 1.0
            assert health["runs_active"] == 1 and health["runs_waiting"] == 30
        assert httpx.get(url + "/config", timeout=5).status_code == 200  # the page answers too
        # clients that hang up leave the queue, and the long run stops: nothing is left behind
        assert wait_until(lambda: slots.active == 0 and slots.waiting == 0, 40), (slots.active, slots.waiting)


def test_one_address_may_have_only_its_share_of_api_requests_waiting_or_running(lm, live_server):
    url, fastapi_app = live_server(lm, concurrency=1, limits=Limits(**{**ROOMY.__dict__, "max_per_address": 3}))
    slots = fastapi_app.state.shared.slots
    with ThreadPoolExecutor(3) as pool:
        _occupy(pool, url, slots, 2, 6.0, 4.0)  # one running, two waiting: the address's three
        r = httpx.post(url + "/api/generate", json={"prompt": "the dog", "max_tokens": 4}, timeout=10)
        assert r.status_code == 429 and "at most 3, TEMPO_API_PER_ADDRESS" in r.json()["detail"]
        other = httpx.post(url + "/api/generate", json={"prompt": "", "max_tokens": 4}, timeout=10,
                           headers={"X-Forwarded-For": "192.0.2.9"})
        assert other.status_code == 422  # another address is served (here: told its prompt is empty)


def test_too_many_waiting_requests_get_a_503(lm, live_server):
    url, fastapi_app = live_server(lm, concurrency=1, limits=Limits(**{**ROOMY.__dict__, "max_waiting": 2}))
    slots = fastapi_app.state.shared.slots
    with ThreadPoolExecutor(3) as pool:
        _occupy(pool, url, slots, 2, 6.0, 4.0)
        r = httpx.post(url + "/api/generate", json={"prompt": "the dog", "max_tokens": 4}, timeout=10)
        assert r.status_code == 503 and "retry later" in r.json()["detail"] and r.headers["retry-after"]
        assert wait_until(lambda: slots.active == 0 and slots.waiting == 0, 30)


def test_research_jobs_have_their_own_queue_and_slots(lm, live_server):
    """A sweep holding the research slot does not hold up generation."""
    url, fastapi_app = live_server(lm)
    group = {f.api_name: f.concurrency_id for f in fastapi_app.state.demo.fns.values()}
    assert group["generate"] != group["sweep"] and group["sweep"] == group["baselines"]
    explorer = fastapi_app.state.shared
    from gradio_client import Client
    client = Client(url + "/", verbose=False)
    with explorer.research_slots.hold():
        job = client.submit("0.1", prompt="the cat", max_tokens=4, api_name="/sweep")
        assert client.predict(prompt="the cat", max_tokens=4, api_name="/generate")[4].startswith("Done")
        assert not job.done()  # the sweep still waits for its slot
    assert "| 0.1 |" in job.result(timeout=600)[2]


def test_stop_while_queued_through_the_page(lm, live_server):
    url, fastapi_app = live_server(lm, concurrency=1, limits=ROOMY)
    slots = fastapi_app.state.shared.slots
    with ThreadPoolExecutor(2) as pool:
        pool.submit(_post_and_hang_up, url, LONG_MCTS, 4.0)  # holds the model, then hangs up
        assert wait_until(lambda: slots.active == 1)
        browser = PageClient(url, fastapi_app, "student-7")
        browser.call("arm", [])
        result = pool.submit(browser.call, "run_stream", browser.form(prompt="the cat", max_tokens=50))
        assert wait_until(lambda: slots.waiting == 1)
        browser.call("stop", [])  # pressed while the run waits for the model
        status = result.result(timeout=600)["data"][4]
        assert status == "no steps (stopped)", status


def test_stop_from_a_client_that_never_pressed_generate_reaches_its_run_waiting_in_the_queue(lm, live_server):
    """gradio_client calls /generate then /stop, with no page Generate to arm the stop: the run still waits in
    Gradio's queue (the model group is full) and must start stopped."""
    url, fastapi_app = live_server(lm, concurrency=1, limits=ROOMY)
    explorer = fastapi_app.state.shared
    with ThreadPoolExecutor(2) as pool:
        holder = PageClient(url, fastapi_app, "holder")
        held = pool.submit(holder.call, "run_stream", holder.form(prompt="the cat", mode="MCTS",
                                                                  mcts_simulations=500, max_tokens=200))
        assert wait_until(lambda: explorer.slots.active == 1)
        client = PageClient(url, fastapi_app, "api-client")
        result = pool.submit(client.call, "run_stream", client.form(prompt="the dog", max_tokens=50))
        assert wait_until(lambda: explorer.waiting_runs("api-client") == 1)  # in Gradio's queue, not started
        client.call("stop", [])
        holder.call("stop", [])
        held_status = held.result(timeout=600)["data"][4]  # with or without a first step: the machine's speed decides
        assert held_status.startswith(("Done (stopped)", "no steps (stopped)")), held_status
        status = result.result(timeout=600)["data"][4]
        assert status == "no steps (stopped)", status


def test_the_faithfulness_phase_reports_progress_before_the_last_event(lm):
    from tempo_core import generate
    s = build_settings({"prompt": "the cat", "max_tokens": 4, "selection_threshold": 0.05, "faithfulness": True})
    events = list(generate(lm, s))
    progress = [e.progress for e in events if e.progress]
    assert progress and progress[0] == "measuring faithfulness 0%" and all("%" in p for p in progress)
    assert events[-1].done and events[-1].progress is None and events[-1].trace.faithfulness is not None
    assert sum(1 for e in events if not e.progress and not e.done) == 4  # one event per step, as before


def test_stop_reaches_the_sessions_research_job(lm, live_server):
    """A long sweep on the research thread ends at Stop (its runs stop, the rest are skipped) and /health counts it
    while it runs; another session's Stop does not touch it."""
    url, fastapi_app = live_server(lm, limits=Limits(**{**ROOMY.__dict__, "max_tokens": 480}))
    shared = fastapi_app.state.shared
    researcher, other = PageClient(url, fastapi_app, "researcher"), PageClient(url, fastapi_app, "other")
    form = researcher.form(prompt="the cat", max_tokens=480, min_steps=480,
                           selection_threshold=0.02, faithfulness=True, faithfulness_paths=32)
    with ThreadPoolExecutor(1) as pool:
        t0 = time.perf_counter()
        job = pool.submit(researcher.call, "run_sweep", ["0, 0.01, 0.02, 0.05, 0.1", *form], 300)
        assert wait_until(lambda: httpx.get(url + "/health").json()["research_active"] == 1, 30), job.result()
        time.sleep(1.0)
        other.call("stop", [])
        assert not job.done()
        researcher.call("stop", [])
        out = job.result(timeout=600)
    assert time.perf_counter() - t0 < 30
    table = out["data"][2]
    assert "stopped" in table, table
    assert shared.research_slots.active == 0
