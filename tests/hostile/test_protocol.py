"""The server as a stranger meets it: a real `python app.py` on the embedded model, driven with plain HTTP.

Nothing here calls a handler. Files are named in raw `queue/join` bodies (Gradio's FileData shape), events are
joined under fresh session hashes whose streams are never opened, slow and lying clients are raw sockets. Run
with `make test-hostile` (CI runs it after `make test`); every wait is for a condition, never a fixed time.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from hostile.wire import Server, completed, file_data, fresh_session, shown_text, wait_until

pytestmark = pytest.mark.hostile

UNREADABLE = "not a TEMPO trace: the upload could not be read"
FIGURES = Path(__file__).resolve().parents[1] / "artifacts" / "hostile-figures.json"  # README "Security" quotes them


def record(name: str, value: object) -> None:
    """Keep a measured figure (tests/artifacts/hostile-figures.json, one key per measurement)."""
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    figures = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    figures[name] = value
    FIGURES.write_text(json.dumps(figures, indent=1, sort_keys=True))
READ_TIMEOUT_S = 3
GRACE_S = 2


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Server:
    """Limits a test cannot reach by being slow (10 minutes a run); short read deadline and stream grace."""
    tmp = tmp_path_factory.mktemp("hostile")
    srv = Server({"GRADIO_TEMP_DIR": str(tmp / "gradio"), "TEMPO_READ_TIMEOUT_S": str(READ_TIMEOUT_S),
                  "TEMPO_STREAM_GRACE_S": str(GRACE_S), "TEMPO_APP_MAX_SECONDS": "600"}, tmp / "server.log")
    srv.upload_dir = tmp / "gradio"
    yield srv
    srv.stop()


def files_under(folder: Path) -> set[str]:
    return {str(p) for p in folder.rglob("*") if p.is_file()} if folder.exists() else set()


def a_trace(server: Server, prompt: str = "Hi") -> bytes:
    r = httpx.post(server.url + "/api/generate", json={"prompt": prompt, "max_tokens": 2}, timeout=300)
    assert r.status_code == 200, r.text
    return r.content


# --- files ---------------------------------------------------------------------------------------------------------
def test_no_file_but_this_sessions_own_upload_is_read_hashed_or_copied(server):
    home = os.path.expanduser("~")
    mine = server.upload(a_trace(server), "mine.json")
    theirs = server.upload(a_trace(server, "Hello there"), "theirs.json")
    owner = fresh_session()
    r, messages = server.call("load_trace", [file_data(theirs)], owner)  # the uploading session may read it
    assert r.status_code == 200 and "Loaded trace" in shown_text(messages)
    elsewhere = server.upload_dir.parent / "trace-outside.json"
    elsewhere.write_bytes(a_trace(server))  # a valid trace on the server, outside the upload folder
    named = ["/etc/passwd", "/proc/self/environ", str(Path(__file__).resolve().parents[2] / "app.py"), "app.py",
             ".", home, "/no/such/file.json", str(elsewhere), "/dev/zero",
             str(server.upload_dir / ".." / "trace-outside.json"), str(server.upload_dir), "https://example.com/t.json",
             theirs]  # another session's upload, by its exact path
    before = files_under(server.upload_dir)
    session = fresh_session()
    answers = set()
    for path in named:
        for api_name, data in [("load_trace", [file_data(path)]), ("load_trace", [{"path": path}]),
                               ("add_upload", [None, file_data(path)])]:
            r = server.join(api_name, data, session)
            answers.add((r.status_code, r.json()["detail"]))
        r = httpx.post(server.url + "/gradio_api/call/load_trace", json={"data": [file_data(path)]}, timeout=30)
        answers.add((r.status_code, r.json()["detail"]))
    assert answers == {(422, UNREADABLE)}  # one message for every refused path: no oracle, no working directory
    record("refused file requests", {"paths": len(named), "requests": 4 * len(named), "answers": len(answers)})
    assert files_under(server.upload_dir) == before  # nothing was copied into Gradio's cache
    r, messages = server.call("load_trace", [file_data(mine)], session)  # the session's own upload still loads
    assert r.status_code == 200 and "Loaded trace: 2 steps" in shown_text(messages)
    assert server.healthy()


def test_an_upload_claimed_by_one_session_is_refused_to_the_next(server):
    path = server.upload(a_trace(server, "claim"), "claim.json")
    first, second = fresh_session(), fresh_session()
    assert server.call("add_upload", [None, file_data(path)], first)[0].status_code == 200
    r = server.join("add_upload", [None, file_data(path)], second)
    assert (r.status_code, r.json()["detail"]) == (422, UNREADABLE)


# --- a frozen server -----------------------------------------------------------------------------------------------
def slow_socket(port: int, kind: str) -> tuple[str, float]:
    """A lying or slow client; returns (the first line the server answered, or '' if it only closed; seconds until
    the server closed the connection)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    t0 = time.monotonic()
    head = b"POST /gradio_api/queue/join HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    got = b""
    try:
        if kind == "short body":  # Content-Length larger than the body it sends
            sock.sendall(head + b"Content-Length: 100000\r\n\r\n{\"data\": [")
        elif kind == "endless chunk":
            sock.sendall(head + b"Transfer-Encoding: chunked\r\n\r\nFFFFFFFF\r\n" + b"x" * 100)
        elif kind == "silent":
            pass
        sock.settimeout(0.5)
        drip = {"header drip": head, "body drip": head + b"Content-Length: 100000\r\n\r\n" + b"x" * 1000}.get(kind)
        i = 0
        while time.monotonic() - t0 < 60:
            if drip is not None:
                try:
                    sock.sendall(drip[i % len(drip):i % len(drip) + 1])
                    i += 1
                except OSError:
                    break
            try:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                got += chunk
            except socket.timeout:
                continue
            except OSError:
                break
    finally:
        sock.close()
    return got.split(b"\r\n", 1)[0].decode("latin-1"), time.monotonic() - t0


