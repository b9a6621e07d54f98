"""The simulated bus for the unix port: ADC, I2C, UART and WDT shaped like ``machine``'s.

Each sensor's physical value is a sine around ``sim.base`` plus noise; a HIL rig writes
``sim_faults.json`` into the node's folder to make a sensor stuck, drift, spike, noisy, hang
or fail. The devices turn the value into raw counts, so ``hw`` decodes them as on a device.
"""

import json
import math
import os
import time

_root = "."
_devices = {}  # (kind, bus or pin, address) -> the sensor spec it simulates
_faults = {}
_faults_mtime = None
_t0 = time.time()


def set_root(root):
    global _root
    _root = root


def _load_faults():
    global _faults, _faults_mtime
    path = _root + "/sim_faults.json"
    try:
        mtime = os.stat(path)[8]
    except OSError:
        _faults, _faults_mtime = {}, None
        return
    if mtime != _faults_mtime:
        try:
            with open(path) as f:
                _faults = json.load(f)
        except (OSError, ValueError):
            _faults = {}
        _faults_mtime = mtime


def _rand():
    return int.from_bytes(os.urandom(2), "big") / 65535.0


def _key(spec):
    kind = spec.get("kind", "adc")
    if kind == "adc":
        return ("adc", spec.get("pin", 0), 0)
    if kind == "i2c":
        return ("i2c", spec.get("bus", 0), spec.get("addr", 0x48))
    return ("uart", spec.get("uart", 1), 0)


def attach(spec):
    """Put a simulated device where ``spec`` says the sensor is wired."""
    _devices[_key(spec)] = spec


def physical(spec):
    """The simulated sensor's true value now, with any fault applied."""
    _load_faults()
    sim = spec.get("sim", {})
    t = time.time() - _t0
    v = sim.get("base", 20.0) + sim.get("amp", 1.0) * math.sin(2 * math.pi * t / sim.get("period_s", 60.0))
    v += (_rand() - 0.5) * 2 * sim.get("noise", 0.01)
    fault = _faults.get(spec.get("name"), {})
    mode = fault.get("mode")
    if mode == "stuck":
        return fault.get("value", sim.get("base", 20.0))
    if mode == "drift":
        return v + fault.get("rate", 0.1) * (time.time() - fault.get("since", time.time()))
    if mode == "spike" and _rand() < fault.get("p", 0.2):
        return v + fault.get("size", 50.0)
    if mode == "noise":
        return v + (_rand() - 0.5) * 2 * fault.get("size", 5.0)
    if mode == "hang":
        while True:  # a wedged driver: only the watchdog gets the node out of here
            time.sleep(1)
    if mode == "error":
        raise OSError(19)  # ENODEV, as a missing I2C device answers
    return v


def Pin(n):
    return n


class ADC:
    def __init__(self, pin):
        self.spec = _devices[("adc", pin, 0)]

    def read_u16(self):
        s = self.spec
        raw = (physical(s) - s.get("offset", 0.0)) / s.get("scale", 1.0)
        return max(0, min(65535, int(raw + 0.5)))


class I2C:
    def __init__(self, bus, scl=None, sda=None, freq=100000):
        self.bus = bus

    def readfrom_mem(self, addr, reg, n):
        s = _devices.get(("i2c", self.bus, addr))
        if s is None:
            raise OSError(19)  # ENODEV: nothing answers at that address
        raw = int((physical(s) - s.get("offset", 0.0)) / s.get("scale", 0.0625))
        raw &= (1 << s.get("bits", 12)) - 1
        return (raw << s.get("shift", 4)).to_bytes(n, "big")


class UART:
    def __init__(self, uart, baudrate=9600, timeout=1000):
        self.spec = _devices[("uart", uart, 0)]

    def readline(self):
        s = self.spec
        return b"%.4f\r\n" % ((physical(s) - s.get("offset", 0.0)) / s.get("scale", 1.0))


_dogs = []


def stop_watchdogs():
    """A soft reboot over the REPL (the unix port has no machine.reset()): the old watchdogs
    stop, the next boot starts its own."""
    for d in _dogs:
        d.timeout = 0
    _dogs.clear()


class WDT:
    """A thread that kills the process (a reset) when not fed in time."""

    def __init__(self, timeout):
        import _thread

        self.timeout = timeout
        self.fed = time.ticks_ms()
        with open("/proc/self/stat") as f:
            self.pid = f.read().split()[0]
        _dogs.append(self)
        _thread.start_new_thread(self._watch, ())

    def feed(self):
        self.fed = time.ticks_ms()

    def _watch(self):
        while time.ticks_diff(time.ticks_ms(), self.fed) < self.timeout:
            time.sleep_ms(50)
        if not self.timeout:  # stopped by a soft reboot
            return
        print("watchdog: not fed for %d ms, resetting" % self.timeout)
        os.system("kill -9 " + self.pid)
