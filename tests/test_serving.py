"""A shared, public server: what a stranger can and cannot make it do (issue: serve safely on a Space).

Most tests drive a real uvicorn server on loopback, the way a browser or a script would."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import sys
import threading
import time
import types
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

import app as tempo_app
import tempo_core.attention as attention
from components.figures.report import report_html
from components.figures.inspect import read_trace_file
from components.server.sessions import StopFlags, TraceStore, session_key
from tempo_core import Trace, build_settings, run
from tempo_core.limits import Limits, RunStop, check_budget, estimate_cost
from tiny import tiny_llama

LONG_MCTS = {"prompt": "the cat", "use_mcts": True, "mcts_simulations": 500, "mcts_depth": 4, "max_tokens": 200}
ROOMY = Limits(mcts_simulations=1000, max_forward_passes=10**7, max_tokens_fed=10**8, max_seconds=600)


@pytest.fixture(scope="module")
def lm():
    return tiny_llama(seed=3)


@contextlib.contextmanager
def serve(lm, **kwargs):
    """A real server on a free loopback port; yields (base url, FastAPI app)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    fastapi_app = tempo_app.build_app(lm, **kwargs)
    srv = uvicorn.Server(uvicorn.Config(fastapi_app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", fastapi_app
    finally:
        fastapi_app.state.explorer.stops.forget_all()
        srv.should_exit = True
        thread.join(timeout=30)


class Browser:
    """Calls the page's events the way its frontend does (queue/join + SSE), under a session hash we choose."""

    def __init__(self, url: str, fastapi_app, session: str):
        self.url, self.session = url, session
        self.demo = fastapi_app.state.demo
        self.fns = {getattr(f.fn, "__name__", None): (i, f) for i, f in self.demo.fns.items()}

    def form(self, **settings) -> list:
        """run_stream's inputs in order: the form's defaults with `settings` changed."""
        _, fn = self.fns["run_stream"]
        named = len(fn.input_keyword_names)
        values = {name: comp.value for name, comp in zip(fn.input_keyword_names, fn.inputs[-named:])}
        states = [None] * (len(fn.inputs) - named)  # session state (history): the server keeps its own
        return states + [settings.get(name, v) for name, v in values.items()]

    def call(self, name: str, data: list, timeout: float = 120, seen: list | None = None) -> dict:
        """The event's output; `seen` collects every message the queue sent (progress included)."""
        index, fn = self.fns[name]
        if not fn.queue:
            r = httpx.post(self.url + "/gradio_api/run/predict",
                           json={"data": data, "fn_index": index, "session_hash": self.session}, timeout=timeout)
            r.raise_for_status()
            return r.json()
        r = httpx.post(self.url + "/gradio_api/queue/join", json={"data": data, "fn_index": index,
                                                                  "session_hash": self.session, "event_data": None,
                                                                  "trigger_id": None}, timeout=timeout)
        r.raise_for_status()
        with httpx.stream("GET", self.url + "/gradio_api/queue/data", params={"session_hash": self.session},
                          timeout=timeout) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    msg = json.loads(line[5:])
                    if seen is not None:
                        seen.append(msg)
                    if msg.get("msg") == "process_completed":
                        assert msg["success"], msg
                        return msg["output"]
        raise AssertionError("no result")


def test_baselines_and_sweep_show_a_progress_bar_saying_what_is_computed(lm):
    with serve(lm) as (url, fastapi_app):
        browser = Browser(url, fastapi_app, "progress")
        form = browser.form(prompt="the cat", max_tokens=60)[1:]  # run_sweep takes the thresholds, then the form
        for name, data in (("run_sweep", ["0.05, 0.1, 0.2", *form]), ("run_baselines", form)):
            seen: list = []
            out = browser.call(name, data, seen=seen)
            assert not any("Error" in str(v) for v in out["data"]), out["data"]
            bars = [p for m in seen if m.get("msg") == "progress" for p in m.get("progress_data") or []]
            assert bars, (name, [m.get("msg") for m in seen])
            assert all(p["desc"] and " of " in p["desc"] for p in bars), bars


def wait_until(cond, timeout: float = 30.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


# --- 1. no client string becomes a path; downloads come from memory ------------------------------------------

def test_path_like_session_ids_write_nothing_and_downloads_are_served(lm, tmp_path):
    target = tmp_path / "escape"
    hostile = ["../../../../../../.." + str(target / "rel"), str(target / "abs"), "..", "/"]
    with serve(lm) as (url, fastapi_app):
        for session in hostile:
            browser = Browser(url, fastapi_app, session)
            out = browser.call("run_stream", browser.form(prompt="the cat", max_tokens=4))
            assert out["data"][4].startswith("Done"), out["data"][4]
            links = browser.call("after_run", [None])["data"][2]
            paths = re.findall(r'href="(download/[0-9a-f]{32}/tempo-(?:trace\.json|report\.html))"', links)
            assert len(paths) == 2, links
            trace = Trace.from_dict(httpx.get(f"{url}/{paths[0]}").json())
            assert len(trace.steps) == 4 and trace.prompt == "the cat"
            report = httpx.get(f"{url}/{paths[1]}")
            assert report.status_code == 200 and "attachment" in report.headers["content-disposition"]
            assert "<h1>TEMPO run</h1>" in report.text
        assert not target.exists()
        assert len(fastapi_app.state.explorer.store) == len(hostile)  # one entry per session, in memory
        # ids are the server's: anything else is a 404, never a file lookup
        for bad in ("../../etc/passwd", "0" * 32, "%2e%2e%2fetc"):
            assert httpx.get(f"{url}/download/{bad}/tempo-trace.json").status_code == 404


def test_session_key_is_a_digest_not_the_clients_string():
    keys = {session_key(types.SimpleNamespace(session_hash=h)) for h in ("../x", "/etc", "a", None)}
    assert len(keys) == 4 and all(re.fullmatch(r"[0-9a-f]{32}", k) for k in keys)


def test_trace_store_is_bounded_in_count_age_and_per_session():
    store = TraceStore(max_items=3, max_age_s=3600)
    ids = [store.put(f"s{i}", "{}") for i in range(5)]
    assert len(store) == 3 and store.get(ids[0]) is None and store.get(ids[4]) == b"{}"
    newer = store.put("s4", '{"x": 1}')  # a session keeps only its latest run
    assert store.get(ids[4]) is None and store.get(newer) == b'{"x": 1}'
    store.forget("s4")
    assert store.get(newer) is None
    old = TraceStore(max_items=10, max_age_s=0.0)
    run_id = old.put("s", "{}")
    time.sleep(0.01)
    assert old.get(run_id) is None


# --- 2. every request has a budget: checked before, enforced during -------------------------------------------

def test_too_big_requests_are_refused_before_running_naming_the_setting(lm):
    limits = Limits(max_tokens_fed=50_000)
    client = TestClient(tempo_app.build_app(lm, limits=limits))
    explorer = client.app.state.explorer
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
                r = pool.submit(client.post, "/api/generate", json=body).result(timeout=30)
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


def test_closing_the_connection_stops_an_api_run(lm):
    with serve(lm, limits=ROOMY) as (url, fastapi_app):
        slots = fastapi_app.state.explorer.slots
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url + "/api/generate", json=LONG_MCTS, timeout=1.5)  # ~minutes of work, then we hang up
        assert wait_until(lambda: slots.active == 0, 20), "the run went on after its client left"
        # and the model is free for the next request
        assert httpx.post(url + "/api/generate", json={"prompt": "the cat", "max_tokens": 3}).status_code == 200


# --- 3. memory: no prompt x prompt attention -----------------------------------------------------------------

@pytest.mark.parametrize("extra", [{}, {"disable_kv_cache": True}])
def test_a_long_prompt_with_pruning_records_attention_of_the_newest_rows_only(lm, monkeypatch, extra):
    shapes = []
    real = attention._explicit_probs

    def spy(query, key, mask, groups, scaling):
        probs = real(query, key, mask, groups, scaling)
        shapes.append(tuple(probs.shape[-2:]))
        return probs
    monkeypatch.setattr(attention, "_explicit_probs", spy)
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


# --- 4. waiting costs no thread: /health answers under load -----------------------------------------------------

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


def test_health_answers_while_dozens_of_api_requests_wait(lm):
    with serve(lm, concurrency=1, limits=ROOMY) as (url, fastapi_app):
        slots = fastapi_app.state.explorer.slots
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


def test_too_many_waiting_requests_get_a_503(lm):
    with serve(lm, concurrency=1, limits=Limits(**{**ROOMY.__dict__, "max_waiting": 2})) as (url, fastapi_app):
        slots = fastapi_app.state.explorer.slots
        with ThreadPoolExecutor(3) as pool:
            _occupy(pool, url, slots, 2, 6.0, 4.0)
            r = httpx.post(url + "/api/generate", json={"prompt": "the dog", "max_tokens": 4}, timeout=10)
            assert r.status_code == 503 and "retry later" in r.json()["detail"] and r.headers["retry-after"]
            assert wait_until(lambda: slots.active == 0 and slots.waiting == 0, 30)


def test_research_jobs_have_their_own_queue_and_slots(lm):
    """A sweep holding the research slot does not hold up generation."""
    with serve(lm) as (url, fastapi_app):
        group = {f.api_name: f.concurrency_id for f in fastapi_app.state.demo.fns.values()}
        assert group["generate"] != group["sweep"] and group["sweep"] == group["baselines"]
        explorer = fastapi_app.state.explorer
        from gradio_client import Client
        client = Client(url + "/", verbose=False)
        with explorer.research_slots.hold():
            job = client.submit("0.1", prompt="the cat", max_tokens=4, api_name="/sweep")
            assert client.predict(prompt="the cat", max_tokens=4, api_name="/generate")[4].startswith("Done")
            assert not job.done()  # the sweep still waits for its slot
        assert "| 0.1 |" in job.result(timeout=60)[2]


# --- 5. uploads are validated; the report escapes every trace string --------------------------------------------

EVIL = "</script><script>alert('x')</script><img src=x onerror=alert(1)>"


def test_the_report_escapes_every_trace_string(lm):
    trace = run(lm, build_settings({"prompt": EVIL, "max_tokens": 3}))
    trace.mode, trace.stop_reason, trace.model = EVIL, EVIL, EVIL
    trace.steps[0].candidates[0].text = EVIL
    page = report_html(trace)
    assert "<script>alert" not in page and "<img src=x" not in page
    assert "&lt;/script&gt;" in page


def _good(lm) -> dict:
    return run(lm, build_settings({"prompt": "the cat", "max_tokens": 4, "selection_threshold": 0.05,
                                   "use_retroactive_pruning": True})).to_dict()


def _set(data: dict, path: str, value) -> dict:
    data = json.loads(json.dumps(data))
    *head, last = path.split(".")
    node = data
    for part in head:
        node = node[int(part)] if part.isdigit() else node[part]
    node[int(last) if last.isdigit() else last] = value
    return data


@pytest.mark.parametrize("path,value,message", [
    ("steps.0.candidates.0.prob", "high", "steps[0].candidates[0].prob: must be a finite number"),
    ("steps.0.candidates.0.prob", float("nan"), "steps[0].candidates[0].prob: must be a finite number"),
    ("steps.0.candidates.0.prob", 7, "steps[0].candidates[0].prob: must be in [0, 1]"),
    ("steps.0.candidates.0.token_id", -3, "steps[0].candidates[0].token_id: must be an integer in [0, 2147483647]"),
    ("steps.0.candidates.0.token_id", 1e30, "steps[0].candidates[0].token_id: must be an integer in [0, 2147483647]"),
    ("steps.0.candidates.0.token_id", 2**70, "steps[0].candidates[0].token_id: must be an integer in [0, 2147483647]"),
    ("steps.0.candidates.0.text", "a\ud800", "steps[0].candidates[0].text: must be valid Unicode text; character 1"),
    ("steps.0.alternatives.0.text", "\udfff", "steps[0].alternatives[0].text: must be valid Unicode text"),
    ("steps.0.candidates.0.text", ["a"], "steps[0].candidates[0].text: must be a string"),
    ("steps.0.candidates.0.evil", 1, "steps[0].candidates[0]: unknown field 'evil'"),
    ("steps.0.candidates", [], "steps[0].candidates: must be a list of 1 to 16 candidates"),
    ("steps.1.step", 7, "steps[1].step: must be 1"),
    ("steps.0.candidates.0.attention_by_step", [1], "steps[0].candidates[0].attention_by_step: must be an object"),
    ("steps.0.candidates.0.attention_by_step", {"x": 1}, "attention_by_step: keys must be step numbers, got 'x'"),
    ("steps.0.candidates.0.attention_by_step", 5, "steps[0].candidates[0].attention_by_step: must be an object"),
    ("steps.0.candidates.0.attention_by_layer", {"1": 7}, "attention_by_layer[1]: must be an object, got 7"),
    ("timings", 5, "timings: must be an object, got 5"),
    ("settings", [1, 2], "settings: must be an object of settings"),
    ("settings", {"selection_threshold": 5}, "settings.selection_threshold: must be a number in [0, 1]"),
    ("mode", "<script>", "mode: must be one of tempo, default, mcts"),
    ("steps", "many", "steps: must be a list"),
    ("schema_version", 99, "schema_version: this build reads 1"),
    ("timings.total_ms", {"deep": [[[]]]}, "timings.total_ms: must be a finite number"),
])
def test_uploaded_traces_are_checked_field_by_field(lm, tmp_path, path, value, message):
    f = tmp_path / "t.json"
    f.write_text(json.dumps(_set(_good(lm), path, value)))
    with pytest.raises(ValueError) as exc:
        read_trace_file(str(f), 200, 16)
    assert str(exc.value) == "not a TEMPO trace: " + message or message in str(exc.value), str(exc.value)
    assert str(exc.value).count("not a TEMPO trace") == 1


def test_uploads_that_are_not_json_too_deep_too_long_or_too_big_are_refused_clearly(lm, tmp_path):
    f = tmp_path / "t.json"
    f.write_text(json.dumps(_good(lm)))
    assert len(read_trace_file(str(f), 200, 16).steps) == 4
    cases = [("{oops", "not JSON"), ("[" * 100_000 + "]" * 100_000, "nested too deeply"), ("[1]", "trace: must be an object")]
    for body, needle in cases:
        f.write_text(body)
        with pytest.raises(ValueError, match=re.escape(needle)):
            read_trace_file(str(f), 200, 16)
    data = _good(lm)
    data["steps"] = [dict(data["steps"][0], step=i) for i in range(1000)]
    f.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"steps: this server shows at most 200 steps, the trace has 1000"):
        read_trace_file(str(f), 200, 16)
    f.write_bytes(b" " * 2_000_001)
    with pytest.raises(ValueError, match="this server reads traces up to 2 MB"):
        read_trace_file(str(f), 200, 16, max_bytes=2_000_000)


def test_a_bad_upload_is_a_message_in_the_page(lm, tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))  # where Gradio keeps what it received
    explorer = tempo_app.Explorer(lm, Limits())
    f = tmp_path / "t.json"
    f.write_text(json.dumps(_set(_good(lm), "steps.0.candidates.0.prob", "x")))
    out = explorer.load_trace([], str(f))
    assert out[4].startswith("**Error:** not a TEMPO trace: steps[0].candidates[0].prob")


