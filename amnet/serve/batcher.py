"""The model calls of all sessions of a replica, grouped: one thread runs the model, an asyncio queue feeds it.

Each session has at most one frame waiting (it asks for its next frame only when the last one came back,
and picks the newest ready one then: `Session.take`), so the queue is bounded by the sessions and a batch
never holds a frame that a newer one of the same session has made late. A pass takes what is waiting and
waits at most ``wait_s`` for more, only while fewer frames wait than sessions are open (one session alone
never waits). Batches are what `@serve.batch` would make, but the queue's size is ours to read (metrics).
"""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from amnet.core.errors import ArtifactError
from amnet.core.runner import run_in_chunks
from amnet.reenact.run import to_image


def encode(image: np.ndarray, output: str) -> bytes:
    """R×R×3 RGB uint8 → JPEG bytes, or the raw bytes."""
    if output == "raw":
        return image.tobytes()
    import cv2

    ok, data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise ArtifactError("JPEG encoding failed")
    return data.tobytes()


class Batcher:
    def __init__(self, runner, max_batch: int, wait_s: float, metrics, sessions=lambda: 1):
        self.runner, self.max_batch, self.wait_s = runner, max_batch, wait_s
        self.metrics, self.sessions = metrics, sessions
        self.fixed = runner.inputs[0].batch  # a fixed-batch file: pad up to it
        self.waiting: list[tuple[dict, str, asyncio.Future]] = []
        self.arrived = asyncio.Event()
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="model")  # runners are not thread-safe
        self.task: asyncio.Task | None = None

    async def frame(self, feeds: dict[str, np.ndarray], output: str) -> bytes:
        """One frame's picture, encoded, once a batch that holds it has run."""
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._loop())
        future = asyncio.get_running_loop().create_future()
        self.waiting.append((feeds, output, future))
        self.metrics.queue_depth = len(self.waiting)
        self.arrived.set()
        return await future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.arrived.wait()
            deadline = time.perf_counter() + self.wait_s
            while len(self.waiting) < min(self.max_batch, self.sessions()) and time.perf_counter() < deadline:
                self.arrived.clear()
                try:
                    await asyncio.wait_for(self.arrived.wait(), deadline - time.perf_counter())
                except asyncio.TimeoutError:
                    break
            batch, self.waiting = self.waiting[:self.max_batch], self.waiting[self.max_batch:]
            self.metrics.queue_depth = len(self.waiting)
            if not self.waiting:
                self.arrived.clear()
            batch = [b for b in batch if not b[2].cancelled()]  # a session that closed meanwhile
            if not batch:
                continue
            try:
                pictures = await loop.run_in_executor(self.pool, self._run, [b[0] for b in batch],
                                                      [b[1] for b in batch])
            except Exception as e:  # noqa: BLE001 - every session of the batch hears of it, the loop goes on
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            for (_, _, future), picture in zip(batch, pictures):
                if not future.done():
                    future.set_result(picture)

    def _run(self, feeds: list[dict], outputs: list[str]) -> list[bytes]:
        stacked = {k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]}
        self.metrics.observe("batch", len(feeds))
        face = run_in_chunks(self.runner.infer, stacked, self.fixed or self.max_batch, pad=self.fixed is not None)["face"]
        if not np.isfinite(face).all():
            raise ArtifactError(f"{self.runner.name} produced non-finite pixels: the model file is broken")
        return [encode(image, out) for image, out in zip(to_image(face), outputs)]

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.pool.shutdown(wait=True)
