"""gatewayctl inspect, convert, validate: the codecs from the command line.

With a configuration (``-c`` or ``GATEWAY_CONFIG``) the route tables' mailboxes.csv
maps parties addressed by mailbox or facility name to their AGB codes, as the daemon
does; without one they are shown as the mailbox the sender used.
"""

import json
import os
import sys
from pathlib import Path

from gateway import codecs, config, routes
from gateway.cli.common import UsageError, read_input
from gateway.cli.render import as_dict, as_text


def _decode(args):
    data = read_input(args.file)
    name = args.input_format or codecs.sniff(data)
    docs = codecs.get(name).decode(data)
    path = args.config or os.environ.get("GATEWAY_CONFIG")
    if path:
        tables = routes.load(config.load(Path(path)).paths_routes)
        docs = [routes.resolve(doc, tables) for doc in docs]
    return name, docs


def cmd_inspect(args, out) -> int:
    """Print the decoded document(s), readable or as JSON (warnings included)."""
    _, docs = _decode(args)
    if args.json:
        data = [as_dict(doc) for doc in docs]
        out(json.dumps(data[0] if len(data) == 1 else data, indent=2, ensure_ascii=False))
    else:
        out("\n\n".join(as_text(doc) for doc in docs))
    return 0


def cmd_convert(args, out) -> int:
    """Write the message converted to another format on stdout."""
    _, docs = _decode(args)
    if args.to == "xml" and len(docs) > 1:
        raise UsageError(f"the input holds {len(docs)} documents and an XML file holds one; "
                         "split the input first")
    target = codecs.get(args.to)
    output = b"".join(target.encode(doc) for doc in docs)
    sys.stdout.buffer.write(output)
    sys.stdout.buffer.flush()
    return 0


def cmd_validate(args, out) -> int:
    """Check a message without converting it; say what a reader found odd."""
    name, docs = _decode(args)
    for doc in docs:
        out(f"ok: {name} {doc.kind} {doc.zd_number}")
        for warning in doc.warnings:
            out(f"  warning: {warning}")
    return 0