# --- 7. the small ones -----------------------------------------------------------------------------------------

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


def test_a_prompt_past_the_context_is_refused_naming_the_context_before_any_run(lm):
    client = TestClient(tempo_app.build_app(lm))
    r = client.post("/api/generate", json={"prompt": "7 " * 600})
    assert r.status_code == 422 and "the model's context is 512 tokens" in r.json()["detail"][0]["msg"]
    explorer = tempo_app.Explorer(lm, Limits())
    frames = list(explorer.run_stream(types.SimpleNamespace(session_hash="long"), [], prompt="7 " * 600))
    assert frames[-1][4].startswith("**Error:** prompt: is ") and "context is 512 tokens" in frames[-1][4]
    out = explorer.step(types.SimpleNamespace(session_hash="long-step"), False, prompt="7 " * 600)
    assert out[4].startswith("**Error:** prompt: is ") and "max_tokens <= 1" not in out[4]


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


def test_a_stop_pressed_while_the_run_is_queued_is_kept_for_that_run():
    flags = StopFlags()
    flags.arm("s")
    assert flags.stop("s")  # queued: remembered
    assert flags.start("s").is_set()
    flags.stop("s")  # nothing running or queued now: ignored ...
    flags.finish("s", RunStop())
    flags.arm("s")  # ... and a new Generate starts clean
    running = flags.start("s")
    assert not running.is_set()
    assert flags.stop("s") and running.is_set() and running.reason == "stopped"


