"""A SQLite hub keeps its windows' leaves in one append-only file beside the database
(ADR 0053): written and synced before the rows that point at them commit, read back byte for
byte, and a damaged file is named, never read as other bytes."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, func, select

from cloud_sync.app import create_app
from cloud_sync.settings import HubSettings
from cloud_sync.storage import leaffile
from cloud_sync.storage.leaffile import ALIGN, DIRECT_FROM, LeafFile, LeavesMissing, leaf_file_of
from cloud_sync.storage.migrate import alembic_config
from cloud_sync.storage.tables import window_leaves, windows
from tests.hubkit import Device, body, receipts_verify, register_software

CBOR = {"content-type": "application/cbor"}


def test_blobs_appended_are_read_back_byte_for_byte_at_their_offsets(tmp_path: Path) -> None:
    leaves = LeafFile(tmp_path / "hub.db-leaves")
    blobs = [os.urandom(n) for n in (28_000, 1, 70_000)]
    offsets = leaves.append(blobs)
    assert offsets == [0, 28_000, 28_001]  # one append: back to back
    more = leaves.append([b"next"])
    # after what is there: the large group above, written direct, ends padded to 4 KiB
    assert more == [24 * ALIGN if leaves.direct else 98_001]
    for blob, at in zip([*blobs, b"next"], [*offsets, *more], strict=True):
        assert leaves.read(at, len(blob)) == blob
    assert stat.S_IMODE((tmp_path / "hub.db-leaves").stat().st_mode) == 0o600


def _direct_allowed(directory: Path) -> bool:
    try:
        fd = os.open(directory / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600)
    except OSError:
        return False
    os.close(fd)
    return True


def test_large_groups_bypass_the_page_cache_from_4k_and_small_ones_pack(
    tmp_path: Path,
) -> None:
    """A busy hub's groups (at least DIRECT_FROM bytes) are written with O_DIRECT from a 4 KiB
    boundary where the file system allows it; a quiet hub's single windows go back to back
    through the page cache, so the padding never grows a small hub's file much."""
    leaves = LeafFile(tmp_path / "hub.db-leaves")
    assert leaves.append([b"s" * 5_000]) == [0]
    assert [leaves.direct] == [None]  # small: not even tried
    assert leaves.append([b"t" * 3]) == [5_000]
    big = [b"x" * (DIRECT_FROM - 10), b"y" * 10]
    direct = _direct_allowed(tmp_path)
    first = 2 * ALIGN if direct else 5_003
    assert leaves.append(big) == [first, first + DIRECT_FROM - 10]
    assert leaves.direct is direct
    assert leaves.append([b"z"]) == [first + DIRECT_FROM]  # a multiple of 4 KiB: no padding
    assert leaves.read(0, 5_000) == b"s" * 5_000 and leaves.read(5_000, 3) == b"ttt"
    assert leaves.read(first, DIRECT_FROM) == b"".join(big)
    assert leaves.read(first + DIRECT_FROM, 1) == b"z"


