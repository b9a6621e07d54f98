"""Group commit: concurrent upload requests share one transaction, one commit, one fsync.

Each request's proofs are checked on the event loop as they arrive (parse, signature,
leaves: ``Ingestor.check_many``). The checked requests then queue here, and one writer thread
stores a group of them at a time (``Ingestor.store_checked``; always the same thread: the
ingestor keeps its write connection open between groups), so the loop goes on checking the
next requests while the database commits. A request is answered only after the commit that
holds its proofs: what the hub acknowledges is on disk.

Why: a commit has a fixed cost (SQLite's WAL write and fsync, ~0.3-0.4 ms of CPU here,
more in wall time) that one request of 8 proofs paid alone; with several devices uploading
at once it is shared (docs/performance.md).

Who takes a group (ADR 0054):
- An idle writer is started by the request that finds it idle, and its thread takes the
  first group itself after waiting ``gather_s`` (2 ms), as PostgreSQL's ``commit_delay``
  does: gateways upload one proof at a time, at moments of their own, so without the wait a
  hub that keeps up commits nearly every request alone; with it, the requests of those 2 ms
  share the commit. The thread does not wait for the loop: when a task on the loop took the
  first group, it ran only after every callback already due, and with many devices
  uploading batches at once that was all of their requests. The loop then checked them all
  while the database idled, and idled while the database stored them (a hub on PostgreSQL
  busy 68 % of a core, docs/performance.md).
- A busy writer's next group is handed to the thread by the loop, when the loop hears the
  commit: it holds whatever the loop checked meanwhile. Under load that is many requests, so a
  saturated hub still pays one commit for many of them (taking the next group in the
  thread as well committed groups of ~6 requests where this takes ~70-230: +65-75 µs of
  CPU a proof at 27,902 gateways).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from cloud_sync.ingest import CheckedRequest, Ingestor, Outcome
from cloud_sync.settings import COMMIT_GATHER_S

__all__ = ["GroupCommit"]

_Queued = list[tuple[CheckedRequest, "asyncio.Future[Outcome]"]]


class GroupCommit:
    """One writer at a time; requests that arrive while it commits form the next group."""

    def __init__(
        self,
        ingestor: Ingestor,
        on_commit: Callable[[int], None] | None = None,
        *,
        gather_s: float = COMMIT_GATHER_S,
        wait: Callable[[float], object] = time.sleep,
    ) -> None:
        self.ingestor = ingestor
        self.on_commit = on_commit  # called on the loop with the number of requests a commit held
        self.gather_s = gather_s
        self._wait = wait  # how the thread waits gather_s (a test's returns when it has queued)
        self._lock = threading.Lock()  # the queue: the loop adds, the thread may take
        self._queue: _Queued = []
        self._writing = False  # a group is being committed, or about to be (on the loop only)
        # always the same thread: the ingestor keeps its write connection between groups
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hub-writer")
        # the store's close ends the thread first (after the groups already queued, if any),
        # then the ingestor's write connection: a hub stopped and made again leaves no thread
        ingestor.store.on_close.insert(0, self.close)

    def close(self) -> None:
        """End the writer thread once the groups already handed to it are stored."""
        self._thread.shutdown(wait=True)

    async def store(self, checked: CheckedRequest) -> Outcome:
        """Store a checked request with whatever else is queued; returns once committed."""
        if not checked.items:  # its first proof was refused: nothing to store
            return [], checked.refusal
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Outcome] = loop.create_future()
        with self._lock:
            self._queue.append((checked, done))
        if not self._writing:  # the thread starts now, not once the loop ran what is due
            self._writing = True
            self._hand_over(loop, self._first)
        return await done

    def _hand_over(
        self, loop: asyncio.AbstractEventLoop, job: Callable[[asyncio.AbstractEventLoop], None]
    ) -> None:
        """On the loop: give the writer thread its next job. Once the thread has ended (the
        store closed), the requests queued hear why; nothing of theirs was stored."""
        try:
            self._thread.submit(job, loop)
        except RuntimeError as err:
            self._writing = False
            _fail(self._take(), err)

    def _take(self) -> _Queued:
        with self._lock:
            group, self._queue = self._queue, []
        return group

    def _first(self, loop: asyncio.AbstractEventLoop) -> None:
        """The writer thread, idle until now: waits, then commits what is queued by then."""
        if self.gather_s > 0:  # let the requests of the next moment join
            self._wait(self.gather_s)
        self._commit_queued(loop)

    def _commit_queued(self, loop: asyncio.AbstractEventLoop) -> None:
        """The writer thread: what is queued, in one transaction; the loop hears how it went."""
        group = self._take()
        result: list[Outcome] | Exception
        try:
            result = self.ingestor.store_checked([c for c, _ in group])
        except Exception as err:  # noqa: BLE001 - every request of the group hears it
            result = err
        try:
            loop.call_soon_threadsafe(self._committed, loop, group, result)
        except RuntimeError:  # the loop is closed: nobody waits; the next loop starts anew
            self._writing = False

    def _committed(
        self, loop: asyncio.AbstractEventLoop, group: _Queued, result: list[Outcome] | Exception
    ) -> None:
        """On the loop: each request of the group hears its outcome (or the error); then
        what was queued meanwhile goes to the thread as the next group, without waiting."""
        if isinstance(result, Exception):
            _fail(group, result)
        else:
            if self.on_commit is not None:
                self.on_commit(len(group))
            for (_, done), outcome in zip(group, result, strict=True):
                if not done.done():  # a client that went away: its proofs stay stored
                    done.set_result(outcome)
        if self._queue:  # only the loop adds, and no job is running: no lock needed to look
            self._hand_over(loop, self._commit_queued)
        else:
            self._writing = False


def _fail(group: _Queued, err: BaseException) -> None:
    for _, done in group:
        if not done.done():
            done.set_exception(err)