def test_stop_while_queued_through_the_page(lm):
    with serve(lm, concurrency=1, limits=ROOMY) as (url, fastapi_app):
        slots = fastapi_app.state.explorer.slots
        with ThreadPoolExecutor(2) as pool:
            pool.submit(_post_and_hang_up, url, LONG_MCTS, 4.0)  # holds the model, then hangs up
            assert wait_until(lambda: slots.active == 1)
            browser = Browser(url, fastapi_app, "student-7")
            browser.call("arm", [])
            result = pool.submit(browser.call, "run_stream", browser.form(prompt="the cat", max_tokens=50))
            assert wait_until(lambda: slots.waiting == 1)
            browser.call("stop", [])  # pressed while the run waits for the model
            status = result.result(timeout=60)["data"][4]
            assert status == "no steps (stopped)", status


def test_stop_from_a_client_that_never_pressed_generate_reaches_its_run_waiting_in_the_queue(lm):
    """gradio_client calls /generate then /stop, with no page Generate to arm the stop: the run still waits in
    Gradio's queue (the model group is full) and must start stopped."""
    with serve(lm, concurrency=1, limits=ROOMY) as (url, fastapi_app):
        explorer = fastapi_app.state.explorer
        with ThreadPoolExecutor(2) as pool:
            holder = Browser(url, fastapi_app, "holder")
            held = pool.submit(holder.call, "run_stream", holder.form(prompt="the cat", mode="MCTS",
                                                                      mcts_simulations=500, max_tokens=200))
            assert wait_until(lambda: explorer.slots.active == 1)
            client = Browser(url, fastapi_app, "api-client")
            result = pool.submit(client.call, "run_stream", client.form(prompt="the dog", max_tokens=50))
            assert wait_until(lambda: explorer.waiting_runs("api-client") == 1)  # in Gradio's queue, not started
            client.call("stop", [])
            holder.call("stop", [])
            assert held.result(timeout=60)["data"][4].startswith("Done (stopped)")
            status = result.result(timeout=60)["data"][4]
            assert status == "no steps (stopped)", status


