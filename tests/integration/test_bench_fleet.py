"""``factoryops bench fleet --quick``: every figure is printed and every check really ran.

Runs real hub processes on SQLite and PostgreSQL with small sizes; no speed is asserted
(the figures of a quick run mean little), only the JSON line's shape and the evidence that
the seeded log and the replicas' log were checked as one consistent tree.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import missing

pytestmark = [pytest.mark.services, pytest.mark.timeout(900)]

FIGURES = {
    "sqlite_one_core_proofs_per_s": float,
    "growth_ratio": float,
    "replicas_ratio": float,
    "replicas_ratio_ceiling": float,
    "gateways_per_core": int,
    "connection_reuse_cpu_ratio": float,
}


def test_quick_fleet_bench_prints_the_four_figures_after_checking_the_logs(
    postgres_url: str,
) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "factoryops", "bench", "fleet", "--quick", "--pg", postgres_url],
        capture_output=True,
        text=True,
        timeout=850,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:] + run.stdout[-2000:]
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    for key, kind in FIGURES.items():
        assert isinstance(figures[key], kind), (key, figures[key])
    assert figures["quick"] is True
    assert figures["readings_per_proof"] == 1000
    # the seeded log is a prefix of the hub's signed tree, by the hub's consistency proof
    assert figures["growth_seed_checked"] is True
    assert figures["growth_big_log"] > figures["growth_small_log"]
    # two hubs, one tree: 2 warm-up proofs + 4 loads (1 and 2 hubs, unconfined and held to
    # half a CPU) of 4 devices x 8 proofs, all checked; 2 loads when no quota could be set
    loads = 2 if figures["replicas_half_cpu_ratio"] is None else 4
    assert figures["replicas_consistency"] == {
        "checked": True,
        "entries": 2 + loads * 4 * 8,
        "hubs": 2,
        "consistency_from": (2 + loads * 4 * 8) // 2,
    }
    levels = figures["gateways_levels"]
    assert [lv["gateways"] for lv in levels] == [20]
    assert levels[0]["uploads"] == 20 * 2  # every gateway's two windows were answered
    baseline = figures["gateways_new_connection_baseline"]
    assert baseline["connections"] == "new each upload"
    assert baseline["uploads"] == 20 * 2
    assert figures["gateways_per_core"] in (0, 20)  # 0 when p99 missed the limit
    # the same uploads to the hub's web server alone: a baseline of the same run
    if figures["gateways_per_core"]:
        assert figures["http_floor"]["uploads"] == 20 * 2
        assert figures["http_floor"]["refused"] == 0
        # 40 requests are below the clock's tick of CPU time: None then, a figure at scale
        assert (
            figures["http_floor_us_per_request"] is None or figures["http_floor_us_per_request"] > 0
        )
    # the fixed checks of a proof, timed on the hub's CPU: each a real, positive figure
    checks = figures["checks_floor_us_per_proof"]
    assert set(checks) == {"parse_us", "signature_us", "leaves_us", "total_us"}
    assert all(checks[k] > 0 for k in checks), checks
    assert checks["total_us"] >= checks["leaves_us"] + checks["signature_us"]
    # timed again before the fleets: the machine's pace through the run, after over before
    before = figures["checks_floor_before_us_per_proof"]
    assert set(before) == set(checks) and all(before[k] > 0 for k in before), before
    drift = checks["total_us"] / before["total_us"]
    assert figures["machine_drift"] == pytest.approx(drift, rel=0.01)
    if figures["floor_us_per_proof"] is not None:  # an HTTP floor was measured beside them
        assert figures["floor_us_per_proof"] > checks["total_us"]
        assert figures["gateways_ceiling_at_floor"] > 0
    # replicas again with each hub held to half a CPU (a cgroup quota): two hubs' worth of
    # proofs, the same checked tree (its entries above count every round's loads)
    if figures["replicas_half_cpu_ratio"] is None:
        missing(f"replicas at half a CPU: {figures['replicas_half_cpu_not_measured']}")
    assert figures["replicas_half_cpu_ratio"] > 0
    assert figures["replicas_half_cpu_two_hubs_proofs_per_s"] > 0
