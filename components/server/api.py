"""The JSON API beside the page: /health, /api/generate (+ /api/v2/generate), /download/{id}/{file}.

Every request is bounded before it runs (body size, settings and their server caps, an estimated compute
budget) and while it runs (a wall-clock limit; the run stops when its client disconnects). Waiting for the
model happens on the event loop, never in a worker thread, so /health answers under any load.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections import Counter
from concurrent.futures import Future
from typing import Any, Callable

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from tempo_core import LoadedModel, SettingsError, StepEvent, Trace, __version__, build_settings
from tempo_core import generate as tempo_generate
from tempo_core.config import TempoSettings, validate_prompt
from tempo_core.events import check_context, encode_prompt
from tempo_core.serving.limits import Limits, check_budget
from tempo_core.serving.scheduler import Batcher
from tempo_core.stop import RunStop

from ..figures.report import report_html
from .live import step_by_step
from .sessions import Slots, TraceStore
from .stepping import SteppedRuns
from .uploads import long_ints_as_floats

MAX_BODY_BYTES = int(os.environ.get("TEMPO_API_MAX_BODY_BYTES", str(256 * 1024)))
RUN_ID = re.compile(r"[0-9a-f]{32}")
EXAMPLE = {"prompt": "What is the capital of France?", "selection_threshold": 0.1, "max_tokens": 30}


def error(field: str, message: str, status: int = 422) -> JSONResponse:
    """FastAPI's validation-error shape: detail[0].loc names the field (["body"] for the body as a whole)."""
    loc = ["body"] if field == "body" else ["body", field]
    return JSONResponse(status_code=status, content={"detail": [{"loc": loc, "msg": message, "type": "value_error"}]})


class BodyTooLarge(SettingsError):
    def __init__(self, message: str):
        super().__init__("body", message)


def admit(lm: LoadedModel, s: TempoSettings, limits: Limits, runs: int = 1) -> TempoSettings:
    """Settings (already within the caps) may run here: a usable prompt, and an estimated cost of `runs` runs
    within the budget. SettingsError names the field otherwise. The API and the page both come through here."""
    validate_prompt(s)
    prompt_tokens = len(encode_prompt(lm, s)[1])
    check_context(lm, s, prompt_tokens)
    check_budget(s, prompt_tokens, limits, runs)
    return s


def prepare(lm: LoadedModel, body: Any, limits: Limits) -> TempoSettings:
    """A request body -> validated settings within this server's caps and budget (SettingsError otherwise)."""
    if not isinstance(body, dict):
        raise SettingsError("body", 'must be a JSON object of settings (snake_case), e.g. {"prompt": "Hi"}')
    if "prompt" not in body:
        raise SettingsError("prompt", "is required: a non-empty string")
    return admit(lm, build_settings(body, caps=limits.caps), limits)