# --- deployment ------------------------------------------------------------------------------------------------

def test_zerogpu_runs_model_work_under_the_spaces_decorator(lm, monkeypatch):
    seen = {}

    def gpu(duration):
        def wrap(fn):
            def wrapped(*args):
                seen["duration"] = duration(*args)
                return fn(*args)
            return wrapped
        return wrap
    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=gpu))
    explorer = tempo_app.Explorer(lm, Limits(max_seconds=30))
    frames = list(explorer.decode(build_settings({"prompt": "the cat", "max_tokens": 3}), RunStop()))
    assert seen["duration"] == 40 and frames[-1][1] is True
    assert isinstance(frames[-1][0], Trace)  # plain data leaves the GPU function, no tensors


def test_requirements_hold_only_what_the_app_needs_at_run_time():
    from pathlib import Path
    root = Path(tempo_app.__file__).parent
    runtime = {line.split("=")[0].split(">")[0].split("<")[0].strip().lower()
               for line in (root / "requirements.txt").read_text().splitlines() if line and not line.startswith("#")}
    assert not runtime & {"pytest", "playwright", "httpx", "gradio_client"}
    dev = (root / "requirements-dev.txt").read_text()
    assert "-r requirements.txt" in dev and "pytest" in dev and "playwright" in dev
    assert "torch==2.13.0" in (root / "requirements.txt").read_text()


