"""Sessions: no client string becomes a path, downloads come from bounded memory, a Stop reaches its own run."""

from __future__ import annotations

import re
import time
import types

import httpx
import pytest
from page_client import PageClient
from tiny import tiny_llama

from components.server.sessions import StopFlags, TraceStore, session_key
from tempo_core import Trace
from tempo_core.stop import RunStop


@pytest.fixture(scope="module")
def lm():
    return tiny_llama(seed=3)


def test_path_like_session_ids_write_nothing_and_downloads_are_served(lm, tmp_path, live_server):
    target = tmp_path / "escape"
    hostile = ["../../../../../../.." + str(target / "rel"), str(target / "abs"), "..", "/"]
    url, fastapi_app = live_server(lm)
    for session in hostile:
        browser = PageClient(url, fastapi_app, session)
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
    assert len(fastapi_app.state.shared.store) == len(hostile)  # one entry per session, in memory
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
