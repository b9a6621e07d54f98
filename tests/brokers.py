"""The private Mosquitto of hil_tests/broker.py, as the tests have always imported it, and
what tests of MQTT clients check against a broker."""

from typing import Any

import psutil

from hil_tests.broker import Mosquitto, mosquitto_available

__all__ = ["Mosquitto", "mosquitto_available", "sockets_to"]


def sockets_to(port: int) -> list[Any]:
    """This process's TCP connections to ``port`` that are still open (an MQTT client's
    connection is closed when it stops, not left to the garbage collector)."""
    return [c for c in psutil.Process().net_connections("tcp") if c.raddr and c.raddr.port == port]