def test_no_route_parses_a_huge_body(lm):
    client = TestClient(tempo_app.build_app(lm))
    big = b'{"data": ["' + b"a" * 1_000_000 + b'"], "fn_index": 0, "session_hash": "x"}'
    r = client.post("/gradio_api/queue/join", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "request body over" in r.json()["detail"]
    r = client.post("/gradio_api/queue/join", content=iter([b"a" * 100_000] * 10))  # chunked, no length
    assert r.status_code == 413


def test_the_servers_knobs_come_from_the_environment(lm, monkeypatch):
    env = {"TEMPO_APP_MAX_TOKENS": "50", "TEMPO_APP_MAX_SECONDS": "7.5", "TEMPO_API_MAX_WAITING": "3",
           "TEMPO_QUEUE_SIZE": "9", "TEMPO_MAX_SESSIONS": "11", "TEMPO_VIEW_CONCURRENCY": "3",
           "TEMPO_RESEARCH_CONCURRENCY": "2", "TEMPO_CONCURRENCY": "2"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    fastapi_app = tempo_app.build_app(lm)
    explorer, demo = fastapi_app.state.explorer, fastapi_app.state.demo
    assert explorer.limits.max_tokens == 50 and explorer.limits.max_seconds == 7.5
    assert explorer.limits.max_waiting == 3 and explorer.slots.limit == 2 and explorer.research_slots.limit == 2
    assert explorer.view_concurrency == 3 and demo._queue.max_size == 9 and demo.state_session_capacity == 11
    r = TestClient(fastapi_app).post("/api/generate", json={"prompt": "x", "max_tokens": 60})
    assert "[1, 50] on this server" in r.json()["detail"][0]["msg"]
    monkeypatch.setenv("TEMPO_APP_MAX_SECONDS", "soon")
    with pytest.raises(ValueError, match="TEMPO_APP_MAX_SECONDS: must be a positive number, got 'soon'"):
        Limits.from_env()


def test_the_faithfulness_phase_reports_progress_before_the_last_event(lm):
    from tempo_core import generate
    s = build_settings({"prompt": "the cat", "max_tokens": 4, "selection_threshold": 0.05, "faithfulness": True})
    events = list(generate(lm, s))
    progress = [e.progress for e in events if e.progress]
    assert progress and progress[0] == "measuring faithfulness 0%" and all("%" in p for p in progress)
    assert events[-1].done and events[-1].progress is None and events[-1].trace.faithfulness is not None
    assert sum(1 for e in events if not e.progress and not e.done) == 4  # one event per step, as before
