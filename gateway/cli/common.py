"""What every gatewayctl command shares: reading input and the usage errors."""

import argparse
import getpass
import os
import sys

from gateway.errors import GatewayError


class UsageError(GatewayError):
    code = "E-USAGE"


class Unreadable(GatewayError):
    code = "E-FILE"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are UsageErrors (one line, exit 64), not exits."""

    def error(self, message):
        raise UsageError(f"{message} (see gatewayctl --help)")


def read_input(path: str) -> bytes:
    """The bytes of ``path`` (``-`` is stdin); raise Unreadable."""
    try:
        if path == "-":
            return sys.stdin.buffer.read()
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise Unreadable(f"cannot read {path}: {exc.strerror}") from None


def actor() -> str:
    """Who runs this command, for the history and the audit log: ``cli:<user>``."""
    try:
        user = os.environ.get("SUDO_USER") or getpass.getuser()
    except (KeyError, OSError):
        user = f"uid{os.getuid()}"
    return f"cli:{user}"
