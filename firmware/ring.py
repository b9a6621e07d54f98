"""A bounded ring of records in one file (flash on a device): push at the tail, peek and pop
at the head, so readings drain oldest-first after an outage and survive a power loss.

Layout: a 16-byte header (magic, slot size, slot count, head, count, dropped) then fixed
slots of ``2-byte length + record``. A slot is written before the header that counts it, so
a power loss mid-push loses at most that record, never the ring. When full, the oldest record
is dropped and counted: the agent sees the jump in the node's seq.
"""

import struct

_MAGIC = b"FORB"
_HEADER = "!4sHHHHI"
_HEADER_SIZE = 16


class Ring:
    def __init__(self, path, slot_size=256, slots=256):
        self.path = path
        try:
            self.f = open(path, "r+b")
            magic, self.slot_size, self.slots, self.head, self.count, self.dropped = struct.unpack(
                _HEADER, self.f.read(_HEADER_SIZE)
            )
            if magic != _MAGIC:
                raise ValueError("not a ring file")
        except (OSError, ValueError):
            # a missing or foreign file: start empty with the geometry asked for
            self.f = open(path, "w+b")
            self.slot_size, self.slots, self.head, self.count, self.dropped = slot_size, slots, 0, 0, 0
            self._header()
            zero = bytes(slot_size)
            for _ in range(slots):
                self.f.write(zero)
            self.f.flush()

    def __len__(self):
        return self.count

    def _header(self):
        self.f.seek(0)
        self.f.write(struct.pack(_HEADER, _MAGIC, self.slot_size, self.slots, self.head, self.count, self.dropped))
        self.f.flush()

    def _seek(self, index):
        self.f.seek(_HEADER_SIZE + (index % self.slots) * self.slot_size)

    def push(self, record):
        if len(record) + 2 > self.slot_size:
            raise ValueError("record of %d bytes exceeds slot size %d" % (len(record), self.slot_size))
        if self.count == self.slots:
            self.head = (self.head + 1) % self.slots
            self.count -= 1
            self.dropped += 1
        self._seek(self.head + self.count)
        self.f.write(struct.pack("!H", len(record)) + record)
        self.f.flush()
        self.count += 1
        self._header()

    def peek(self):
        if not self.count:
            return None
        self._seek(self.head)
        (n,) = struct.unpack("!H", self.f.read(2))
        if n + 2 > self.slot_size:
            # a torn slot: drop it rather than wedge the node forever
            self.pop()
            return self.peek()
        return self.f.read(n)

    def pop(self):
        if self.count:
            self.head = (self.head + 1) % self.slots
            self.count -= 1
            self._header()

    def close(self):
        self.f.close()
