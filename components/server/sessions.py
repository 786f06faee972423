"""Server-side bookkeeping for a shared app: who may run now, how to stop a session's run, finished traces.

Nothing here trusts a client string: sessions are keyed by a digest of Gradio's session hash, downloads by a
random id the server made, and nothing is ever written to disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import threading
import time
from collections import OrderedDict
from typing import Any, Awaitable, Callable, Iterator

from tempo_core.stop import RunStop


def session_key(request: Any) -> str:
    """A server-side key for the browser session of `request` (a digest: the raw hash is the client's)."""
    raw = getattr(request, "session_hash", None) or "anonymous"
    return hashlib.sha256(str(raw).encode("utf-8", "replace")).hexdigest()[:32]


class Slots:
    """At most `limit` model runs at once. Threads block in `hold()`; async callers wait in `hold_async()`
    without occupying a thread. `active` and `waiting` are reported by /health."""

    def __init__(self, limit: int):
        self.limit = limit
        self._sem = threading.BoundedSemaphore(limit)
        self._lock = threading.Lock()
        self.active = 0
        self.waiting = 0

    def _count(self, active: int = 0, waiting: int = 0) -> None:
        with self._lock:
            self.active += active
            self.waiting += waiting

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        self._count(waiting=1)
        try:
            self._sem.acquire()
        finally:
            self._count(waiting=-1)
        self._count(active=1)
        try:
            yield
        finally:
            self._count(active=-1)
            self._sem.release()

    async def acquire_async(self, give_up: Callable[[], Awaitable[bool]] | None = None, poll_s: float = 0.02) -> bool:
        """Wait for a slot on the event loop; False if `give_up()` said so first (the caller went away)."""
        self._count(waiting=1)
        try:
            while not self._sem.acquire(blocking=False):
                if give_up is not None and await give_up():
                    return False
                await asyncio.sleep(poll_s)
        finally:
            self._count(waiting=-1)
        self._count(active=1)
        return True

    def release(self) -> None:
        self._count(active=-1)
        self._sem.release()


class StopFlags:
    """Per-session stop flags. A Stop pressed while the session's run still waits in the queue is kept for
    that run (`arm` marks a queued run; `start` hands the run its flag, already set if Stop came first)."""

    def __init__(self, max_sessions: int = 10_000):
        self._lock = threading.Lock()
        self._running: dict[str, RunStop] = {}
        self._queued: OrderedDict[str, RunStop] = OrderedDict()
        self.max_sessions = max_sessions

    def arm(self, session: str) -> None:
        """Generate was pressed: the session's next run is on its way."""
        with self._lock:
            self._queued[session] = RunStop()
            self._queued.move_to_end(session)
            while len(self._queued) > self.max_sessions:
                self._queued.popitem(last=False)

    def start(self, session: str) -> RunStop:
        """The run begins: its flag, already set if Stop was pressed while it was queued. (Its clock starts when
        it gets the model: `RunStop.start_clock`.)"""
        with self._lock:
            queued = self._queued.pop(session, None)
            flag = RunStop()
            if queued is not None and queued.is_set():
                flag.stop()
            self._running[session] = flag
            return flag

    def finish(self, session: str, flag: RunStop) -> None:
        with self._lock:
            if self._running.get(session) is flag:
                del self._running[session]

    def stop(self, session: str) -> bool:
        """Stop the session's running run, or its queued one. Returns whether there was one."""
        with self._lock:
            flag = self._running.get(session) or self._queued.get(session)
        if flag is not None:
            flag.stop()
        return flag is not None

    def forget_all(self) -> None:
        """The server is shutting down: stop every run."""
        with self._lock:
            flags = [*self._running.values(), *self._queued.values()]
        for flag in flags:
            flag.stop()

    def forget(self, session: str) -> None:
        """The session ended: stop what it runs and drop its flags."""
        self.stop(session)
        with self._lock:
            self._queued.pop(session, None)


class TraceStore:
    """Finished traces kept for download, in memory, under random ids: at most `max_items`, each for at most
    `max_age_s` seconds, and a session's older entries dropped when it stores a new one or ends."""

    def __init__(self, max_items: int = 64, max_age_s: float = 3600.0):
        self.max_items, self.max_age_s = max_items, max_age_s
        self._lock = threading.Lock()
        self._items: OrderedDict[str, tuple[str, float, bytes]] = OrderedDict()  # id -> (session, time, json)

    def put(self, session: str, trace_json: str) -> str:
        run_id = secrets.token_hex(16)
        with self._lock:
            for old in [k for k, (owner, _, _) in self._items.items() if owner == session]:
                del self._items[old]
            self._items[run_id] = (session, time.monotonic(), trace_json.encode("utf-8"))
            self._expire()
        return run_id

    def get(self, run_id: str) -> bytes | None:
        with self._lock:
            self._expire()
            item = self._items.get(run_id)
        return None if item is None else item[2]

    def forget(self, session: str) -> None:
        with self._lock:
            for old in [k for k, (owner, _, _) in self._items.items() if owner == session]:
                del self._items[old]

    def __len__(self) -> int:
        return len(self._items)

    def _expire(self) -> None:
        now = time.monotonic()
        while self._items and (len(self._items) > self.max_items
                               or now - next(iter(self._items.values()))[1] > self.max_age_s):
            self._items.popitem(last=False)