def test_the_kept_buffer_never_writes_an_earlier_group_into_the_padding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Direct writes reuse one aligned buffer (a fresh map faults in every page it is given);
    a smaller group after a larger one pads with zeros, not with the larger group's bytes, a
    group past ``KEEP_BUFFER`` gets a buffer of its own, and a closed file maps a new one."""
    direct = _direct_allowed(tmp_path)  # where refused, every group is packed: no padding
    monkeypatch.setattr(leaffile, "KEEP_BUFFER", 8 * DIRECT_FROM)
    path = tmp_path / "hub.db-leaves"
    leaves = LeafFile(path)
    large = [b"L" * (3 * DIRECT_FROM + 5)]
    small = [b"S" * (DIRECT_FROM + 7)]
    huge = [os.urandom(9 * DIRECT_FROM)]  # past the (lowered) KEEP_BUFFER
    at_large, at_small = leaves.append(large)[0], leaves.append(small)[0]
    at_huge = leaves.append(huge)[0]
    leaves.close()
    at_again = leaves.append(small)[0]
    raw = path.read_bytes()
    assert raw[at_large : at_large + len(large[0])] == large[0]
    end_small = at_small + len(small[0])
    assert raw[at_small:end_small] == small[0]
    assert raw[end_small:at_huge] == bytes(at_huge - end_small)  # zeros, not "L"s
    assert raw[at_huge : at_huge + len(huge[0])] == huge[0]
    assert raw[at_again : at_again + len(small[0])] == small[0]
    assert leaves.direct is direct
    assert at_huge == (-(-end_small // ALIGN) * ALIGN if direct else end_small)


def test_a_file_system_that_refuses_o_direct_gets_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every file system here takes O_DIRECT, so its refusal (EINVAL from open, as tmpfs on
    kernels before 6.6 answers) is given the way the kernel gives it: large groups are then
    written through the page cache too, back to back."""
    real_open = os.open

    def refusing(path: object, flags: int, *args: int) -> int:
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)  # type: ignore[arg-type]  # os.open's own types

    monkeypatch.setattr(os, "open", refusing)
    leaves = LeafFile(tmp_path / "hub.db-leaves")
    assert leaves.append([b"a" * 10]) == [0]
    assert leaves.append([b"b" * DIRECT_FROM, b"c"]) == [10, 10 + DIRECT_FROM]
    assert leaves.direct is False
    assert leaves.append([b"d" * DIRECT_FROM]) == [11 + DIRECT_FROM]
    assert leaves.read(0, 10) == b"a" * 10 and leaves.read(10 + DIRECT_FROM, 2) == b"cd"


def test_an_append_of_nothing_makes_no_file(tmp_path: Path) -> None:
    """A group of gap-record windows only has no leaves: no write, no sync."""
    assert LeafFile(tmp_path / "hub.db-leaves").append([]) == []
    assert not (tmp_path / "hub.db-leaves").exists()


def test_two_writers_of_one_file_never_write_the_same_bytes(tmp_path: Path) -> None:
    """Each append writes at the end the file has under its lock, not where its own process
    last wrote (a hub and a second process on one database)."""
    one, two = LeafFile(tmp_path / "x"), LeafFile(tmp_path / "x")
    a = one.append([b"a" * 10])
    b = two.append([b"b" * 5])
    c = one.append([b"c" * 3])
    assert (a, b, c) == ([0], [10], [15])
    assert one.read(0, 18) == b"a" * 10 + b"b" * 5 + b"c" * 3


def test_a_file_cut_short_or_missing_is_named_not_read_as_other_bytes(tmp_path: Path) -> None:
    path = tmp_path / "hub.db-leaves"
    leaves = LeafFile(path)
    leaves.append([b"x" * 100])
    os.truncate(path, 60)
    with pytest.raises(LeavesMissing, match=r"hub\.db-leaves ends before bytes 0\.\.100"):
        leaves.read(0, 100)
    path.unlink()
    with pytest.raises(LeavesMissing, match=r"hub\.db-leaves is missing"):
        leaves.read(0, 100)


def test_the_leaves_file_sits_beside_its_database() -> None:
    assert leaf_file_of(Path("/srv/hub/hub.db")) == Path("/srv/hub/hub.db-leaves")


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[tuple[TestClient, HubSettings]]:
    s = HubSettings.create(tmp_path / "hub", allow_software_keys=True, open_reads=True)
    with TestClient(create_app(s), raise_server_exceptions=False) as client:
        yield client, s


def _db(s: HubSettings) -> Path:
    return s.data_dir / "hub.db"


Signed = tuple[bytes, list[bytes]]


def _uploaded(client: TestClient, *windows: Signed) -> None:
    assert client.post("/v1/proofs", content=body(*windows), headers=CBOR).status_code == 200


def _device_with(
    hub: tuple[TestClient, HubSettings], *sizes: int
) -> tuple[Device, str, list[Signed]]:
    """A registered device that uploaded a window of each size in one request: it, its
    UTID and the windows as signed."""
    client, s = hub
    dev = Device()
    utid = register_software(client, s, dev)
    signed = [dev.window(n)[:2] for n in sizes]
    _uploaded(client, *signed)
    return dev, utid, signed


