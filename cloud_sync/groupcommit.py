"""Group commit: concurrent upload requests share one transaction, one commit, one fsync.

Each request's proofs are checked on the event loop as they arrive (parse, signature,
leaves: ``Ingestor.check_many``). The checked requests then queue here; one writer takes
every request queued so far and stores them together (``Ingestor.store_checked``) in the
writer thread (always the same one: the ingestor keeps its write connection open between
groups), so the loop goes on checking the next requests while the database commits. A request
is answered only after the commit that holds its proofs: what the hub acknowledges is on disk.

Why: a commit has a fixed cost (SQLite's WAL write and fsync, ~0.3-0.4 ms of CPU here,
more in wall time) that one request of 8 proofs paid alone; with several devices uploading
at once it is shared (docs/performance.md).

A writer that was idle waits ``gather_s`` (2 ms) before it takes its first group, as
PostgreSQL's ``commit_delay`` does: gateways upload one proof at a time, at moments of their
own, so without the wait a hub that keeps up commits nearly every request alone (one fsync
and one set of statements a proof); with it, the requests of those 2 ms share the commit.
Once busy, the writer takes whatever queued while it committed, without waiting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from cloud_sync.ingest import CheckedRequest, Ingestor, Outcome
from cloud_sync.settings import COMMIT_GATHER_S

__all__ = ["GroupCommit"]


class GroupCommit:
    """One writer at a time; requests that arrive while it commits form the next group."""

    def __init__(
        self,
        ingestor: Ingestor,
        on_commit: Callable[[int], None] | None = None,
        *,
        gather_s: float = COMMIT_GATHER_S,
    ) -> None:
        self.ingestor = ingestor
        self.on_commit = on_commit  # called with the number of requests a commit held
        self.gather_s = gather_s
        self._queue: list[tuple[CheckedRequest, asyncio.Future[Outcome]]] = []
        self._writer: asyncio.Task[None] | None = None
        # always the same thread: the ingestor keeps its write connection between groups
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hub-writer")
        # the store's close ends the thread first (after the group it is writing, if any),
        # then the ingestor's write connection: a hub stopped and made again leaves no thread
        ingestor.store.on_close.insert(0, self.close)

    def close(self) -> None:
        """End the writer thread once the groups already handed to it are stored."""
        self._thread.shutdown(wait=True)

    async def store(self, checked: CheckedRequest) -> Outcome:
        """Store a checked request with whatever else is queued; returns once committed."""
        if not checked.items:  # its first proof was refused: nothing to store
            return [], checked.refusal
        done: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._queue.append((checked, done))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write())
        return await done

    async def _write(self) -> None:
        try:
            if self.gather_s > 0:  # idle until now: let the requests of the next moment join
                await asyncio.sleep(self.gather_s)
            while self._queue:
                group, self._queue = self._queue, []
                try:
                    outcomes = await asyncio.get_running_loop().run_in_executor(
                        self._thread, self.ingestor.store_checked, [c for c, _ in group]
                    )
                except Exception as err:  # noqa: BLE001 - every request of the group hears it
                    for _, done in group:
                        if not done.done():
                            done.set_exception(err)
                    continue
                if self.on_commit is not None:
                    self.on_commit(len(group))
                for (_, done), outcome in zip(group, outcomes, strict=True):
                    if not done.done():  # a client that went away: its proofs stay stored
                        done.set_result(outcome)
        finally:
            self._writer = None
