"""Gradio's queue protocol as a stranger may speak it, below the page's handlers.

A stranger need not use the page: they can send `/gradio_api/queue/join`, open or never open `/queue/data`, and
use `/call/...` directly. What they name there is checked before Gradio does any work with it (the connections
themselves are bounded in `connections.py`):

- **Files** (`QueueGuard`): a file a queue event names must be one this server received through Gradio's upload
  route and that no other session has named before; anything else (a server path, a URL, a directory, /dev/zero)
  is refused with one message before Gradio hashes or copies it. Gradio's own upload-folder check is switched on
  as well (`blocks.has_launched`, which `gr.mount_gradio_app` never sets).
- **Fair share** (`QueueGuard`): each session and each client address may have only so many events waiting or
  running; the queue hands an event to a worker only once its session listens (its `/queue/data` stream is open),
  drops one nobody listens to within `grace_s`, and stops the runs of a session whose stream went away.

The state behind the checks lives in `QueueWatch` (queue_watch.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any

from starlette.requests import ClientDisconnect

from .queue_watch import CALL_STREAM, QueueWatch

log = logging.getLogger("tempo.queue")
JOIN = re.compile(r"^/gradio_api/(queue/join|call/(v2/)?[^/]+|run/[^/]+|api/[^/]+)/?$")
QUEUE_STREAM = "/gradio_api/queue/data"


class QueueGuard:
    """ASGI middleware in front of Gradio's queue routes (see the module's docstring); its state is the server's
    one `QueueWatch` (Starlette may build its middleware more than once)."""

    def __init__(self, app: Any, watch: QueueWatch):
        self.app, self.watch = app, watch

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        self.watch.start_sweeping()
        path, method = scope["path"], scope["method"]
        if method == "POST" and JOIN.match(path):
            return await self._join(scope, receive, send)
        if method == "GET" and (path == QUEUE_STREAM or CALL_STREAM.match(path)):
            session = self.watch.stream_session(scope)
            if session not in self.watch.queue.pending_messages_per_session:
                # Gradio would start a stream, then fail inside it with a traceback in the log for every such call
                return await _reply(send, 404, "no such session or event in the queue")
            return await self._stream(scope, receive, send, session)
        return await self._quietly(scope, receive, send)

    async def _stream(self, scope: dict, receive: Any, send: Any, session: str) -> None:
        """A session's event stream. Gradio notices a client that left only when it next has a message for it (up to
        10 s for a research job's rare progress); this notices at once, and drops the session's events."""
        async def until_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
        with self.watch.streaming(session) as stream:
            watcher = asyncio.get_running_loop().create_task(until_disconnect())
            watcher.add_done_callback(lambda task: task.cancelled() or stream.end())
            try:
                await self._quietly(scope, receive, send)
            finally:
                watcher.cancel()

    async def _quietly(self, scope: dict, receive: Any, send: Any) -> None:
        """A client that leaves mid-request is logged in one line, not with a stack trace."""
        try:
            await self.app(scope, receive, send)
        except ClientDisconnect:
            log.info("client %s left during %s %s", _client_address(scope), scope["method"], scope["path"])

    async def _join(self, scope: dict, receive: Any, send: Any) -> None:
        chunks, more = [], True
        while more:  # bounded in size by BodyLimit around this middleware, in time by DeadlineProtocol
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        raw = b"".join(chunks)
        try:
            body = json.loads(raw) if raw.strip() else {}
        except (ValueError, RecursionError):
            body = None  # Gradio answers a malformed body itself
        if isinstance(body, dict):
            session = body.get("session_hash") if isinstance(body.get("session_hash"), str) else None
            refusal = self.watch.refusal(body, session, _client_address(scope))
            if refusal is not None:
                return await _reply(send, *refusal)
        replayed = False

        async def replay() -> dict:  # the body once, as read; then whatever the client does next (a disconnect)
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await self.app(scope, replay, send)


def _client_address(scope: dict) -> str:
    client = scope.get("client")
    return client[0] if client else "unknown"


async def _reply(send: Any, status: int, message: str) -> None:
    body = json.dumps({"detail": message, "error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
