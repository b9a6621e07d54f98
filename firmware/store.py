"""The node's persistent state in its flash directory: config, key and the boot counter.

The boot counter is raised and written (temp file + rename) before the first reading of a
boot, so a reboot, a crash or a power loss never reuses a (boot, seq) pair.
"""

import json
import os

CONFIG = "node.json"
KEY = "node.key"
BOOT = "boot.txt"
KEY_BYTES = 32


class StoreError(Exception):
    pass


def _path(root, name):
    return name if root in ("", ".") else root.rstrip("/") + "/" + name


def write_atomically(root, name, data):
    tmp = _path(root, name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.rename(tmp, _path(root, name))


def load_config(root):
    try:
        with open(_path(root, CONFIG)) as f:
            cfg = json.load(f)
    except OSError:
        raise StoreError("no %s: provision the node (factoryops provision node)" % CONFIG)
    except ValueError:
        raise StoreError("%s is not JSON: provision the node again" % CONFIG)
    for key in ("id", "broker", "topic"):
        if key not in cfg:
            raise StoreError("%s lacks %r: provision the node again" % (CONFIG, key))
    return cfg


def load_key(root):
    try:
        with open(_path(root, KEY), "rb") as f:
            key = f.read()
    except OSError:
        raise StoreError("no %s: provision the node (factoryops provision node)" % KEY)
    if len(key) != KEY_BYTES:
        raise StoreError("%s has %d bytes, expected %d" % (KEY, len(key), KEY_BYTES))
    return key


def next_boot(root):
    """The boot number of this boot: one more than the last, persisted before use."""
    try:
        with open(_path(root, BOOT)) as f:
            last = int(f.read().strip() or "0")
    except OSError:
        last = 0
    except ValueError:
        # a counter we cannot read must not restart at 1 (that would reuse pairs)
        raise StoreError("%s is unreadable: provision the node again" % BOOT)
    boot = last + 1
    write_atomically(root, BOOT, b"%d" % boot)
    return boot
