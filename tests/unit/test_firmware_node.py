"""The node firmware's parts, run in the MicroPython unix port: HMAC equals CPython's, the
ring drains oldest-first and stays bounded across a reopen, the boot counter never repeats,
and a reading's wire form verifies under the agent's checks."""

from __future__ import annotations

import hashlib
import hmac
import json
import random
from pathlib import Path

import pytest

from agent.connectors.nodeauth import (
    Instant,
    NodeGate,
    NodeLimits,
    NodeRefused,
    parse_and_verify,
)
from tests.firmware_run import run_micropython


def test_node_hmac_equals_cpython_hmac_for_keys_and_messages_of_every_length() -> None:
    rng = random.Random(21)
    cases = [
        (rng.randbytes(k), rng.randbytes(m))
        for k in (0, 1, 32, 64, 65, 200)
        for m in (0, 1, 63, 64, 1000)
    ]
    stdin = "\n".join(f"{k.hex()} {m.hex()}" for k, m in cases).encode()
    out = run_micropython(
        "from hmac256 import hexdigest\n"
        "for line in sys.stdin.read().split('\\n'):\n"
        "    k, m = line.split(' ')\n"
        "    print(hexdigest(bytes.fromhex(k), bytes.fromhex(m)))\n",
        stdin=stdin,
    )
    expected = [hmac.new(k, m, hashlib.sha256).hexdigest() for k, m in cases]
    assert out.split() == expected


def test_the_ring_drains_oldest_first_and_drops_the_oldest_when_full(tmp_path: Path) -> None:
    ring = tmp_path / "ring.bin"
    out = run_micropython(
        "from ring import Ring\n"
        "r = Ring(sys.argv[1], 32, 4)\n"
        "for i in range(6): r.push(b'rec%d' % i)\n"
        "r.close()\n"
        "r = Ring(sys.argv[1], 64, 99)\n"  # a reopen keeps the file's geometry and contents
        "print(len(r), r.dropped, r.slots)\n"
        "while len(r):\n"
        "    print(r.peek().decode()); r.pop()\n",
        str(ring),
    )
    assert out.split() == ["4", "2", "4", "rec2", "rec3", "rec4", "rec5"]


def test_a_record_larger_than_a_slot_is_refused_not_cut(tmp_path: Path) -> None:
    out = run_micropython(
        "from ring import Ring\n"
        "r = Ring(sys.argv[1], 16, 2)\n"
        "try:\n    r.push(bytes(15))\nexcept ValueError as e:\n    print('refused', len(r))\n",
        str(tmp_path / "ring.bin"),
    )
    assert out.split() == ["refused", "0"]


def test_the_boot_counter_rises_on_every_start_and_refuses_a_garbled_file(tmp_path: Path) -> None:
    code = (
        "import store\ntry:\n    print(store.next_boot(sys.argv[1]))\n"
        "except store.StoreError as e:\n    print('error', e)\n"
    )
    assert [run_micropython(code, str(tmp_path)).strip() for _ in range(3)] == ["1", "2", "3"]
    (tmp_path / "boot.txt").write_text("x7")
    assert run_micropython(code, str(tmp_path)).startswith("error boot.txt is unreadable")


def test_a_node_reading_verifies_under_the_agent_checks_and_a_flipped_byte_does_not() -> None:
    key = bytes(range(32))
    out = run_micropython(
        "import node\n"
        "body = node.encode('n1', 3, 17, 1796454548910, [['temp', 20.5, 'C']],"
        " [['flow', 'uart: no line']])\n"
        "sys.stdout.write(node.seal(bytes(range(32)), body).hex())\n"
    )
    wire = bytes.fromhex(out)
    reading = parse_and_verify(wire, {"n1": key}, NodeLimits())
    assert (reading.node, reading.boot, reading.seq) == ("n1", 3, 17)
    assert reading.values == (("temp", 20.5, "C"),)
    assert reading.errors == (("flow", "uart: no line"),)
    flipped = bytearray(wire)
    flipped[10] ^= 1
    with pytest.raises(NodeRefused) as refused:
        NodeGate({"n1": key}).admit(bytes(flipped), Instant(0, 0))
    assert refused.value.reason in {"bad_tag", "malformed"}
    json.loads(wire.split(b"\n")[0])  # the body is plain JSON, readable with mosquitto_sub


def test_a_node_whose_widest_reading_cannot_fit_a_ring_slot_refuses_to_start(
    tmp_path: Path,
) -> None:
    from hil_tests.nodes import SimNode

    node = SimNode(tmp_path, "n1", bytes(32), "t/n1", extra={"slot_bytes": 128}).provision()
    out = run_micropython(
        "import simhw, node, store\nsimhw.set_root(sys.argv[1])\n"
        "try:\n    node.Node(sys.argv[1], simhw)\nexcept store.StoreError as e:\n    print(e)\n",
        str(node.directory),
    )
    assert "the ring's slots hold 126: raise slot_bytes" in out
