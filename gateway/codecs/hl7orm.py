"""ZorgDomein's HL7 ORM^O01 diagnostic requests (v2.4, and the v2.5.1 "V3" layout) -> a
Document of kind ``request``.

Facts (integrator.zorgdomein.com "HL7v2 specs", ORM (V3) and the deprecated LFDv2,
and published sample messages): MSH, [NTE] (the ZorgDomein cluster's name, NTE-4
``ZD_CLUSTER_NAME``), PID, PV1, PV2 (PV2-3 the healthcare product), [IN1] (IN1-3
``UZOVI``, IN1-4 the insurer, IN1-36 the policy number), then ORC/[TQ1]/OBR/[NTE]/
[OBX] groups: the first the product, then test groups and tests; ORC-4 (placer group)
and ORC-2/OBR-2 carry the ZD number (order numbers may add ``_01BLD``); ORC-12 and
OBR-16 the responsible referrer with AGB; ORC-21 the practice ``name^^AGB^^^VEKTIS``;
OBX the questions and answers (ST, CE ``REQUESTED_TESTS``); [SPM] the material.

Our conventions: a request is read as a letter a lab or radiology department can
read without loss: in segment order, a line per NTE (``cluster name: text`` when
NTE-4 names it), per OBR (``Aanvraag: <test> (<code>)``, OBR-13 ``Klinische
gegevens: …``), per TQ1 (period, priority, instruction), per OBX (``question:
answer``), per SPM (``Materiaal: …``) and SAC (``Buis: …``), and the insurance
(``Verzekeraar: …``). PV2-3 is the document's product; ORC-1 ``CA`` makes a
cancellation; an OBX ED is an attachment. Sender and recipient as in ZorgDomein's
ORU (``hl7zd``). The control id
is MSH-10 (a unique message id in these messages).
"""

from gateway.codecs import hl7read as read
from gateway.codecs import hl7zd
from gateway.codecs.hl7read import raw, value
from gateway.codecs.hl7syntax import Segments
from gateway.document import Document, Kind

FIELD_PLACES = {"zd_number": "ORC-4/OBR-2/ORC-2", "sent_at": "MSH-7", "sender.agb": "ORC-12",
                "recipient.agb": "MSH-6", "patient.birth_date": "PID-7"}


def read_message(msg: Segments) -> tuple[str, Document]:
    """(MSH-10, Document) of an ORM^O01."""
    msh, orc, obr = msg.first("MSH"), read.required(msg, "ORC"), read.required(msg, "OBR")
    number = read.number(msg, msg.warnings, value(msg, orc, 4), value(msg, obr, 2),
                         value(msg, orc, 2), raw(msh, 10))
    return raw(msh, 10), read.build(
        msg, FIELD_PLACES, kind=Kind.CANCELLATION if value(msg, orc, 1) == "CA" else Kind.REQUEST,
        zd_number=number, sent_at=read.timestamp(raw(msh, 7), "MSH-7"),
        sender=hl7zd.sender(msg, orc, obr, msh), recipient=hl7zd.recipient(msg, msh),
        patient=read.patient(msg), body=request_lines(msg),
        attachments=tuple(read.attachment(msg, obx) for obx in msg.all("OBX")
                          if raw(obx, 2) == "ED"),
        product=read.code(msg, msg.first("PV2"), 3))


def request_lines(msg: Segments) -> tuple[str, ...]:
    """The request as letter lines, in segment order (see the module docstring)."""
    lines: list[str] = []
    for fields in msg.ordered:
        reader = _LINES.get(fields[0])
        found = reader(msg, fields) if reader is not None else None
        if found is not None:          # an OBX whose value cannot be text stays unplaced
            lines += found
            msg.place(fields)
    return tuple(lines)


def _nte(msg: Segments, nte: list[str]) -> list[str]:
    found = msg.text(raw(nte, 3), blank=True)
    label = value(msg, nte, 4, 1)
    if label and found:
        found[0] = f"{label}: {found[0]}"
    return found


def _obr(msg: Segments, obr: list[str]) -> list[str]:
    test, code = value(msg, obr, 4, 1), value(msg, obr, 4, 0)
    found = [f"Aanvraag: {test or code}" + (f" ({code})" if test and code else "")] \
        if test or code else []
    notes = msg.text(raw(obr, 13))
    return found + ([f"Klinische gegevens: {notes[0]}", *notes[1:]] if notes else [])


def _tq1(msg: Segments, tq1: list[str]) -> list[str]:
    found = []
    for n, label in ((7, "Vanaf"), (8, "Tot")):
        if raw(tq1, n):
            found.append(f"{label}: {read.timestamp(raw(tq1, n), f'TQ1-{n}'):%Y-%m-%d %H:%M}")
    if priority := value(msg, tq1, 9, 1) or value(msg, tq1, 9, 0):
        found.append(f"Prioriteit: {priority}")
    return found + msg.text(raw(tq1, 11))


def _coded(label: str, n: int):
    def lines(msg: Segments, fields: list[str]) -> list[str]:
        shown = value(msg, fields, n, 1) or value(msg, fields, n, 0)
        return [f"{label}: {shown}"] if shown else []
    return lines


def _in1(msg: Segments, in1: list[str]) -> list[str]:
    insurer, uzovi, policy = value(msg, in1, 4), value(msg, in1, 3), value(msg, in1, 36)
    if not (insurer or uzovi or policy):
        return []
    return [f"Verzekeraar: {insurer}" + (f" (UZOVI {uzovi})" if uzovi else "") +
            (f", polisnummer {policy}" if policy else "")]


_LINES = {"NTE": _nte, "OBR": _obr, "TQ1": _tq1, "IN1": _in1, "SPM": _coded("Materiaal", 4),
          "SAC": _coded("Buis", 3),
          "OBX": lambda msg, obx: read.observation_lines(msg, obx, answers=True)}
