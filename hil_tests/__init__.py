"""hil_tests: the SIMULATED pump plant, its protocol servers, and fault-injection rigs."""

from hil_tests.errors import HilError

__all__ = ["HilError"]