async def read_body(request: Request) -> Any:
    """The JSON body, read in chunks up to MAX_BODY_BYTES (a larger one is refused before it is parsed)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise BodyTooLarge(f"is {int(declared):,} bytes; this server accepts at most {MAX_BODY_BYTES:,}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BodyTooLarge(f"is over {MAX_BODY_BYTES:,} bytes, the most this server accepts")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise SettingsError("body", 'is empty; send a JSON object of settings, e.g. {"prompt": "Hi"}')
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SettingsError("body", f"is not UTF-8 (byte {exc.start})") from None
    try:
        # NaN/Infinity parse, and integers too long for int() read as floats (inf): each field refuses them by name
        return json.loads(text, parse_int=long_ints_as_floats)
    except json.JSONDecodeError as exc:
        raise SettingsError("body", f"is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise SettingsError("body", "is nested too deeply") from None


class BodyLimit:
    """ASGI middleware: no request body over `max_bytes` reaches any route (Gradio's queue included) except
    file uploads, which Gradio bounds itself (`max_file_size`). Checked from Content-Length and while reading."""

    def __init__(self, app: Any, max_bytes: int = MAX_BODY_BYTES, exempt: tuple[str, ...] = ("/gradio_api/upload",)):
        self.app, self.max_bytes, self.exempt = app, max_bytes, exempt

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.exempt) or scope["path"].startswith("/api/"):
            return await self.app(scope, receive, send)  # /api/* reads its body itself, with a JSON-shaped error
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(send)
        seen, too_big = 0, False

        async def limited() -> dict:
            nonlocal seen, too_big
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:  # the app is told the client left; whatever it answers is replaced
                too_big = True
                return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: dict) -> None:
            if not too_big:
                await send(message)
        try:
            await self.app(scope, limited, guarded_send)
        except Exception:
            if not too_big:
                raise
        if too_big:
            await self._refuse(send)

    async def _refuse(self, send: Any) -> None:
        body = json.dumps({"detail": f"request body over {self.max_bytes:,} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


async def run_for(request: Request, lm: LoadedModel, s: TempoSettings, limits: Limits, batcher: Batcher) -> Trace:
    """The run of an API request, a step at a time on the model's thread (fair to the page's runs), ended by the
    time limit or the client hanging up."""
    stop = RunStop(limits.max_seconds)
    finished: Future[Trace] = Future()

    def on_event(event: StepEvent | None, exc: BaseException | None) -> None:
        if event is None:
            finished.set_exception(exc)
        elif event.done:
            finished.set_result(event.trace)
    step_by_step(batcher, lambda: tempo_generate(lm, s, stop, cooperative=True, cuda_graphs=batcher.alone),
                 on_event, stop.extend)
    work = asyncio.wrap_future(finished)
    while not work.done():
        await asyncio.wait({work}, timeout=0.2)
        if not work.done() and await request.is_disconnected():
            stop.stop("client_disconnected")
    return work.result()


def add_routes(api: FastAPI, lm: LoadedModel, slots: Slots, store: TraceStore, limits: Limits,
               batcher: Batcher, stepped: SteppedRuns | None = None, research: Slots | None = None,
               queue: Callable[[], dict] | None = None) -> None:
    """`batcher`: serves every run on the model's own thread (Shared.batcher), never in a fresh thread.
    `stepped`: the page's paused step-mode runs, whose number and KV caches /health reports; `research`: the slots
    of research jobs (baselines, sweeps, studies), whose running and waiting jobs it reports too; `queue()`: the
    page's queue (server/queue_guard.py QueueWatch.report)."""
    @api.get("/health")
    async def health() -> dict:  # async: answers on the event loop even when every worker thread is busy
        paused = {} if stepped is None else {
            "step_runs": len(stepped), "step_cache_bytes": stepped.cache_bytes, "step_cache_limit_bytes": stepped.max_bytes}
        if research is not None:
            paused |= {"research_active": research.active, "research_waiting": research.waiting}
        if lm.runtime.kv_store:  # the batched runs' K/V store (runtime/kvstore.py), made once a run needed it
            paused |= {"kv_store_bytes": lm.runtime.kv_store.nbytes, "kv_store_slots": lm.runtime.kv_store.slots,
                       "kv_store_slots_free": lm.runtime.kv_store.free_slots}
        if lm.runtime.batch_graphs:  # captured batch forwards (serving/graphed.py), at most MAX_GRAPHS shapes
            paused |= {"batch_graphs": len(lm.runtime.batch_graphs.graphs)}
        if queue is not None:
            paused |= {"queue": queue()}
        return {"status": "ok", "model_loaded": lm is not None, "model": lm.name, "device": str(lm.device),
                "dtype": str(lm.dtype).replace("torch.", ""), "version": __version__,
                "runs_active": slots.active, "runs_waiting": slots.waiting, **paused, "limits": limits.__dict__}

    per_address: Counter[str] = Counter()  # API requests waiting or running, by client address

    async def generate(request: Request) -> Response:
        address = request.client.host if request.client else "unknown"
        if per_address[address] >= limits.max_per_address:
            return JSONResponse(status_code=429, headers={"Retry-After": "10"},
                                content={"detail": f"{per_address[address]} requests from your address already wait "
                                                   f"or run (at most {limits.max_per_address}, TEMPO_API_PER_ADDRESS)"})
        per_address[address] += 1
        try:
            return await _generate(request)
        finally:
            per_address[address] -= 1
            if per_address[address] <= 0:
                del per_address[address]

    async def _generate(request: Request) -> Response:
        try:
            body = await read_body(request)
            s = prepare(lm, body, limits)
        except SettingsError as exc:
            return error(exc.field, str(exc), 413 if isinstance(exc, BodyTooLarge) else 422)
        if slots.waiting >= limits.max_waiting:
            return JSONResponse(status_code=503, headers={"Retry-After": "10"},
                                content={"detail": f"server busy: {slots.waiting} requests already wait for the "
                                                   f"model (at most {limits.max_waiting}); retry later"})
        if not await slots.acquire_async(request.is_disconnected):
            return Response(status_code=499)  # the client left while waiting; nobody reads this
        try:
            trace = await run_for(request, lm, s, limits, batcher)
        except SettingsError as exc:  # found only once the run started (e.g. a recorded prefix)
            return error(exc.field, str(exc))
        finally:
            slots.release()
        return Response(trace.to_json(), media_type="application/json")

    kwargs = {"openapi_extra": {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"type": "object", "description": "Settings in snake_case (README: JSON API)"},
        "example": EXAMPLE}}}}}
    api.add_api_route("/api/generate", generate, methods=["POST"], summary="Run TEMPO and return the JSON trace",
                      **kwargs)
    api.add_api_route("/api/v2/generate", generate, methods=["POST"], summary="Same as /api/generate", **kwargs)

    reports = asyncio.Semaphore(2)  # a report of a long run takes seconds of CPU: at most two built at once

    @api.get("/download/{run_id}/{name}", include_in_schema=False)
    async def download(run_id: str, name: str) -> Response:
        data = store.get(run_id) if RUN_ID.fullmatch(run_id) else None
        if data is None or name not in ("tempo-trace.json", "tempo-report.html"):
            return JSONResponse(status_code=404, content={"detail": "no such download (they expire after an hour)"})
        headers = {"Content-Disposition": f'attachment; filename="{name}"'}
        if name.endswith(".json"):
            return Response(data, media_type="application/json", headers=headers)
        async with reports:
            html = await anyio.to_thread.run_sync(lambda: report_html(Trace.from_json(data.decode("utf-8"))))
        return HTMLResponse(html, headers=headers)
