"""What every tab shares: the one model, this server's limits, and the bookkeeping that keeps visitors apart.

One `Shared` is made per server (`app.build_app`) and passed to each tab; nothing here is a module global.
"""

from __future__ import annotations

import contextlib
import logging
import os
import types
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import gradio as gr

from tempo_core import LoadedModel, StepEvent, Trace, build_settings, generate
from tempo_core.config import TempoSettings
from tempo_core.runtime.sizes import kv_cache_bytes
from tempo_core.serving.limits import Limits
from tempo_core.serving.scheduler import Batcher
from tempo_core.serving.warmup import warm_batch_graphs, warm_prompt_head
from tempo_core.stop import RunStop

from .api import admit
from .forms import page_defaults, settings_from_form
from .sessions import Slots, StopFlags, TraceStore, session_key
from .stepping import SteppedRuns

log = logging.getLogger("tempo.app")


def env_int(name: str, default: int) -> int:
    """A positive integer setting from the environment; a bad value stops the server with its name."""
    value = os.environ.get(name, str(default))
    try:
        n = int(value)
        if n < 1:
            raise ValueError
    except ValueError:
        raise SystemExit(f"error: {name} must be a positive integer, got {value!r}") from None
    return n


def model_executor(workers: int, name: str = "tempo-model") -> ThreadPoolExecutor:
    """Long-lived threads for all model work. Each thread that runs torch ops gets its own OpenMP team, and on a
    small CPU a second team slows every op of the first (bench/README.md: a run in a fresh thread took 1.45x as
    long as in the thread that loaded the model); so the model is loaded, and every run made, on these."""
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)


def on_gpu(fn: Callable, duration: Callable[..., float]) -> Callable:
    """On a ZeroGPU Space (the `spaces` package importable) run `fn` under its GPU decorator for a duration
    derived from the request; elsewhere `fn` itself. `fn` yields plain trace data only (nothing on the GPU)."""
    try:
        import spaces
    except ImportError:
        return fn
    return spaces.GPU(duration=duration)(fn)


