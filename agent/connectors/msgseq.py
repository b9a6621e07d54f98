"""Publisher sequence numbers on MQTT: a message lost upstream becomes a source gap, and a
QoS 1 redelivery is recognised and dropped. Pure: values in, verdicts out (ADR 0037).

A publisher numbers its messages (Sparkplug B's ``seq``, 0..255 then 0 again; or a JSON
field the config names). A jump in the numbers is messages that never reached us, whatever
lost them (the publisher's own queue, a bridge, a broker restart that dropped its queue):
stated as a source gap from the last message we had to the one that revealed the loss. A
message whose (seq, publisher timestamp) pair was seen recently is a redelivery (MQTT QoS 1
is at least once) and is not recorded again.

What cannot be told apart, and is therefore never dropped: a message with neither a
sequence number nor a publisher timestamp (two equal payloads may be two readings); a
redelivery that arrives after ``recent`` newer messages of its publisher (a broker resends
at most its in-flight window, 20 by default, so 1,024 is ample); and anything from a
publisher forgotten after ``max_publishers`` others were heard from since; and a Sparkplug
message without its (mandatory) timestamp, whose 0..255 seq alone repeats every 256 messages.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from attestation.microproof import SourceGap

__all__ = ["LOST_UPSTREAM", "Arrival", "PublisherSequences"]

# Source-gap reason (the closed set of attestation.microproof.SOURCE_GAP_REASONS): the
# publisher's link to us dropped what it sent, as a lost connection does.
LOST_UPSTREAM = "disconnected"
MAX_SOURCE_CHARS = 128  # a source gap's source (docs/protocol.md, payload key 16)


@dataclass(frozen=True, slots=True)
class Arrival:
    """What one message is: a redelivery to drop, or new, with what it reveals was lost."""

    duplicate: bool = False
    lost: int = 0  # messages the publisher numbered between the last one and this one
    gap: SourceGap | None = None


_NEW = Arrival()
_DUPLICATE = Arrival(duplicate=True)


@dataclass
class PublisherSequences:
    """Last sequence number and recent (seq, timestamp) pairs of each publisher.

    ``modulus``: the counter wraps there (256 for Sparkplug); None for a counter that only
    grows. A counter that goes back (not a redelivery) is a publisher that restarted: counted
    in ``restarts``, no gap (what it lost before restarting is not knowable here).
    """

    modulus: int | None = None
    recent: int = 1024
    max_publishers: int = 4096
    duplicates: int = 0
    lost: int = 0
    restarts: int = 0
    _last: collections.OrderedDict[str, tuple[int | None, int]] = field(
        default_factory=collections.OrderedDict
    )
    _seen: dict[str, collections.OrderedDict[tuple[int | None, int | None], None]] = field(
        default_factory=dict
    )

    def arrive(
        self,
        publisher: str,
        seq: int | None,
        ts_ns: int | None,
        now_ns: int,
        *,
        rebirth: bool = False,
    ) -> Arrival:
        """Judge one message of ``publisher``; ``rebirth``: its counter starts again here
        (a Sparkplug NBIRTH). ``ts_ns`` is the publisher's own time, None when it sent none."""
        if seq is None and ts_ns is None:
            return _NEW  # nothing to recognise it by (see the module docstring)
        key = (seq, ts_ns)
        seen = self._seen.get(publisher)
        # a wrapping counter without a time repeats every ``modulus`` messages: no key then
        recognisable = ts_ns is not None or self.modulus is None
        if recognisable and seen is not None and key in seen:
            self.duplicates += 1
            return _DUPLICATE
        arrival = self._judge(publisher, seq, ts_ns, now_ns, rebirth)
        self._remember(publisher, key, seq, ts_ns if ts_ns is not None else now_ns)
        return arrival

    def _judge(
        self, publisher: str, seq: int | None, ts_ns: int | None, now_ns: int, rebirth: bool
    ) -> Arrival:
        last = self._last.get(publisher)
        if seq is None or last is None or last[0] is None or rebirth:
            return _NEW
        step = seq - last[0]
        if self.modulus is not None:
            step %= self.modulus  # at least this many: whole turns of the counter are unseen
        if step == 1:
            return _NEW
        if step <= 0 or (ts_ns is not None and ts_ns < last[1]):
            self.restarts += 1  # the counter (or the publisher's clock) went back
            return _NEW
        ts_ns = now_ns if ts_ns is None else ts_ns
        lost = step - 1
        self.lost += lost
        source = publisher[:MAX_SOURCE_CHARS]
        return Arrival(lost=lost, gap=SourceGap(source, min(last[1], ts_ns), ts_ns, LOST_UPSTREAM))

    def _remember(
        self, publisher: str, key: tuple[int | None, int | None], seq: int | None, ts_ns: int
    ) -> None:
        if publisher not in self._last:
            while len(self._last) >= self.max_publishers:
                gone, _ = self._last.popitem(last=False)
                self._seen.pop(gone, None)
        self._last[publisher] = (seq, ts_ns)
        self._last.move_to_end(publisher)
        seen = self._seen.setdefault(publisher, collections.OrderedDict())
        seen[key] = None
        if len(seen) > self.recent:
            seen.popitem(last=False)
