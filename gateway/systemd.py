"""The systemd notify protocol: READY=1, RELOADING=1, STOPPING=1, WATCHDOG=1.

A datagram to the socket in ``$NOTIFY_SOCKET`` (a leading ``@`` is Linux's
abstract namespace). Without that variable — not started by systemd — nothing
is sent. ``watchdog_interval`` is half of ``$WATCHDOG_USEC``, or None.
"""

import os
import socket


def notify(state: str, environ=os.environ) -> bool:
    """Send ``state`` to systemd; return whether a socket was there to send to."""
    address = environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode("utf-8"))
    except OSError:          # no descriptor to spare, systemd gone: the next ping tries again
        return False
    return True


def watchdog_interval(environ=os.environ) -> float | None:
    """Seconds between WATCHDOG=1 pings (half the configured watchdog time), or None."""
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2_000_000