@dataclass
class Shared:
    """The model, this server's limits, its slots and stop flags, the model's threads and the stepped runs."""
    lm: LoadedModel
    limits: Limits = field(default_factory=Limits.from_env)
    concurrency: int = 32  # runs at once; the model thread serves them a step at a time (server/live.py)
    research_concurrency: int = 1
    view_concurrency: int = 2  # figure rebuilds from stored traces (replay, uploads, clicks) at once
    executor: ThreadPoolExecutor | None = None  # the model's threads (model_executor); made here if not given
    stops: StopFlags = field(default_factory=StopFlags)
    research_stops: StopFlags = field(default_factory=StopFlags)  # each session's research job
    store: TraceStore = field(default_factory=TraceStore)
    # runs of a session that wait in Gradio's queue (app.build_app sets it once the page exists)
    waiting_runs: Callable[[str], int] = lambda session_hash: 0
    slots: Slots = field(init=False)
    research_slots: Slots = field(init=False)
    research_executor: ThreadPoolExecutor = field(init=False)
    stepped: SteppedRuns = field(init=False)  # step mode: each session's paused run
    batcher: Batcher = field(init=False)  # serves every run on the model's thread, their rows in one forward

    def __post_init__(self) -> None:
        self.slots = Slots(self.concurrency)
        self.research_slots = Slots(self.research_concurrency)
        self.executor = self.executor or model_executor(1)
        self.research_executor = model_executor(self.research_concurrency, "tempo-research")
        self.decode = on_gpu(self._decode, lambda s, stop: self.limits.max_seconds + 10)
        self.batching = self.decode == self._decode  # a ZeroGPU worker makes a run in a process of its own
        self.batcher = Batcher(self.executor, max_rows=env_int("TEMPO_BATCH_MAX_ROWS", 256))
        self.stepped = SteppedRuns(self.executor, self.batcher, max_runs=env_int("TEMPO_STEP_RUNS", 40),
                                   max_bytes=env_int("TEMPO_STEP_CACHE_MB", 1024) * 2**20, bytes_of=self.cache_bytes,
                                   idle_s=env_int("TEMPO_STEP_IDLE_S", 300), press_s=self.limits.max_seconds)
        if self.batching:  # before any visitor's run: the chat template's head, fed once for every run to copy
            self.executor.submit(self._warm_prompt_head)

    def _warm_prompt_head(self) -> None:
        try:
            rows = warm_prompt_head(self.lm, build_settings({"prompt": "warm-up"}))
            log.info("prompt head of %d tokens fed once for every run to copy", rows)
        except Exception:  # noqa: BLE001 - a model this cannot warm still serves runs, each feeding its own prompt
            log.exception("could not feed the prompt head ahead of the runs")
        try:  # a GPU: the batch forwards a class of the page's runs uses, captured before the class comes
            shapes = warm_batch_graphs(self.lm, page_defaults(self.limits))
            if shapes:
                log.info("%d batch forward shapes captured ahead of the runs", shapes)
        except Exception:  # noqa: BLE001 - the batches then capture on first use, as they would anyway
            log.exception("could not capture the batch forwards ahead of the runs")

    def cache_bytes(self, trace: Trace) -> int:
        """The KV cache a run holds once it has made `trace`: its prompt's rows and every row it fed."""
        rows = len(trace.prompt_token_ids) + trace.stats.get("physical_tokens", len(trace.steps))
        return kv_cache_bytes(self.lm.model.config, rows, self.lm.dtype.itemsize)

    # Gradio concurrency groups: the model's runs, figures rebuilt from stored traces, and research jobs
    @property
    def model_events(self) -> dict[str, Any]:
        return {"concurrency_id": "model", "concurrency_limit": self.concurrency}

    @property
    def view_events(self) -> dict[str, Any]:
        return {"concurrency_id": "views", "concurrency_limit": self.view_concurrency}

    @property
    def research_events(self) -> dict[str, Any]:
        return {"concurrency_id": "research", "concurrency_limit": self.research_concurrency}

    def settings(self, form: dict[str, Any], runs: int = 1) -> TempoSettings:
        """Validated settings within this server's caps and compute budget (SettingsError names the field)."""
        return admit(self.lm, settings_from_form(form, self.limits), self.limits, runs)

    def _decode(self, s: TempoSettings, stop: RunStop) -> Iterator[StepEvent]:
        yield from generate(self.lm, s, stop, cooperative=self.batching, cuda_graphs=self.batcher.alone)

    def queue_line(self) -> str:
        """What a run that was just admitted waits for."""
        if self.slots.active < self.slots.limit:
            return "Starting…"
        return f"Waiting for the model ({self.slots.waiting} ahead)…"

    # --- a session's runs: Stop reaches the running one, or one still waiting in the queue -------------------
    @contextlib.contextmanager
    def research_job(self, request: gr.Request) -> Iterator[RunStop]:
        """A research job's slot and stop flag: its clock starts once it has the slot, and Stop or the session's
        end trips it as they do a run (the job checks it between its pieces; HF generate as a stopping criterion)."""
        key = session_key(request)
        with self.research_slots.hold():
            flag = self.research_stops.start(key)
            flag.start_clock(self.limits.max_seconds)
            try:
                yield flag
            finally:
                self.research_stops.finish(key, flag)

    def arm(self, request: gr.Request) -> None:
        """Generate was pressed: a Stop from now on applies to this run, even while it waits in the queue."""
        self.stops.arm(session_key(request))

    def stop(self, request: gr.Request) -> None:
        key = session_key(request)
        if not self.stops.stop(key) and self.waiting_runs(getattr(request, "session_hash", None) or ""):
            # a client that never pressed the page's Generate (gradio_client) has a run waiting in the queue
            self.stops.arm(key)
            self.stops.stop(key)
        self._halt(key)

    def client_gone(self, session_hash: str) -> None:
        """A session's stream went away mid-event, or its events were dropped unheard (server/queue_guard.py): stop
        its run, research job and Step press, as Stop does (its paused step-mode run stays, for its tab's return;
        no stop is armed for a run it may start later)."""
        key = session_key(types.SimpleNamespace(session_hash=session_hash))
        self.stops.stop(key)
        self._halt(key)

    def _halt(self, key: str) -> None:
        self.stepped.stop(key)  # Stop also halts Play, and ends a Step press still running
        self.research_stops.stop(key)  # and the session's research job

    def end_session(self, request: gr.Request) -> None:
        """The tab closed: stop its run, drop its downloads, flags and stepped run."""
        key = session_key(request)
        self.stops.forget(key)
        self.research_stops.forget(key)
        self.store.forget(key)
        self.stepped.drop(key)

    def close(self) -> None:
        """End paused runs on the model thread, then stop the threads (tests and shutdown)."""
        self.stepped.close_all()
        self.executor.shutdown(wait=True)
        self.research_executor.shutdown(wait=True)