def test_a_sqlite_hub_writes_leaves_to_the_file_and_its_receipts_verify(
    hub: tuple[TestClient, HubSettings],
) -> None:
    client, s = hub
    _, utid, (w0, w1) = _device_with(hub, 4, 3)
    engine = create_engine(f"sqlite:///{_db(s)}")
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(window_leaves)).scalar_one() == 0
        where = conn.execute(
            select(windows.c.leaves_offset, windows.c.leaves_length).order_by(windows.c.window)
        ).all()
    engine.dispose()
    blob0, blob1 = b"".join(w0[1]), b"".join(w1[1])
    assert [tuple(r) for r in where] == [(0, len(blob0)), (len(blob0), len(blob1))]
    data = leaf_file_of(_db(s)).read_bytes()
    assert data[: len(blob0 + blob1)] == blob0 + blob1  # exactly what was signed
    assert data == blob0 + blob1  # a small group: written back to back, no padding
    assert receipts_verify(client, s, utid, range(7))


def test_bytes_a_crash_left_unreferenced_are_skipped_and_the_chain_goes_on(
    hub: tuple[TestClient, HubSettings],
) -> None:
    """A crash after the leaves were written and before their rows committed leaves bytes
    no row points at: the next windows go after them and every receipt still verifies."""
    client, s = hub
    dev, utid, _ = _device_with(hub, 4)
    with leaf_file_of(_db(s)).open("ab") as f:
        f.write(os.urandom(5_000))  # what a killed writer left
    _uploaded(client, dev.window(3)[:2])
    assert receipts_verify(client, s, utid, range(7))


def test_a_damaged_leaves_file_answers_a_json_500_never_a_wrong_receipt(
    hub: tuple[TestClient, HubSettings],
) -> None:
    client, s = hub
    _, utid, _ = _device_with(hub, 4)
    os.truncate(leaf_file_of(_db(s)), 10)
    r = client.get(f"/v1/devices/{utid}/readings/1/receipt")
    assert r.status_code == 500
    assert r.headers["content-type"] == "application/json"
    assert r.json()["error"] == "corrupt_store"
    assert "ends before bytes" in r.json()["detail"]
    assert r.json()["request_id"]


def test_0014_will_not_downgrade_while_leaves_live_in_the_file(
    hub: tuple[TestClient, HubSettings],
) -> None:
    from alembic import command

    _, s = hub
    _device_with(hub, 2)
    engine = create_engine(f"sqlite:///{_db(s)}")
    with engine.begin() as conn, pytest.raises(RuntimeError, match="1 windows keep their leaves"):
        command.downgrade(alembic_config(conn), "0013")
    engine.dispose()


def test_hub_check_passes_a_whole_store_and_names_each_damaged_window(
    hub: tuple[TestClient, HubSettings],
) -> None:
    """``factoryops hub check``: OK on what was uploaded; a flipped byte in the file is a
    root mismatch and a cut-short file a missing window, each named, exit 1."""
    from click.testing import CliRunner

    from cloud_sync.cli import hub as hub_cli

    _, s = hub
    _, utid, signed = _device_with(hub, 4, 3)
    run = ["check", "--data-dir", str(s.data_dir)]
    ok = CliRunner().invoke(hub_cli, run)
    assert ok.exit_code == 0, ok.output
    assert "OK: 2 windows, 7 readings" in ok.output
    path = leaf_file_of(_db(s))
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # a value's byte in the second window's last leaf
    path.write_bytes(bytes(data))
    flipped = CliRunner().invoke(hub_cli, run)
    assert flipped.exit_code == 1
    assert f"FAILED {utid} window 1: its stored leaves" in flipped.output
    assert "1 of 2 windows, 7 readings failed" in flipped.output
    os.truncate(path, len(b"".join(signed[0][1])) - 1)
    cut = CliRunner().invoke(hub_cli, run)
    assert cut.exit_code == 1
    assert f"FAILED {utid} window 0: " in cut.output and "ends before bytes" in cut.output
    assert "2 of 2 windows" in cut.output
