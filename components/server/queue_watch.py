"""What the queue guard (queue_guard.py) knows of Gradio's queue, one per server: who listens, who has what waiting
or running, which uploads belong to which session; it also hooks Gradio's queue so that an event goes to a worker
only once its session listens, and drops the events of a client that went away."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterator
from urllib.parse import parse_qs

from .uploads import MAX_UPLOAD_BYTES, UNREADABLE

log = logging.getLogger("tempo.queue")
CALL_STREAM = re.compile(r"^/gradio_api/call/[^/]+/(?P<event_id>[0-9a-f]{32})/?$")
FILE_DATA_KEYS = {"path", "url", "size", "orig_name", "mime_type", "is_stream", "meta"}  # gradio.FileData's fields


@dataclass(frozen=True)
class FairShare:
    """How much of the queue one client may hold: events waiting or running per session (in all, and in any one
    concurrency group such as the model's) and per client address; how long an event may wait for its session's
    stream before it is dropped."""
    per_session: int = 24  # the page itself fires a run, a Step and its views' "trace arrived" hooks at once
    per_session_group: int = 16  # a trace's arrival alone fires 3 queued hooks after its event
    per_address: int = 48
    # a browser opens its stream right after it joins, but on a busy machine (a phone, a loaded laptop, 30 pages
    # drawing at once) that can take seconds: an event dropped while its page was still opening the stream would
    # leave that page waiting forever. Waiting costs nothing but a place in the session's bounded share.
    grace_s: float = 30.0

    @classmethod
    def from_env(cls) -> "FairShare":
        from .shared import env_int
        return cls(env_int("TEMPO_SESSION_EVENTS", cls.per_session), env_int("TEMPO_SESSION_GROUP_EVENTS",
                   cls.per_session_group), env_int("TEMPO_ADDRESS_EVENTS", cls.per_address),
                   float(env_int("TEMPO_STREAM_GRACE_S", int(cls.grace_s))))


class QueueWatch:
    """Which sessions listen, which uploads belong to whom, and the hooks into Gradio's queue: events are handed to a
    worker only once their session listens; unheard ones are dropped after `share.grace_s`; a session whose stream
    goes away mid-event has its work stopped (`on_gone(session_hash)`)."""

    def __init__(self, demo: Any, on_gone: Callable[[str], None], share: FairShare | None = None,
                 max_claims: int = 10_000):
        self.demo, self.on_gone, self.share = demo, on_gone, share or FairShare.from_env()
        self.streams: Counter[str] = Counter()  # session hash -> open /queue/data (or /call) streams
        self.claims: OrderedDict[str, str] = OrderedDict()  # uploaded path -> the session that named it first
        self.max_claims = max_claims
        self.dropped = 0  # events dropped because nobody listened
        self._sweeper: asyncio.Task | None = None
        demo.has_launched = True  # Gradio's own check: preprocessing accepts only files in its upload folder
        self._install_queue_hooks()

    def start_sweeping(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    @contextlib.contextmanager
    def streaming(self, session: str) -> Iterator["_Stream"]:
        """One open stream of `session` (counted while open; `end()` may come first, when its client leaves)."""
        stream = _Stream(self, session)
        self.streams[session] += 1
        try:
            yield stream
        finally:
            stream.end()

    def stream_ended(self, session: str, reconnect_s: float = 0.5) -> None:
        """A stream ended. Gradio ends one itself only once the session has nothing pending; if an event of the
        session is still running `reconnect_s` later and no new stream, the client went away: drop it and stop its
        work (not after the grace). Events still waiting are left to the grace: one joined while Gradio was closing
        the stream of the one before is heard once the page opens its next stream, however long a busy machine
        takes to do so."""
        self.streams[session] -= 1
        if self.streams[session] <= 0:
            del self.streams[session]
            loop, ended = asyncio.get_running_loop(), time.monotonic()
            loop.call_later(reconnect_s, lambda: loop.create_task(self._gone_if_silent(session, ended)))

    async def _gone_if_silent(self, session: str, ended: float) -> None:
        if self.listening(session):
            return
        left = [e for e in self._running() if e.session_hash == session and e.enqueue_time <= ended]
        if left:
            log.info("a client left with %d event(s) running: dropping them", len(left))
        for event in left:
            await self.queue.clean_events(event_id=event._id)

    def stream_session(self, scope: dict) -> str | None:
        match = CALL_STREAM.match(scope["path"])
        if match:
            event = self.queue.event_ids_to_events.get(match["event_id"])
            return event.session_hash if event is not None else None
        values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("session_hash")
        return values[0] if values else None  # decoded as Gradio decodes it (a hash may be any string)

    def refusal(self, body: dict, session: str | None, address: str) -> tuple[int, str] | None:
        for path in _named_paths(body.get("data")):
            if not self._may_read(path, session):
                return 422, UNREADABLE
        fn = self._fn_of(body)
        if fn is not None and not fn.queue:
            return None  # Stop, Pause and the like are never queued and cost nothing: they always get through
        waiting = list(self._events())
        if session is not None:
            mine = [e for e in waiting if e.session_hash == session]
            if len(mine) >= self.share.per_session:
                return 429, (f"this session already has {len(mine)} requests waiting or running (at most "
                             f"{self.share.per_session}); wait for one to finish")
            group = getattr(fn, "concurrency_id", None)
            same = sum(1 for e in mine if e.concurrency_id == group)
            if group is not None and same >= self.share.per_session_group:
                return 429, (f"this session already has {same} requests of this kind waiting or running (at most "
                             f"{self.share.per_session_group}); wait for one to finish")
        from_address = sum(1 for e in waiting if _event_address(e) == address)
        if from_address >= self.share.per_address:
            return 429, (f"{from_address} requests from your address already wait or run (at most "
                         f"{self.share.per_address}, TEMPO_ADDRESS_EVENTS); retry later")
        return None

    def _fn_of(self, body: dict) -> Any:
        fn_index = body.get("fn_index")
        return self.demo.fns.get(fn_index) if isinstance(fn_index, int) and not isinstance(fn_index, bool) else None

    def _may_read(self, path: str, session: str | None) -> bool:
        """Only a file that Gradio's upload route wrote, regular and within the upload size, named by no other
        session before: no server path, URL, link, device or directory, and no other visitor's upload."""
        from gradio.utils import get_upload_folder
        if session is None or path not in self.demo.upload_file_set:
            return False
        real, root = os.path.realpath(path), os.path.realpath(get_upload_folder())
        try:
            if os.path.commonpath([real, root]) != root or not os.path.isfile(real) \
                    or os.path.getsize(real) > MAX_UPLOAD_BYTES:
                return False
        except (OSError, ValueError):
            return False
        owner = self.claims.setdefault(path, session)
        self.claims.move_to_end(path)
        while len(self.claims) > self.max_claims:
            self.claims.popitem(last=False)
        return owner == session

    # -- the queue: listening sessions only, unheard events dropped
    @property
    def queue(self) -> Any:
        return self.demo._queue

    def _waiting(self) -> Iterator[Any]:
        """Events waiting in Gradio's queue (gradio 6.31's `event_queue_per_concurrency_id`; /health reports them,
        which tests/hostile/test_protocol.py reads)."""
        for event_queue in self.queue.event_queue_per_concurrency_id.values():
            yield from event_queue.queue

    def _running(self) -> Iterator[Any]:
        """Events a worker runs (gradio 6.31's `active_jobs`) whose client has not gone."""
        for job in self.queue.active_jobs:
            yield from (event for event in job or [] if event.alive)

    def _events(self) -> Iterator[Any]:
        yield from self._waiting()
        yield from self._running()

    def report(self) -> dict:
        """For /health: events waiting and running in Gradio's queue, open streams, events dropped unheard."""
        return {"waiting": sum(1 for _ in self._waiting()), "running": sum(1 for _ in self._running()),
                "streams": sum(self.streams.values()), "dropped_unheard": self.dropped}

    def listening(self, session: str) -> bool:
        return self.streams.get(session, 0) > 0

    def _install_queue_hooks(self) -> None:
        queue, watch = self.queue, self
        get_events, clean_events = queue.get_events, queue.clean_events

        def get_listened_events() -> Any:
            """Gradio's pick of the next events, among the events whose session listens (the others stay put)."""
            held = []
            for event_queue in queue.event_queue_per_concurrency_id.values():
                heard = [e for e in event_queue.queue if watch.listening(e.session_hash)]
                if len(heard) < len(event_queue.queue):
                    held.append((event_queue, list(event_queue.queue), heard))
                    event_queue.queue[:] = heard
            try:
                return get_events()
            finally:
                for event_queue, before, heard in held:
                    taken = {id(e) for e in heard} - {id(e) for e in event_queue.queue}
                    event_queue.queue[:] = [e for e in before if id(e) not in taken]

        async def clean_and_stop(*, session_hash: str | None = None, event_id: str | None = None) -> None:
            """Gradio drops a session's events when its stream goes away (or an event by id): stop their runs."""
            gone = {session_hash} if session_hash else {e.session_hash for e in self._events() if e._id == event_id}
            for session in gone:  # first: Gradio calls this from a cancelled stream, whose next await is cancelled
                watch.on_gone(session)
            await clean_events(session_hash=session_hash, event_id=event_id)

        queue.get_events, queue.clean_events = get_listened_events, clean_and_stop

    async def _sweep(self, every_s: float = 0.5) -> None:
        """Drop events nobody listened to within `grace_s` (waiting or running), and the message queues of
        sessions with nothing pending and no stream (Gradio keeps one per session hash ever seen)."""
        first_unheard: dict[str, float] = {}
        while True:
            await asyncio.sleep(every_s)
            try:
                now = time.monotonic()
                unheard = {e.session_hash for e in self._events() if not self.listening(e.session_hash)}
                first_unheard = {s: first_unheard.get(s, now) for s in unheard}
                for session, since in list(first_unheard.items()):
                    if now - since >= self.share.grace_s:
                        stale = [e for e in self._events() if e.session_hash == session
                                 and now - e.enqueue_time >= self.share.grace_s]
                        if stale:
                            log.info("dropping %d event(s) of a session that never listened", len(stale))
                            self.dropped += len(stale)
                            await self.queue.clean_events(session_hash=session)
                            del first_unheard[session]
                pending = self.queue.pending_event_ids_session
                for session in list(self.queue.pending_messages_per_session):
                    if not self.listening(session) and not pending.get(session):
                        self.queue.pending_messages_per_session.pop(session, None)
            except Exception:  # noqa: BLE001 - the sweep must outlive any one odd state of the queue
                log.exception("queue sweep failed")


class _Stream:
    def __init__(self, watch: QueueWatch, session: str):
        self.watch, self.session, self.ended = watch, session, False

    def end(self) -> None:
        if not self.ended:
            self.ended = True
            self.watch.stream_ended(self.session)


def _named_paths(data: Any, depth: int = 0) -> Iterator[str]:
    """Every `path` a client names in an event's data: a dict in Gradio's FileData shape (its meta says so, or it
    has a path and no key FileData lacks; a Plotly shape's SVG `path` is not one)."""
    if depth > 32:
        yield ""  # nested absurdly deep: refused like an unreadable path
    elif isinstance(data, dict):
        meta = data.get("meta")
        is_file_data = isinstance(meta, dict) and meta.get("_type") == "gradio.FileData"
        if "path" in data and (is_file_data or set(data) <= FILE_DATA_KEYS):
            # without its meta Gradio would refuse it with a stack trace in the log: refused here like any other
            yield data["path"] if is_file_data and isinstance(data["path"], str) else ""
        for value in data.values():
            yield from _named_paths(value, depth + 1)
    elif isinstance(data, list):
        for value in data:
            yield from _named_paths(value, depth + 1)


def _event_address(event: Any) -> str:
    try:
        return event.request.client.host
    except AttributeError:
        return "unknown"
