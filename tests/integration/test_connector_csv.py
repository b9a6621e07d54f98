"""CSV drop folder through the real agent runtime and spool: each file once, even across a
restart and when the same bytes are dropped again; bad rows quarantined with line numbers
while the good rows of the file are kept; a file still being written is not read early; a
crash between commit and ledger shows up as a counted replay.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import logging
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from agent.config import AgentConfig, parse_config
from agent.connectors.csvdrop import CsvDropConnector, Ledger
from agent.connectors.registry import build_connectors
from agent.runtime import AgentRuntime, build_runtime
from attestation.signers.software import SoftwareSigner
from tests.waiting import until

pytestmark = pytest.mark.timeout(120)
SIGNER = SoftwareSigner.generate()
GOOD = """time,weight_kg,moisture
2026-11-25T08:00:00+00:00,1200.5,12.1
2026-11-25T08:05:00+00:00,1198.0,12.3
2026-11-25T08:10:00+00:00,1201.2,12.0
"""


def _config(tmp: Path, settle_ms: int = 0) -> AgentConfig:
    text = f"""
[device]
name = "gw"
[window]
max_readings = 1000
max_ms = 60000
[[csv]]
name = "erp"
folder = "drop"
timestamp_column = "time"
settle_ms = {settle_ms}
poll_interval_ms = 20
[[csv.signals]]
name = "batch_weight"
column = "weight_kg"
unit = "kg"
[[csv.signals]]
name = "moisture"
column = "moisture"
unit = "%"
"""
    (tmp / "drop").mkdir(exist_ok=True)  # check-config refuses a missing folder
    return parse_config(text, str(tmp / "agent.toml"), base_dir=tmp)


@asynccontextmanager
async def _agent(cfg: AgentConfig) -> AsyncIterator[tuple[AgentRuntime, CsvDropConnector]]:
    (conn,) = build_connectors(cfg)
    assert isinstance(conn, CsvDropConnector)
    runtime = build_runtime(cfg, SIGNER, [conn])
    stop = asyncio.Event()
    task = asyncio.create_task(runtime.run(stop))
    try:
        yield runtime, conn
    finally:
        stop.set()
        await task


def _stored(cfg: AgentConfig) -> list[tuple[str, float]]:
    with sqlite3.connect(cfg.spool.path) as db:
        return db.execute("SELECT signal, value FROM readings ORDER BY seq").fetchall()


async def test_each_file_once_bad_rows_quarantined_good_rows_kept(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    drop = tmp_path / "drop"
    mixed = GOOD + "2026-11-25T08:15:00+00:00,heavy,12.2\n" + "2026-11-25T08:20:00,1190.0,12.2\n"
    mixed += "2026-11-25T08:25:00+00:00,1195.0\n" + "1764060000,1193.0,11.9\n"
    (drop / "batch-1.csv").write_text(mixed)
    async with _agent(cfg) as (runtime, conn):
        await until(lambda: conn.files_done == 1)
        assert runtime.counters.readings_committed == 6  # committed before the ledger entry
        (drop / "batch-1-again.csv").write_text(mixed)  # the same bytes, dropped twice
        await until((drop / "done" / "batch-1-again.csv").exists)
    assert _stored(cfg) == [
        ("batch_weight", 1200.5), ("moisture", 12.1),
        ("batch_weight", 1198.0), ("moisture", 12.3),
        ("batch_weight", 1201.2), ("moisture", 12.0),
    ]  # fmt: skip
    with (drop / "quarantine" / "batch-1.csv.bad.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(int(r["line"]), r["reason"]) for r in rows] == [
        (5, "weight_kg: not a number: heavy"),
        (6, "time: 2026-11-25T08:20:00 has no UTC offset (or set timezone)"),
        (7, "2 fields, the header has 3"),
        (8, "time: not a time in iso8601: 1764060000"),
    ]
    assert rows[0]["row"] == "2026-11-25T08:15:00+00:00,heavy,12.2"
    assert conn.errors == {"<row>": 4}  # one label however many files: bounded metric series
    assert sorted(p.name for p in (drop / "done").iterdir()) == ["batch-1-again.csv", "batch-1.csv"]


async def test_a_restart_ingests_nothing_twice(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    drop = tmp_path / "drop"
    (drop / "a.csv").write_text(GOOD)
    async with _agent(cfg) as (_, conn):
        await until(lambda: conn.files_done == 1)
    (drop / "done" / "a.csv").rename(drop / "a.csv")  # an operator puts it back by mistake
    (drop / "b.csv").write_text(GOOD.replace("1200.5", "999.0"))
    async with _agent(cfg) as (_, conn):
        # a file leaves the folder in a worker thread just before it is counted: wait for both
        await until(
            lambda: (
                not (drop / "a.csv").exists()
                and not (drop / "b.csv").exists()
                and conn.files_done >= 1
            )
        )
        assert conn.files_done == 1  # b only; a was known by its bytes
    values = [v for s, v in _stored(cfg) if s == "batch_weight"]
    assert values == [1200.5, 1198.0, 1201.2, 999.0, 1198.0, 1201.2]


async def test_a_file_still_being_written_is_not_read_early(tmp_path: Path) -> None:
    cfg = _config(tmp_path, settle_ms=1500)
    drop = tmp_path / "drop"
    lines = GOOD.splitlines(keepends=True)
    async with _agent(cfg) as (_, conn):
        with (drop / "slow.csv").open("w") as f:
            for line in lines:
                f.write(line)
                f.flush()
                await asyncio.sleep(0.05)  # the writer pauses between rows, far below settle_ms
                assert conn.files_done == 0
        await until(lambda: conn.files_done == 1)
    assert len(_stored(cfg)) == 6


async def test_a_crash_between_commit_and_ledger_is_a_visible_replay(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    drop = tmp_path / "drop"
    (drop / "a.csv").write_text(GOOD)
    # the state a crash leaves after the rows were emitted and before the ledger entry
    ledger = Ledger(drop / ".factoryops" / "ledger.sqlite")
    assert ledger.begin(hashlib.sha256(GOOD.encode()).hexdigest(), "a.csv") is False
    ledger.close()
    async with _agent(cfg) as (_, conn):
        await until(lambda: conn.files_done == 1)
        assert conn.replays == 1  # said out loud (and logged), never silent
        (drop / "b.csv").write_text(GOOD.replace("1200.5", "999.0"))
        await until(lambda: conn.files_done == 2)
        assert conn.replays == 1  # an ordinary file is no replay
    ledger = Ledger(drop / ".factoryops" / "ledger.sqlite")
    assert ledger.count() == 2 and not ledger.begin("unseen", "x.csv")
    ledger.close()


async def test_a_file_renamed_into_place_is_taken_without_waiting_to_settle(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "agent.connectors.csvdrop")
    cfg = _config(tmp_path, settle_ms=3_600_000)  # an hour: only a rename gets a file in
    drop = tmp_path / "drop"
    async with _agent(cfg) as (_, conn):
        await until(lambda: "csv erp: watching" in caplog.text, what="the watch logged")
        (drop / ".batch.tmp").write_text(GOOD)  # a name the pattern does not take
        (drop / "still-writing.csv").write_text(GOOD)  # not renamed: waits for its hour
        (drop / ".batch.tmp").rename(drop / "batch.csv")
        await until(lambda: conn.files_done == 1, what="the renamed file taken")
        assert (drop / "still-writing.csv").exists()
    assert len(_stored(cfg)) == 6
    assert any(
        r.levelno == logging.INFO and f"watching {drop}" in r.getMessage() for r in caplog.records
    )


async def test_empty_and_header_only_files_are_moved_alike_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = _config(tmp_path)
    drop = tmp_path / "drop"
    (drop / "empty.csv").write_text("")
    (drop / "header.csv").write_text(GOOD.splitlines()[0] + "\n")
    async with _agent(cfg) as (_, conn):
        await until(lambda: conn.files_done == 2)
    assert conn.empty_files == 2 and conn.errors == {}
    assert sorted(p.name for p in (drop / "done").iterdir()) == ["empty.csv", "header.csv"]
    assert not (drop / "quarantine").exists()
    assert caplog.text.count("has no data rows (empty or header only)") == 2


async def test_a_folder_that_vanishes_is_never_created(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = _config(tmp_path)
    (tmp_path / "drop").rmdir()  # unmounted after check-config
    (conn,) = build_connectors(cfg)
    assert isinstance(conn, CsvDropConnector)

    async def emit(*_: object) -> None:
        raise AssertionError("nothing to read")

    task = asyncio.create_task(conn.run(emit))
    try:
        await until(lambda: "is gone; not created" in caplog.text, what="the refusal logged")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert not (tmp_path / "drop").exists()


async def test_a_writer_that_pauses_past_settle_is_reported_not_silent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = _config(tmp_path, settle_ms=100)
    drop = tmp_path / "drop"
    lines = GOOD.splitlines(keepends=True)
    async with _agent(cfg) as (_, conn):
        with (drop / "paused.csv").open("w") as f:
            f.writelines(lines[:2])
            f.flush()
            await until(lambda: conn.files_done == 1, what="taken during the pause")
            f.writelines(lines[2:])  # the writer goes on, into the file now in done/
            f.flush()
            await until(lambda: conn.errors.get("<late write>") == 1, what="the late write seen")
    assert "grew by" in caplog.text and "raise settle_ms" in caplog.text
