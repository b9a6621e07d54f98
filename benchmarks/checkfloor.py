"""The checks' floor: the CPU a proof costs before the hub's own code, on this machine.

Every accepted proof is parsed (rule 1), its signature verified (rule 4) and its leaves
hashed into the root it signs (rule 7; docs/protocol.md): fixed work that no change to the
hub's code removes, done by OpenSSL's ECDSA and by the leaves' C check
(``attestation/_native``). ``bench fleet`` times the three here, in this process, on the
hub's CPU, beside the HTTP floor (``benchmarks/httpfloor.py``); the two together say how
many gateways one core of this machine could serve if the hub did nothing else, with no
storage and no headroom (docs/performance.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization

from attestation.cose import PublicKey
from benchmarks.fleetload import SimDevice, WindowTemplate
from cloud_sync import chain
from cloud_sync.settings import HubLimits

__all__ = ["ChecksFloor", "checks_floor"]


@dataclass(frozen=True)
class ChecksFloor:
    """Microseconds of CPU a proof for each fixed check (the best of several rounds)."""

    parse_us: float
    signature_us: float
    leaves_us: float

    @property
    def total_us(self) -> float:
        return self.parse_us + self.signature_us + self.leaves_us

    def as_json(self) -> dict[str, float]:
        return {
            "parse_us": round(self.parse_us, 1),
            "signature_us": round(self.signature_us, 1),
            "leaves_us": round(self.leaves_us, 1),
            "total_us": round(self.total_us, 1),
        }


def _best_us(step: Callable[[], object], times: int, rounds: int) -> float:
    """The fastest round's CPU microseconds a call (CPU time: what a hub core pays). The
    fastest, not the median: on a VM whose speed drifts the floor, and the ceiling made from
    it, are then the most generous the machine gave during the run."""
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        for _ in range(times):
            step()
        best = min(best, time.process_time() - started)
    return best / times * 1e6


def checks_floor(
    device: SimDevice, window: WindowTemplate, *, times: int = 500, rounds: int = 5
) -> ChecksFloor:
    """Time the parse, the signature and the leaves of ``device``'s first window, each as
    the hub's ingest calls them (``cloud_sync.chain``, the hub's default limits)."""
    policy = chain.Policy(True, HubLimits().proof)
    cose = device.coses[0]
    smp = chain.parse(cose, policy)
    loaded = serialization.load_der_public_key(device.public_key_der)
    if not isinstance(loaded, PublicKey):
        raise TypeError(f"{device.utid} has a key the hub would refuse")
    der = device.public_key_der
    chain.check_signature(smp, loaded, der)  # holds: a timing of a refusal would say nothing
    chain.check_leaves(smp, window.leaves, policy)
    return ChecksFloor(
        parse_us=_best_us(lambda: chain.parse(cose, policy), times, rounds),
        signature_us=_best_us(lambda: chain.check_signature(smp, loaded, der), times, rounds),
        leaves_us=_best_us(lambda: chain.check_leaves(smp, window.leaves, policy), times, rounds),
    )