def health_latencies(server: Server, until: threading.Event) -> list[float]:
    seen = []
    while not until.is_set():
        t0 = time.monotonic()
        ok = server.healthy(timeout=10)
        seen.append(time.monotonic() - t0 if ok else 99.0)
        time.sleep(0.1)
    return seen


def test_health_answers_within_a_second_while_dev_zero_sixty_slow_sockets_and_a_flood_are_in_flight(server):
    kinds = ["short body", "endless chunk", "header drip", "body drip", "silent"] * 12
    flood_sessions = [fresh_session() for _ in range(40)]
    long_run = server.inputs("generate", **{"Prompt": "Write a long story about the sea.", "Max tokens": 200})
    done = threading.Event()
    cpu0 = server.cpu_s()
    with ThreadPoolExecutor(len(kinds) + 4) as pool:
        health = pool.submit(health_latencies, server, done)
        sockets = [pool.submit(slow_socket, server.port, kind) for kind in kinds]
        zero = [server.join("load_trace", [file_data("/dev/zero")], fresh_session()) for _ in range(5)]
        flood = [server.join("generate", long_run, s) for s in flood_sessions]  # never listened to
        results = [f.result(timeout=120) for f in sockets]
        # every flooded event is dropped unheard: nothing waits or runs, and the model goes back to idle
        assert wait_until(lambda: (h := server.healthy()) and h["runs_active"] == 0 and h["runs_waiting"] == 0
                          and h["queue"]["waiting"] == 0 and h["queue"]["running"] == 0, timeout=60)
        done.set()
        latencies = health.result()
    assert all(r.status_code == 422 and r.json()["detail"] == UNREADABLE for r in zero)
    assert sum(r.status_code == 200 for r in flood) == 40
    record("health under attack", {"answers": len(latencies), "max_s": round(max(latencies), 3),
                                   "slow sockets closed after at most s": round(max(t for _, t in results), 2)})
    assert max(latencies) < 1.0, sorted(latencies)[-5:]
    for kind, (first_line, seconds) in zip(kinds, results):
        assert seconds < READ_TIMEOUT_S + 5, (kind, seconds)  # closed by the server's deadline, not by the client
        assert first_line == "HTTP/1.1 408 Request Timeout", (kind, first_line)
    assert server.healthy()["queue"]["dropped_unheard"] >= 40
    assert server.cpu_s() - cpu0 < 30  # 40 long runs never ran (each would take minutes of CPU)
    log = Path(server.log.name).read_text()
    assert "Traceback" not in log and "ClientDisconnect" not in log, log[-3000:]


