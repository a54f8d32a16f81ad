"""The critic server's batcher: one thread that groups queued requests and runs them through the critic together.

Each connection's thread submits its parsed request and waits on the returned `Job`. The batcher
takes the first queued job, gathers up to `server.max_batch` (waiting at most
`server.batch_wait_ms` after the first), and calls `complete` on the batch. Out of memory, a batch
is split in halves (a single request out of memory is a 503); any other failure answers the batch
with a 500 and the batcher keeps serving. One log line per batch (size, seconds).

Stopping: `close()` refuses new jobs (503), `stop()` runs what was queued before it, ends the
thread, and answers anything left with a 503, so no client waits forever.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from coz_train.critic_server.protocol import ChatRequest, RequestError

log = logging.getLogger(__name__)

SHUTTING_DOWN = (503, "The critic server is shutting down.")


@dataclass
class Job:
    request: ChatRequest
    done: threading.Event = field(default_factory=threading.Event)
    result: dict | None = None
    error: tuple[int, str] | None = None

    def finish(self, result: dict | None = None, error: tuple[int, str] | None = None) -> None:
        self.result, self.error = result, error
        self.done.set()


class Batcher:
    """A queue of jobs and the thread that answers them in batches (see the module docstring)."""

    def __init__(self, complete: Callable[[list[ChatRequest]], list[dict]], max_batch: int, batch_wait_ms: float):
        self.complete = complete
        self.max_batch, self.wait_s = max(1, max_batch), max(0, batch_wait_ms) / 1000
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._closed = False
        self._stats: dict[str, Any] = {"batches": 0, "requests": 0, "batch_sizes": []}
        self._thread = threading.Thread(target=self._loop, name="critic-batcher", daemon=True)

    @property
    def stats(self) -> dict[str, Any]:
        """Batches run, requests answered, and each batch's size."""
        with self._lock:
            return {**self._stats, "batch_sizes": list(self._stats["batch_sizes"])}

    def start(self) -> None:
        self._thread.start()

    def submit(self, request: ChatRequest) -> Job:
        job = Job(request)
        with self._lock:
            if self._closed:
                raise RequestError(*SHUTTING_DOWN)
            self._queue.put(job)
        return job

    def close(self) -> bool:
        """Refuse new jobs from now on; False if it was closed already."""
        with self._lock:
            if self._closed:
                return False
            self._closed = True
            return True

    def stop(self) -> None:
        """After `close()`: run the jobs queued so far, end the thread, answer whatever is left with a 503."""
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join()
        while True:  # nothing is submitted once closed
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.finish(error=SHUTTING_DOWN)

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            batch, stop = [job], False
            deadline = time.monotonic() + self.wait_s
            while len(batch) < self.max_batch:
                try:
                    more = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
            self._run(batch)
            if stop:
                return

    def _run(self, jobs: list[Job]) -> None:
        started = time.perf_counter()
        results: list[dict] | None = None
        error = (500, "The critic failed.")
        try:
            results = self.complete([job.request for job in jobs])
        except torch.OutOfMemoryError:
            if len(jobs) > 1:
                torch.cuda.empty_cache()
                log.warning("Critic out of memory on a batch of %d: splitting it", len(jobs))
                half = len(jobs) // 2
                self._run(jobs[:half])
                self._run(jobs[half:])
                return
            log.exception("Critic out of memory on a single request")
            error = (503, "The critic ran out of memory on this request.")
        except Exception as err:  # noqa: BLE001 - the clients get a 500 and the server keeps serving
            log.exception("Critic batch of %d failed", len(jobs))
            error = (500, f"The critic failed: {type(err).__name__}: {err}")
        for i, job in enumerate(jobs):
            if results is not None:
                job.finish(result=results[i])
            else:
                job.finish(error=error)
        seconds = time.perf_counter() - started
        with self._lock:
            self._stats["batches"] += 1
            self._stats["requests"] += len(jobs)
            self._stats["batch_sizes"].append(len(jobs))
        log.info("Critic batch: %d requests in %.3f s", len(jobs), seconds)
