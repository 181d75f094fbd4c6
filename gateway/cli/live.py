"""gatewayctl and the running gatewayd: telling it what changed, and ``reload``.

A change a command makes (route tables, keys, identities, the queue) is applied
where the decision lives — the same functions as always — and then the daemon on
the same spool is told over its control socket (``gateway.control``) to take it
in at once. Each command says which happened: ``applied in the running gatewayd
(pid N)``, or ``no gatewayd running; takes effect at its start``.
"""

import json

from gateway import control
from gateway.cli.common import actor
from gateway.errors import GatewayError

NOT_RUNNING = "no gatewayd running; takes effect at its start"


class NotRunning(GatewayError):
    code = "E-NOT-RUNNING"


def tell(settings, command: str, **fields) -> dict | None:
    """Ask the gatewayd on ``settings``' spool to run ``command``; its answer, or None when
    none runs there."""
    return control.ask(settings.paths_spool, {"command": command, "actor": actor(), **fields})


def where(answer: dict | None) -> str:
    """Where a change took effect, for the command's output."""
    if answer is None:
        return NOT_RUNNING
    refused = answer.get("refused") or {}
    if refused:
        return f"refused by the running gatewayd (pid {answer['pid']}): " + "; ".join(
            f"{part}: {why}" for part, why in refused.items())
    return f"applied in the running gatewayd (pid {answer['pid']})"


def reload_parts(settings, parts: list[str], reroute: bool = False) -> dict | None:
    """Tell the daemon to take ``parts`` from the files, the change recorded already
    (``reroute``: the route tables changed, route the fallback queue again)."""
    return tell(settings, "reload", parts=parts, recorded=True, reroute=reroute)


def cmd_reload(args, out) -> int:
    """Reload route tables, identities, certificates and keys in the running gatewayd
    (like systemctl reload); changes found in hand-edited files are recorded as ``reload``."""
    from gateway.cli.admin import open_config
    settings = open_config(args)
    answer = control.ask(settings.paths_spool, {"command": "reload", "actor": "reload"})
    if answer is None:
        raise NotRunning(f"no gatewayd running on {settings.paths_spool}; nothing to reload")
    data = {key: answer[key] for key in ("pid", "reloaded", "refused", "moved")}
    out(json.dumps(data, indent=2) if args.json else
        f"gatewayd pid {answer['pid']}: reloaded {', '.join(answer['reloaded']) or 'nothing'}"
        + "".join(f"\nrefused {part}, old kept: {why}" for part, why in answer["refused"].items())
        + f"\n{answer['moved']} message(s) moved out of fallback")
    return 78 if answer["refused"] else 0
