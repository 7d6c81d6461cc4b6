"""Concurrent requests' images gathered into batches and run in one worker thread, off the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor

import torch

from ..messages import first_line
from .requests import RequestError

log = logging.getLogger("deit.serve")


class Batcher:
    """Runs `fn` (a batch of prepared images (B, C, H, W) -> per-image results) on the images of concurrent
    requests together: a batch closes at `max_batch` images or `wait_ms` after its first, and runs in one worker
    thread, so the event loop keeps taking requests meanwhile."""

    def __init__(self, fn, *, max_batch: int = 32, wait_ms: float = 5.0):
        self.fn, self.max_batch, self.wait = fn, max_batch, wait_ms / 1000
        self.queue: asyncio.Queue | None = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="deit-batch")
        self.task: asyncio.Task | None = None

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.executor.shutdown(wait=True)

    async def __call__(self, images: list[torch.Tensor]) -> list:
        """The results for these images, computed in whatever batches they fall into."""
        if self.task is None or self.task.done():  # never queue for a loop that is gone: the client would wait forever
            raise RequestError(503, "the model's batching loop is not running; restart deit serve")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in images]
        for image, future in zip(images, futures):
            self.queue.put_nowait((image, future))
        return list(await asyncio.gather(*futures))

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            deadline = loop.time() + self.wait
            while len(items) < self.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    items.append(await asyncio.wait_for(self.queue.get(), remaining))
                except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
                    break
            batch = torch.stack([image for image, _ in items])
            try:
                results = await loop.run_in_executor(self.executor, self.fn, batch)
            except Exception as e:  # a failure of the model itself: every waiting request hears of it
                log.error("the model failed on a batch of %d: %s", len(items), e)
                failure = RequestError(500, f"the model failed on this batch: {first_line(e)}")
                for _, future in items:
                    if not future.done():
                        future.set_exception(failure)
                continue
            for (_, future), result in zip(items, results):
                if not future.done():  # its client may have gone
                    future.set_result(result)
