"""Entry point. On a device MicroPython runs this at boot from the flash root; on the unix
port run ``micropython firmware/main.py NODE_DIR`` with the simulated bus.
"""

import sys

import store


def main():
    if sys.platform == "linux":  # the unix port: simulated sensors, NODE_DIR is the "flash"
        import simhw as bus

        root = sys.argv[1] if len(sys.argv) > 1 else "."
        bus.set_root(root)
    else:
        import machine as bus

        root = ""
    import node

    try:
        n = node.Node(root, bus)
    except (store.StoreError, OSError, ValueError) as err:
        print("node: cannot start:", err)
        sys.exit(2)
    n.run()


main()
