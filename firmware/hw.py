"""The hardware layer: sensors on ADC, I2C and UART, and the watchdog, over a bus provider.

``bus`` is the ``machine`` module on a device, or ``simhw`` on the unix port, so the decoding
below (raw counts -> engineering value) is the same code in both places.
"""


class SensorError(Exception):
    pass


class AdcSensor:
    """An analogue input: value = read_u16() * scale + offset."""

    def __init__(self, bus, spec):
        self.adc = bus.ADC(bus.Pin(spec.get("pin", 0)))
        self.scale = spec.get("scale", 1.0)
        self.offset = spec.get("offset", 0.0)

    def read(self):
        return self.adc.read_u16() * self.scale + self.offset


class I2cSensor:
    """A register read: ``nbytes`` big-endian from ``reg`` of ``addr``, shifted, signed, scaled.

    The defaults read a TMP102-class temperature sensor (12 bits in the top of 2 bytes,
    0.0625 degC a count).
    """

    def __init__(self, bus, spec):
        self.i2c = bus.I2C(
            spec.get("bus", 0),
            scl=bus.Pin(spec.get("scl", 22)),  # ESP32 DevKit defaults
            sda=bus.Pin(spec.get("sda", 21)),
            freq=spec.get("freq", 100000),
        )
        self.addr = spec.get("addr", 0x48)
        self.reg = spec.get("reg", 0)
        self.nbytes = spec.get("nbytes", 2)
        self.shift = spec.get("shift", 4)
        self.bits = spec.get("bits", 12)
        self.scale = spec.get("scale", 0.0625)
        self.offset = spec.get("offset", 0.0)

    def read(self):
        try:
            data = self.i2c.readfrom_mem(self.addr, self.reg, self.nbytes)
        except OSError as err:  # ENODEV / ETIMEDOUT: no answer on the bus
            raise SensorError("i2c 0x%02x: %s" % (self.addr, err))
        raw = int.from_bytes(data, "big") >> self.shift
        if raw & (1 << (self.bits - 1)):
            raw -= 1 << self.bits
        return raw * self.scale + self.offset


class UartSensor:
    """A sensor that prints one decimal number a line (RS-232/485 transmitters)."""

    def __init__(self, bus, spec):
        self.uart = bus.UART(
            spec.get("uart", 1),
            baudrate=spec.get("baudrate", 9600),
            timeout=spec.get("timeout_ms", 1000),
        )
        self.scale = spec.get("scale", 1.0)
        self.offset = spec.get("offset", 0.0)

    def read(self):
        line = self.uart.readline()
        if not line:
            raise SensorError("uart: no line before the timeout")
        try:
            return float(line.strip()) * self.scale + self.offset
        except ValueError:
            raise SensorError("uart: not a number: %r" % line[:32])


KINDS = {"adc": AdcSensor, "i2c": I2cSensor, "uart": UartSensor}


def make_sensor(bus, spec):
    """A sensor over ``bus``; the simulated bus is first told what the device measures."""
    if hasattr(bus, "attach"):
        bus.attach(spec)
    kind = spec.get("kind", "adc")
    if kind not in KINDS:
        raise SensorError("sensor %r: unknown kind %r" % (spec.get("name"), kind))
    return KINDS[kind](bus, spec)


class Watchdog:
    """machine.WDT: resets the node unless fed within ``timeout_ms``."""

    def __init__(self, bus, timeout_ms):
        self.wdt = bus.WDT(timeout=timeout_ms)

    def feed(self):
        self.wdt.feed()
