"""An overloaded hub holds at most its body budget (``--body-budget-mib``) of request bodies,
whatever number of clients send at once: a request past it is answered ``503 overloaded``
with ``Retry-After`` before its body is read, and what was acknowledged before, during and
after the overload stays stored.

The hub is `factoryops hub serve` in its own process; its peak resident memory is read from
/proc/<pid>/status (VmHWM, reset through clear_refs before the flood). The clients are raw
sockets, so that each one holds its upload open half-sent for as long as the test wants.
"""

from __future__ import annotations

import asyncio
import select
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from benchmarks.hub import HubProcess
from tests.hubkit import Device, body, declared_upload, hub_metric, register
from tests.waiting import until

pytestmark = [pytest.mark.timeout(300)]

MIB = 1 << 20
BUDGET_MIB = 64  # the least the CLI takes: one zstd upload may inflate to 64 MiB
DECLARED = 16 * MIB  # the upload limit (HubLimits.max_body_bytes): 4 of them fill the budget
SENT = 15 * MIB  # each client sends this much of its body, then waits
CLIENTS = 40  # 600 MiB of bodies in flight: the hub held them all before the budget
SLACK = 32 * MIB  # what the hub's own buffers, answers and allocator may add
_CBOR = {"content-type": "application/cbor"}


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def _answered(socks: list[socket.socket]) -> list[socket.socket]:
    readable, _, _ = select.select(socks, [], [], 0)
    return readable


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubProcess]:
    served = HubProcess(tmp_path, None, {}, ["--body-budget-mib", str(BUDGET_MIB)])
    try:
        yield served
    finally:
        served.stop()


def test_a_flood_of_uploads_is_held_within_the_budget_and_nothing_acknowledged_is_lost(
    hub: HubProcess, tmp_path: Path
) -> None:
    dev = Device()
    utid = register(hub.url, hub.admin, dev, "gw-1")
    before_flood = httpx.post(
        f"{hub.url}/v1/proofs", content=body(dev.window(50)[:2]), headers=_CBOR
    )
    assert before_flood.status_code == 200, before_flood.text
    next_window = body(dev.window(50)[:2])
    pid = hub.proc.pid
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
    rss_before = _status_kib(pid, "VmHWM") << 10

    socks = [declared_upload(hub.port, DECLARED, SENT) for _ in range(CLIENTS)]
    try:
        admitted = BUDGET_MIB * MIB // DECLARED
        asyncio.run(
            until(
                lambda: len(_answered(socks)) >= CLIENTS - admitted,
                what=f"{CLIENTS - admitted} uploads answered at once",
            )
        )
        answered = _answered(socks)
        assert len(answered) == CLIENTS - admitted  # the admitted ones wait for their bodies
        for sock in answered:
            head = sock.recv(4096).decode("latin-1")
            assert head.startswith("HTTP/1.1 503"), head[:200]
            assert "retry-after: 2" in head.lower() and '"error":"overloaded"' in head
        assert hub_metric(hub.url, hub.admin, "body_bytes_held") == admitted * DECLARED
        grown = (_status_kib(pid, "VmHWM") << 10) - rss_before
        assert grown < BUDGET_MIB * MIB + SLACK, (
            f"peak RSS grew by {grown // MIB} MiB with {CLIENTS} x {SENT // MIB} MiB in flight"
        )

        # a gateway's real upload meanwhile: told to come back, and nothing of it stored
        during = httpx.post(f"{hub.url}/v1/proofs", content=next_window, headers=_CBOR)
        assert during.status_code == 503, during.text
        assert during.headers["retry-after"] == "2"
        assert during.json()["error"] == "overloaded" and during.json()["request_id"]
    finally:
        for sock in socks:
            sock.close()  # the admitted ones go away half-sent: their charge is given back

    with sqlite3.connect(tmp_path / "hub.db") as db:
        (windows,) = db.execute("SELECT count(*) FROM windows WHERE utid = ?", (utid,)).fetchone()
    assert windows == 1  # what was acknowledged, and nothing of the refused upload

    def stored_again() -> bool:  # the same window sent again, as the agent's spool does
        r = httpx.post(f"{hub.url}/v1/proofs", content=next_window, headers=_CBOR)
        assert r.status_code in (200, 503), r.text
        return r.status_code == 200

    asyncio.run(until(stored_again, what="the budget given back"))
    assert hub_metric(hub.url, hub.admin, "body_bytes_held") == 0
    assert hub_metric(hub.url, hub.admin, "requests_shed_total") >= CLIENTS - admitted + 1
    assert "Traceback" not in hub.stderr.read_text(errors="replace")