def test_one_session_or_address_cannot_hold_more_than_its_share_of_the_queue(tmp_path):
    """A server whose unheard events wait a minute before they are dropped, so that they stay counted."""
    srv = Server({"GRADIO_TEMP_DIR": str(tmp_path / "gradio"), "TEMPO_STREAM_GRACE_S": "600",
                  "TEMPO_SESSION_GROUP_EVENTS": "2"}, tmp_path / "log")
    try:
        long_run = srv.inputs("generate", **{"Prompt": "Count to one thousand.", "Max tokens": 200})
        session = fresh_session()
        answers = [srv.join("generate", long_run, session) for _ in range(3)]
        assert [r.status_code for r in answers] == [200, 200, 429]  # two model events a session at once
        assert "at most 2" in answers[-1].json()["detail"]
        stop = httpx.post(srv.url + "/gradio_api/run/predict", json={"data": [], "fn_index": srv.fn("stop")["id"],
                                                                    "session_hash": session}, timeout=30)
        assert stop.status_code == 200  # Stop always gets through, however full the session's share
        address = {"X-Forwarded-For": "192.0.2.77"}  # one client address (through uvicorn's proxy header)
        codes = [srv.join("generate", long_run, fresh_session(), address).status_code for _ in range(50)]
        assert codes.count(200) == 48 and codes[48:] == [429, 429]
        other = srv.join("generate", long_run, fresh_session(), {"X-Forwarded-For": "192.0.2.78"})
        assert other.status_code == 200  # another address still gets in
        health = srv.healthy()
        assert health["queue"]["waiting"] == 51 and health["queue"]["running"] == 0  # unheard: none ran
        assert health["runs_active"] == 0
    finally:
        srv.stop()


# --- the class beside hostile clients ------------------------------------------------------------------------------
def student(server: Server, n: int) -> dict:
    address = {"X-Forwarded-For": f"192.0.2.{n + 1}"}
    data = server.inputs("generate", **{"Prompt": f"Name {n + 2} colours.", "Max tokens": 16})
    r, messages = server.call("generate", data, timeout=900, headers=address)
    end = completed(messages)
    return {"join": r.status_code, "ok": bool(end and end.get("success")),
            "status": next((s for s in shown_text([end]).splitlines() if s.startswith(("Done", "no steps"))), "")
            if end else ""}


def api_hog(server: Server, until: threading.Event) -> int:
    """Maximal-cost /api/generate bodies, each abandoned after 3 s."""
    sent = 0
    body = {"prompt": "Explain everything. " * 300, "max_tokens": 200, "max_parallel_tokens": 16,
            "selection_threshold": 0.001}
    while not until.is_set():
        try:
            httpx.post(server.url + "/api/generate", json=body, timeout=3)
        except httpx.HTTPError:
            pass
        sent += 1
    return sent


