"""SIMULATED plants for capsules: a generic seeded profile for every capsule, physics- and
process-based models for the priority ones, all served over Modbus with hil_tests' server.

Nothing here is real data; every simulator says so in its ``describe()``.
"""

from capsules.sims.base import (
    FaultClock,
    Simulation,
    make_source,
    register_map,
    served,
    simulate,
)

__all__ = ["FaultClock", "Simulation", "make_source", "register_map", "served", "simulate"]
