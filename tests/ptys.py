"""The pty pair lives with the rigs (hil_tests/ptys.py), which wire serial lines too."""

from hil_tests.ptys import PtyPair, socat_available

__all__ = ["PtyPair", "socat_available"]
