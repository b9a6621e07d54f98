"""The private Mosquitto of hil_tests/broker.py, as the tests have always imported it."""

from hil_tests.broker import Mosquitto, mosquitto_available

__all__ = ["Mosquitto", "mosquitto_available"]
