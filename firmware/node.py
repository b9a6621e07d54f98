"""The sensor node's loop: sample, tag, append to the ring, drain the ring over MQTT.

Every reading goes into the ring (flash) before it is published and leaves it only after the
broker's PUBACK, so an outage or a power loss loses nothing the ring can hold; the ring
drains oldest-first. Each reading carries node id, boot, seq and an HMAC-SHA256 tag under
the node's key. The watchdog is fed once a turn; a hung sensor driver resets the node.
"""

import json
import os
import time

import hw
import store
from hmac256 import hexdigest
from mqtt311 import Client, MqttError
from ring import Ring

VERSION = 1


def log(*parts):
    print("node:", *parts)


def now_ms():
    if hasattr(time, "time_ns"):
        return time.time_ns() // 1000000
    return int(time.time() * 1000)


def backoff_ms(attempt, base_ms, cap_ms):
    """Full jitter: uniform in [0, min(cap, base * 2**attempt)] (as the agent's Backoff)."""
    ceiling = min(cap_ms, base_ms << min(attempt, 16))
    return int.from_bytes(os.urandom(2), "big") * ceiling // 65535


def encode(node_id, boot, seq, ts_ms, values, errors):
    doc = {"v": VERSION, "node": node_id, "boot": boot, "seq": seq, "ts": ts_ms, "r": values}
    if errors:
        doc["e"] = errors
    return json.dumps(doc).encode()


def seal(key, body):
    """The wire form: the JSON body, a newline, the hex HMAC-SHA256 of the body."""
    return body + b"\n" + hexdigest(key, body).encode()


class Node:
    def __init__(self, root, bus):
        cfg = store.load_config(root)
        self.key = store.load_key(root)
        self.cfg = cfg
        self.id = cfg["id"]
        self.topic = cfg["topic"]
        self.boot = store.next_boot(root)  # persisted before the first reading
        self.seq = 0
        self.period_ms = cfg.get("period_ms", 1000)
        self.drain_batch = cfg.get("drain_batch", 20)
        self.backoff = (cfg.get("backoff_base_ms", 200), cfg.get("backoff_cap_ms", 30000))
        self.sensors = [
            (spec["name"], spec.get("unit", ""), hw.make_sensor(bus, spec))
            for spec in cfg.get("sensors", [])
        ]
        prefix = "" if root in ("", ".") else root.rstrip("/") + "/"
        self.ring = Ring(prefix + "ring.bin", cfg.get("slot_bytes", 320), cfg.get("ring_slots", 256))
        # the longest reading this node can produce must fit a slot: refuse at boot, not
        # at the first unlucky value
        widest = [[name, -1.2345678e-300, unit] for name, unit, _ in self.sensors]
        worst = len(seal(self.key, encode(self.id, 2**31, 2**31, 2**41, widest, [])))
        if worst + 2 > self.ring.slot_size:
            raise store.StoreError(
                "a reading can take %d bytes, the ring's slots hold %d: raise slot_bytes"
                % (worst, self.ring.slot_size - 2)
            )
        self.client = Client(
            "fo-node-" + self.id,
            cfg["broker"],
            cfg.get("port", 1883),
            cfg.get("keepalive_s", 30),
            cfg.get("timeout_ms", 5000) / 1000,
        )
        self.wdt = hw.Watchdog(bus, cfg.get("watchdog_ms", 10000))
        log("boot", self.boot, "buffered", len(self.ring), "dropped", self.ring.dropped)

    def sample(self):
        values = []
        errors = []
        for name, unit, sensor in self.sensors:
            try:
                values.append([name, sensor.read(), unit])
            except (hw.SensorError, OSError) as err:
                errors.append([name, str(err)[:48]])
        self.seq += 1
        self.ring.push(seal(self.key, encode(self.id, self.boot, self.seq, now_ms(), values, errors)))

    def drain(self):
        """Publish up to ``drain_batch`` buffered readings; each leaves the ring on PUBACK."""
        for _ in range(self.drain_batch):
            record = self.ring.peek()
            if record is None:
                break
            self.client.publish(self.topic, record, 1)
            self.ring.pop()
            self.wdt.feed()
        self.client.ping_if_due()

    def run(self):
        connected = False
        attempt = 0
        next_try = time.ticks_ms()
        next_sample = time.ticks_ms()
        while True:
            self.wdt.feed()
            now = time.ticks_ms()
            if time.ticks_diff(now, next_sample) >= 0:
                self.sample()
                next_sample = time.ticks_add(next_sample, self.period_ms)
                if time.ticks_diff(now, next_sample) > 0:  # fell behind: do not burst
                    next_sample = time.ticks_add(now, self.period_ms)
            if not connected and time.ticks_diff(now, next_try) >= 0:
                try:
                    self.client.connect()
                    connected = True
                    attempt = 0
                    log("connected", self.cfg["broker"], "buffered", len(self.ring))
                except (OSError, MqttError) as err:
                    delay = backoff_ms(attempt, *self.backoff)
                    attempt += 1
                    next_try = time.ticks_add(now, delay)
                    log("connect failed:", err, "retry in", delay, "ms")
            if connected:
                try:
                    self.drain()
                except (OSError, MqttError) as err:
                    self.client.close()
                    connected = False
                    delay = backoff_ms(attempt, *self.backoff)
                    attempt += 1
                    next_try = time.ticks_add(time.ticks_ms(), delay)
                    log("link lost:", err, "retry in", delay, "ms")
            busy = connected and len(self.ring)
            if not busy:
                wait = time.ticks_diff(next_sample, time.ticks_ms())
                if not connected:
                    wait = min(wait, time.ticks_diff(next_try, time.ticks_ms()))
                if wait > 0:
                    time.sleep_ms(min(wait, 100))