def test_a_class_of_ten_finishes_beside_a_flood_and_an_api_hog_with_memory_under_5_gb(server):
    long_run = server.inputs("generate", **{"Prompt": "Write a long story.", "Max tokens": 200})
    stop = threading.Event()
    peak, most_runs = [server.rss_bytes()], [0]

    def watch_memory() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], server.rss_bytes())
            most_runs[0] = max(most_runs[0], (server.healthy(timeout=10) or {}).get("runs_active", 0))
            time.sleep(0.2)
    with ThreadPoolExecutor(16) as pool:
        pool.submit(watch_memory)
        hogs = [pool.submit(api_hog, server, stop) for _ in range(2)]
        for _ in range(40):  # a stranger's flood under fresh session hashes, never listened to
            server.join("generate", long_run, fresh_session())
        students = [pool.submit(student, server, n) for n in range(10)]
        results = [f.result(timeout=1200) for f in students]
        stop.set()
        [h.result() for h in hogs]
    finished = [r for r in results if r["ok"] and r["status"].startswith("Done")]
    record("class beside hostile clients", {"finished": len(finished), "of": len(results),
                                            "peak_rss_gb": round(peak[0] / 2**30, 2), "most_runs_active": most_runs[0]})
    assert len(finished) >= 9, results
    assert all("time limit" not in r["status"] for r in results), results
    assert peak[0] < 5 * 2**30, peak[0]
    # the students and the hogs' address share (TEMPO_API_PER_ADDRESS: a hung-up run overlaps its successor for
    # up to a step): the flood never ran (on the previous main it filled all 32 model slots)
    assert most_runs[0] <= 10 + 4, most_runs[0]
    assert wait_until(lambda: server.healthy()["runs_active"] == 0, timeout=60)


# --- every long job, every ending: the server's CPU back to idle ----------------------------------------------------
LIMIT_S = 4.0
LONG = {"Prompt": "Write a very long story about the sea, the wind and the ships.", "Max tokens": 200,
        "Selection threshold": 0.02, "Min steps before EOS": 200}
JOBS = {  # api name, and the page's inputs by label (each job runs far longer than the limit when nothing stops it)
    "tempo": ("generate", LONG),
    "mcts": ("generate", {**LONG, "Mode": "MCTS", "Max tokens": 30, "Min steps before EOS": 30, "MCTS simulations": 50,
                          "MCTS depth": 8}),
    "soft": ("generate", {**LONG, "Mode": "Soft Thinking"}),
    "faithfulness": ("generate", {**LONG, "Max tokens": 20, "Min steps before EOS": 20,
                                  "Measure faithfulness after the run (Research tab)": True,
                                  "Explicit paths per step (most probable)": 32}),
    "commitment": ("generate", {**LONG, "Max tokens": 60, "Min steps before EOS": 60, "Commitment strip (logit lens): "
                                "where each step settles, layer by layer (under the tree)": True}),
    "baselines": ("baselines", LONG),
    "sweep": ("sweep", {"Selection thresholds (up to 6)": "0.01, 0.02, 0.05, 0.1, 0.2, 0.3", **LONG}),
    "study": ("study", {"Prompts for a small study here (the first of the bundled set)": 5}),
    "play": ("play", {**LONG, "Play speed (steps a second)": 5}),
}
ENDINGS = ["time limit", "stop", "closed tab", "client gone"]


@pytest.fixture(scope="module")
def timed_server(tmp_path_factory) -> Server:
    tmp = tmp_path_factory.mktemp("timed")
    srv = Server({"GRADIO_TEMP_DIR": str(tmp / "gradio"), "TEMPO_APP_MAX_SECONDS": str(LIMIT_S)}, tmp / "server.log")
    yield srv
    srv.stop()


class RawStream:
    """A GET whose response is read to the end in a thread (as the page reads its event stream), on a socket this
    test closes for real when the client "leaves" (httpx only closes once its reader next wakes)."""

    def __init__(self, port: int, target: str):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=300)
        self.sock.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        self.received = b""
        self.lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            with self.lock:
                self.received = (self.received + chunk)[-100_000:]

    def has(self, text: str, timeout: float) -> bool:
        return bool(wait_until(lambda: text.encode() in self.received, timeout))

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def busy(server: Server, window_s: float = 0.5) -> float:
    """The server's CPU use (cores) over the next `window_s` seconds."""
    before, t0 = server.cpu_s(), time.monotonic()
    time.sleep(window_s)
    return (server.cpu_s() - before) / (time.monotonic() - t0)


