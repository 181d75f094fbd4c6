"""Times as people and programs read them: ISO 8601 with an explicit offset, always.

``utc(seconds)`` is for JSON, logs and the HTTPS API (``2025-03-30T08:15:02Z``);
``local(seconds)`` for the command line's text output, Dutch local time with its
offset (``2025-03-30T10:15:02+02:00``); ``age(seconds)`` a short duration
(``3d4h``, ``12m``). The store keeps Unix seconds; these only show them.
"""

import datetime as dt

from gateway.document import AMSTERDAM


def utc(seconds: float | None) -> str | None:
    """``seconds`` as ISO 8601 UTC with ``Z`` (None stays None)."""
    if seconds is None:
        return None
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).isoformat(
        timespec="seconds").replace("+00:00", "Z")


def local(seconds: float | None) -> str | None:
    """``seconds`` as ISO 8601 in Europe/Amsterdam with its offset (None stays None)."""
    if seconds is None:
        return None
    return dt.datetime.fromtimestamp(seconds, AMSTERDAM).isoformat(timespec="seconds")


def parse(text: str) -> float:
    """Unix seconds of an ISO 8601 date or time; one without an offset is Dutch local
    time. Raise ValueError."""
    moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=AMSTERDAM)
    return moment.timestamp()


def age(seconds: float) -> str:
    """A duration, short: ``45s``, ``12m``, ``3h5m``, ``2d4h``."""
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    return f"{minutes}m" if minutes else f"{secs}s"
