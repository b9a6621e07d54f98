"""HMAC-SHA256 (RFC 2104) on hashlib.sha256: MicroPython 1.29 has no hmac module.

Same bytes as CPython's hmac.new(key, msg, "sha256").digest(); a test checks it.
"""

import hashlib

_BLOCK = 64  # SHA-256 block size in bytes (RFC 2104 B)


def _pad(key, byte):
    return bytes((k ^ byte) for k in key)


def hmac_sha256(key, msg):
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    key = key + bytes(_BLOCK - len(key))
    inner = hashlib.sha256(_pad(key, 0x36))
    inner.update(msg)
    outer = hashlib.sha256(_pad(key, 0x5C))
    outer.update(inner.digest())
    return outer.digest()


def hexdigest(key, msg):
    return hmac_sha256(key, msg).hex()
