"""``factoryops hub check``: every stored window's leaves are there and hash to the root its
micro-proof signs. Run after restoring a hub from a backup (the database first, then its
leaves file: ADR 0053) or when a receipt answered ``corrupt_store``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from attestation.errors import MalformedInput
from attestation.leafbatch import sequence_root
from cloud_sync.storage import LeavesMissing, Store, StoredLeaves

__all__ = ["StoreCheck", "check_store"]


@dataclass
class StoreCheck:
    """What ``check_store`` found: counts, and the first problems named."""

    windows: int = 0
    readings: int = 0
    failed: int = 0
    problems: list[str] = field(default_factory=list)


def check_store(
    store: Store, *, keep: int = 20, progress: Callable[[int], None] | None = None
) -> StoreCheck:
    """Read every window's leaves and hash them; ``keep`` problems are named, all counted;
    ``progress`` hears the windows checked so far, every 10,000."""
    found = StoreCheck()
    for stored in store.stored_leaves():
        found.windows += 1
        found.readings += stored.count
        if (problem := _problem(stored)) is not None:
            found.failed += 1
            if len(found.problems) < keep:
                found.problems.append(f"{stored.utid} window {stored.window}: {problem}")
        if progress is not None and found.windows % 10_000 == 0:
            progress(found.windows)
    return found


def _problem(stored: StoredLeaves) -> str | None:
    leaves = stored.leaves
    if isinstance(leaves, LeavesMissing):
        return str(leaves)
    if leaves is None:
        return None if stored.count == 0 else f"signs {stored.count} readings, none stored"
    try:
        got = sequence_root(leaves, stored.count, stored.first_seq)
    except MalformedInput as err:
        return f"its stored leaves do not decode: {err}"
    if got != stored.root:
        return f"its stored leaves hash to {got.hex()}, its proof signs {stored.root.hex()}"
    return None
