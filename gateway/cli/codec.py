"""gatewayctl inspect, convert, validate: the codecs from the command line."""

import json
import sys

from gateway import codecs
from gateway.cli.common import UsageError, read_input
from gateway.cli.render import as_dict, as_text


def _decode(path: str, fmt: str | None):
    data = read_input(path)
    name = fmt or codecs.sniff(data)
    return name, codecs.get(name).decode(data)


def cmd_inspect(args, out) -> int:
    """Print the decoded document(s), readable or as JSON."""
    _, docs = _decode(args.file, args.input_format)
    if args.json:
        data = [as_dict(doc) for doc in docs]
        out(json.dumps(data[0] if len(data) == 1 else data, indent=2, ensure_ascii=False))
    else:
        out("\n\n".join(as_text(doc) for doc in docs))
    return 0


def cmd_convert(args, out) -> int:
    """Write the message converted to another format on stdout."""
    _, docs = _decode(args.file, args.input_format)
    if args.to == "xml" and len(docs) > 1:
        raise UsageError(f"the input holds {len(docs)} documents and an XML file holds one; "
                         "split the input first")
    target = codecs.get(args.to)
    output = b"".join(target.encode(doc) for doc in docs)
    sys.stdout.buffer.write(output)
    sys.stdout.buffer.flush()
    return 0


def cmd_validate(args, out) -> int:
    """Check a message without converting it."""
    name, docs = _decode(args.file, args.input_format)
    for doc in docs:
        out(f"ok: {name} {doc.kind} {doc.zd_number}")
    return 0