def idle_after(server: Server, since: float, timeout: float, window_s: float = 0.5) -> float | None:
    """Seconds from `since` (time.monotonic) to the start of the first `window_s` window in which the server used
    under 0.15 of a core (its event loop and the queue's polling use a few percent), or None within `timeout`."""
    while time.monotonic() - since < timeout:
        start = time.monotonic()
        if busy(server, window_s) < 0.15:
            return start - since
    return None


@pytest.mark.parametrize("ending", ENDINGS)
@pytest.mark.parametrize("job", list(JOBS))
def test_every_long_job_leaves_the_cpu_idle_within_its_limit_plus_2_s_however_it_ends(timed_server, job, ending):
    server, (api_name, by_label) = timed_server, JOBS[job]
    assert idle_after(server, time.monotonic(), 60) is not None  # the previous case left it idle
    session = fresh_session()
    heartbeat = RawStream(server.port, f"/gradio_api/heartbeat/{session}")  # the page's "tab is open"
    assert server.join(api_name, server.inputs(api_name, **by_label), session).status_code == 200
    stream = RawStream(server.port, f"/gradio_api/queue/data?session_hash={session}")
    assert stream.has("process_starts", timeout=60)
    started = time.monotonic()
    assert wait_until(lambda: busy(server) > 0.25, timeout=30), "the job never got busy"
    if ending == "time limit":
        since, allowed = started, LIMIT_S + 2
    else:
        since, allowed = time.monotonic(), 2.0
        if ending == "stop":
            r = httpx.post(server.url + "/gradio_api/run/stop", json={"data": [], "session_hash": session}, timeout=30)
            assert r.status_code == 200, r.text
        elif ending == "closed tab":
            heartbeat.close()  # the page's heartbeat goes: Gradio runs the page's unload
        else:
            stream.close()  # the page's event stream goes mid-event
    idle = idle_after(server, since, allowed + 30)
    stream.close()
    heartbeat.close()
    record(f"idle after: {job}, {ending}", None if idle is None else round(idle, 2))
    assert idle is not None and idle <= allowed, f"{job}, {ending}: idle after {idle} s (allowed {allowed} s)"


def test_step_mode_sessions_grow_the_server_by_at_most_the_cap_plus_300_mb(tmp_path):
    """25 sessions each pause a step-mode run of a 2,500-character prompt under a 256 MB cap on paused caches."""
    srv = Server({"GRADIO_TEMP_DIR": str(tmp_path / "gradio"), "TEMPO_STEP_CACHE_MB": "256",
                  "TEMPO_APP_MAX_SECONDS": "600"}, tmp_path / "log")
    try:
        prompt = ("The history of the lighthouse keepers on the northern coast is long. " * 40)[:2500]
        data = srv.inputs("step", **{"Prompt": prompt, "Max tokens": 40})
        warm = fresh_session()
        for _ in range(2):  # the first presses allocate what any run needs (threads, allocator arenas)
            assert srv.call("step", data, warm)[0].status_code == 200
        before = srv.rss_bytes()
        peak = before
        for _ in range(25):
            session = fresh_session()
            for _ in range(8):
                r, messages = srv.call("step", data, session)
                assert r.status_code == 200 and completed(messages)["success"]
            peak = max(peak, srv.rss_bytes())
        health = srv.healthy()
        assert health["step_cache_bytes"] <= 256 * 2**20
        grown = (max(peak, srv.rss_bytes()) - before) / 2**20
        record("step mode at a 256 MB cap", {"rss_grown_mb": round(grown), "paused_runs": health["step_runs"],
                                             "paused_cache_mb": round(health["step_cache_bytes"] / 2**20)})
        assert grown <= 256 + 300, f"grew {grown:.0f} MB"
    finally:
        srv.stop()
