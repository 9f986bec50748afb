"""Run a function on the daemon's event loop from another thread and wait for its result.

Why: the edges and the status document are updated on the loop thread; a reader on another
thread (a Prometheus scrape, the Foxglove view) must not iterate dicts the loop is changing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def call_on_loop(loop: asyncio.AbstractEventLoop, fn: Callable[[], T], timeout_s: float = 2.0) -> T:
    fut: concurrent.futures.Future[T] = concurrent.futures.Future()

    def run() -> None:
        try:
            fut.set_result(fn())
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            fut.set_exception(exc)
    loop.call_soon_threadsafe(run)
    return fut.result(timeout=timeout_s)
