"""Which units measure which quantity: a signal's unit must have its quantity's dimensions.

Dimensions come from pint's registry (SI and the usual engineering units); a few units of
the shop floor that pint reads otherwise or not at all are named here (ADR 0025).
"""

from __future__ import annotations

import functools
from types import MappingProxyType

import pint

__all__ = ["QUANTITIES", "UnitMismatch", "check_unit"]

# quantity -> a unit of it; a signal's unit must have the same pint dimensionality
QUANTITIES: MappingProxyType[str, str] = MappingProxyType(
    {
        "acceleration": "m/s^2",
        "amount_concentration": "mol/m^3",
        "angle": "degree",
        "area": "m^2",
        "count": "count",
        "current": "A",
        "current_density": "A/m^2",
        "density": "kg/m^3",
        "duration": "s",
        "electrical_conductivity": "S/m",
        "energy": "J",
        "force": "N",
        "fraction": "percent",
        "frequency": "Hz",
        "illuminance": "lux",
        "irradiance": "W/m^2",
        "length": "m",
        "magnetic_field_strength": "A/m",
        "magnetic_flux": "Wb",
        "magnetic_flux_density": "T",
        "magnetic_moment": "A*m^2",
        "mass": "kg",
        "mass_flow": "kg/s",
        "power": "W",
        "pressure": "Pa",
        "rate": "1/s",
        "resistance": "ohm",
        "speed": "m/s",
        "temperature": "K",
        "torque": "N*m",
        "viscosity": "Pa*s",
        "voltage": "V",
        "volume": "m^3",
        "volume_flow": "m^3/s",
        # ratios read on a log scale and money: pint has no dimension for these
        "level": "dB",
        "attenuation": "dB/mm",
        "money": "EUR",
    }
)

# units pint cannot place, or places where the shop floor does not: unit -> quantity
_NAMED: MappingProxyType[str, str] = MappingProxyType(
    {
        "dB": "level",
        "dBm": "level",
        "dB/mm": "attenuation",
        "dB/m": "attenuation",
        "EUR": "money",
        "USD": "money",
        "g": "acceleration",  # vibration RMS in g (standard gravity), never grams here
        "pH": "fraction",  # a log ratio of activity; dimensionless
    }
)


class UnitMismatch(ValueError):
    """The unit is unknown, or measures another quantity; the message says which."""


@functools.cache
def _registry() -> pint.UnitRegistry:  # type: ignore[type-arg]  # pint's generic is internal
    return pint.UnitRegistry()


def _dimensionality(unit: str) -> str:
    try:
        return str(_registry().Quantity(1, unit).dimensionality)
    except (pint.errors.PintError, AttributeError, TypeError, ValueError, AssertionError) as err:
        raise UnitMismatch(f"unit {unit!r} is not a unit pint knows") from err


def check_unit(unit: str, quantity: str) -> None:
    """Raise ``UnitMismatch`` unless ``unit`` measures ``quantity``."""
    if quantity not in QUANTITIES:
        raise UnitMismatch(f"quantity {quantity!r} is not one of {', '.join(sorted(QUANTITIES))}")
    named = _NAMED.get(unit)
    if named is not None or quantity in {"level", "attenuation", "money"}:
        if named != quantity:
            raise UnitMismatch(
                f"unit {unit!r} does not measure {quantity} (expected e.g. {QUANTITIES[quantity]})"
            )
        return
    got, want = _dimensionality(unit), _dimensionality(QUANTITIES[quantity])
    if got != want:
        raise UnitMismatch(
            f"unit {unit!r} has dimensions {got}, but {quantity} needs {want} "
            f"(e.g. {QUANTITIES[quantity]})"
        )
