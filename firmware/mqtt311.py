"""A small MQTT 3.1.1 client over a plain socket: CONNECT, PUBLISH QoS 0/1, PINGREQ, DISCONNECT.

PyPI's micropython-umqtt.simple is an sdist pip cannot install, and the node needs only this.
Every wait has a timeout; any protocol surprise raises MqttError and the caller reconnects.
"""

import socket
import struct
import time

try:
    import select
except ImportError:  # pragma: no cover - every supported port has select
    select = None


class MqttError(Exception):
    pass


def _varlen(n):
    # MQTT 3.1.1 §2.2.3 remaining length: 7 bits a byte, continuation in the top bit
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def _str(s):
    if isinstance(s, str):
        s = s.encode()
    return struct.pack("!H", len(s)) + s


class Client:
    def __init__(self, client_id, host, port=1883, keepalive_s=30, timeout_s=5):
        self.client_id = client_id
        self.host = host
        self.port = port
        self.keepalive_s = keepalive_s
        self.timeout_s = timeout_s
        self.sock = None
        self.pid = 0
        self.last_io = 0

    def connect(self, clean_session=True):
        addr = socket.getaddrinfo(self.host, self.port)[0][-1]
        self.sock = socket.socket()
        self.sock.settimeout(self.timeout_s)
        try:
            self.sock.connect(addr)
            flags = 0x02 if clean_session else 0
            # §3.1.2: protocol name "MQTT", level 4 (3.1.1), flags, keep-alive seconds
            var = _str("MQTT") + bytes((4, flags)) + struct.pack("!H", self.keepalive_s)
            body = var + _str(self.client_id)
            self._send(b"\x10" + _varlen(len(body)) + body)
            kind, data = self._read_packet()
            if kind != 0x20 or len(data) != 2:
                raise MqttError("expected CONNACK, got packet type %d" % (kind >> 4))
            if data[1] != 0:
                raise MqttError("broker refused the connection, return code %d" % data[1])
        except Exception:
            self.close()
            raise

    def publish(self, topic, payload, qos=1):
        """Send one message; with QoS 1 return only after the broker's PUBACK."""
        if qos:
            self.pid = self.pid % 65535 + 1
            body = _str(topic) + struct.pack("!H", self.pid) + payload
            self._send(bytes((0x32,)) + _varlen(len(body)) + body)
            while True:
                kind, data = self._read_packet()
                if kind == 0x40 and struct.unpack("!H", data)[0] == self.pid:
                    return
                if kind in (0xD0, 0x40):  # PINGRESP, or a late PUBACK of an older id
                    continue
                raise MqttError("expected PUBACK, got packet type %d" % (kind >> 4))
        body = _str(topic) + payload
        self._send(bytes((0x30,)) + _varlen(len(body)) + body)

    def ping_if_due(self):
        # §3.1.2.10: the client must send something within the keep-alive period
        if time.ticks_diff(time.ticks_ms(), self.last_io) > self.keepalive_s * 500:
            self._send(b"\xc0\x00")

    def disconnect(self):
        try:
            if self.sock:
                self._send(b"\xe0\x00")
        except OSError:
            pass
        self.close()

    def close(self):
        if self.sock:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None

    def _send(self, data):
        if self.sock is None:
            raise MqttError("not connected")
        view = memoryview(data)
        while view:
            n = self.sock.write(view) if hasattr(self.sock, "write") else self.sock.send(view)
            if not n:
                raise MqttError("connection closed while sending")
            view = view[n:]
        self.last_io = time.ticks_ms()

    def _read_exact(self, n):
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise MqttError("broker closed the connection")
            out += chunk
        return out

    def _read_packet(self):
        if self.sock is None:
            raise MqttError("not connected")
        head = self._read_exact(1)[0]
        length = 0
        shift = 0
        while True:
            b = self._read_exact(1)[0]
            length |= (b & 0x7F) << shift
            if not b & 0x80:
                break
            shift += 7
            if shift > 21:
                raise MqttError("malformed remaining length")
        return head & 0xF0, self._read_exact(length) if length else b""
