"""One worker thread that makes every NVML call, so a scrape can wait for it with a time limit.

A C call stuck inside the driver cannot be interrupted from Python. When a call overruns its
limit the caller gets :class:`CallTimeout`, the stuck thread is abandoned (it exits by itself if the
call ever returns) and a fresh worker takes the next call. A call with a ``key`` (the GPU index)
fails at once while an earlier call with the same key is still stuck, so one hung GPU costs one
timeout, not one per scrape, and the other GPUs keep being read. At most ``max_stuck`` abandoned
threads are tolerated: beyond that every call fails at once instead of piling up threads on a
wedged driver.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

from exporter.logs import get_logger

log = get_logger(__name__)

T = TypeVar("T")

_STOP = object()


class CallTimeout(Exception):
    """The call did not finish within the limit (or too many workers are already stuck)."""


class _Worker:
    def __init__(self, name: str) -> None:
        self.jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            job = self.jobs.get()
            if job is _STOP:
                return
            fn, args, fut = job
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(*args))
            except BaseException as exc:
                fut.set_exception(exc)


class CallWorker:
    def __init__(self, name: str = "nvml-worker", max_stuck: int = 4) -> None:
        self._name = name
        self._max_stuck = max_stuck
        self._lock = threading.Lock()
        self._worker: _Worker | None = None
        self._stuck: list[tuple[_Worker, object]] = []
        self._generation = 0

    @property
    def stuck_threads(self) -> int:
        self._stuck = [(w, key) for w, key in self._stuck if w.thread.is_alive()]
        return len(self._stuck)

    def call(self, timeout: float, fn: Callable[..., T], *args: Any, key: object = None) -> T:
        """Run ``fn(*args)`` on the worker thread; raise CallTimeout after ``timeout`` seconds."""
        with self._lock:
            if key is not None and self.stuck_threads and any(k == key for _, k in self._stuck):
                raise CallTimeout(f"an earlier call for {key!r} is still stuck")
            if self._worker is None:
                if self.stuck_threads >= self._max_stuck:
                    raise CallTimeout(
                        f"{self.stuck_threads} NVML calls are still stuck; not starting another"
                    )
                self._generation += 1
                self._worker = _Worker(f"{self._name}-{self._generation}")
            worker = self._worker
        fut: Future[T] = Future()
        worker.jobs.put((fn, args, fut))
        try:
            return fut.result(timeout)
        except FutureTimeout:
            with self._lock:
                if self._worker is worker:
                    # Abandon it: the thread stays blocked in C; tell it to exit when it returns.
                    fut.cancel()
                    worker.jobs.put(_STOP)
                    self._stuck.append((worker, key))
                    self._worker = None
                    log.warning(
                        "NVML call %s did not return within %.3g s; abandoning worker thread %s",
                        getattr(fn, "__name__", fn),
                        timeout,
                        worker.thread.name,
                    )
            raise CallTimeout(f"{getattr(fn, '__name__', fn)} took longer than {timeout:.3g} s") from None

    def close(self) -> None:
        with self._lock:
            if self._worker is not None:
                self._worker.jobs.put(_STOP)
                self._worker = None
