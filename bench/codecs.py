"""Codec throughput on one core, with the bare libraries measured in the same run.

Prints messages/s per path and the ratio to its baseline (pydifact tokenize,
python-hl7 parse, lxml parse/serialize), so a noisy shared machine still gives
comparable figures. The ZorgDomein paths (issue 10) read fixtures/hl7/
zd-oru-pdf-referral.hl7 (ORU^R01 with a PDF, MSH-2 ``^_\&``) and write it as
zd-hl7 and XML; "hl7 ft letter decode" reads a REF whose letter is an OBX FT with
``\.br\`` line breaks and NTEs (the same letter as the 2 KB referral). Run: ``make bench`` or ``.venv/bin/python bench/codecs.py``.
The machine's speed drifts by up to 2x within seconds, so each path and its
baseline are measured in turn and the best of several rounds is kept; run it
twice and read the ratios. Targets (issue 2): EDIFACT decode >= 0.6x bare pydifact; HL7 decode >= 1,000/s
for a 2 KB message; XML decode+encode >= 3,000/s.
"""

import dataclasses
import sys
import time
from pathlib import Path

import hl7
from lxml import etree
from pydifact.control.characters import Characters
from pydifact.serializer import Serializer
from pydifact.segments import Segment
from pydifact.tokenizer import Tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gateway.codecs import edifact, fhirxml, hl7v2, zdhl7, zdxml  # noqa: E402

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
FIXTURE = FIXTURES / "medvri" / "referral-crlf.edi"
ROUNDS, SECONDS = 5, 0.5


def rate(func, seconds: float = SECONDS) -> float:
    """Calls/s of ``func`` over about ``seconds``."""
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(20):
            func()
        count += 20
    return count / elapsed


def paired(func, baseline) -> tuple[float, float]:
    """Best rate of ``func`` and of ``baseline`` over ROUNDS rounds measured in turn, so
    that drift in the machine's speed hits both alike."""
    best, best_base = 0.0, 0.0
    for _ in range(ROUNDS):
        best_base = max(best_base, rate(baseline))
        best = max(best, rate(func))
    return best, best_base


def messages():
    """A referral of about 2 KB in each format (the fixture with a longer letter)."""
    doc = edifact.decode(FIXTURE.read_bytes())[0]
    letter = doc.body + tuple(f"Regel {i}: anamnese, bevindingen en beleid, zonder bijzonderheden."
                              for i in range(16))
    doc = dataclasses.replace(doc, body=letter)
    return doc, edifact.encode(doc), hl7v2.encode(doc), zdxml.encode(doc)


def zorgdomein(hl7_bytes: bytes):
    """ZorgDomein's ORU^R01 with a PDF (its facility mapped to an AGB code, as the route
    tables would), and the 2 KB referral with its letter as OBX FT + NTE."""
    oru = (FIXTURES / "hl7" / "zd-oru-pdf-referral.hl7").read_bytes()
    doc = hl7v2.decode(oru)[0]
    doc = dataclasses.replace(doc, recipient=dataclasses.replace(doc.recipient, agb="06005678",
                                                                 mailbox=""))
    head, _, rest = hl7_bytes.partition(b"OBX|1|TX|")
    letter, _, tail = rest.partition(b"\r")
    code, _, lines = letter.partition(b"|1|")
    text = lines.split(b"|")[0].split(b"~")
    ft = (head + b"NTE|1|P|" + text[0] + b"\rOBX|1|FT|" + code + b"||" + b"\\.br\\".join(text[1:])
          + b"||||||F\r" + tail)
    return oru, doc, ft


def main() -> None:
    doc, edi, hl7_bytes, xml = messages()
    oru, zd_doc, ft = zorgdomein(hl7_bytes)
    oru_text = oru.decode("latin-1")
    edi_text = edi.decode("ascii")
    chars = Characters.from_str(edi_text[3:9])
    body = edi_text[9:]
    pyd_segments = [Segment("UNB", *(["x"] * 5))] + [Segment("TXT", line) for line in doc.body]
    serializer = Serializer(chars)
    hl7_text = hl7_bytes.decode("latin-1")
    tree = etree.fromstring(xml)

    baselines = {
        "pydifact tokenize": lambda: list(Tokenizer().get_tokens(body, chars)),
        "pydifact serialize": lambda: serializer.serialize(pyd_segments),
        "python-hl7 parse": lambda: hl7.parse(hl7_text),
        "python-hl7 parse zd": lambda: hl7.parse(oru_text),
        "lxml parse": lambda: etree.fromstring(xml, fhirxml.hardened_parser()),
        "lxml serialize": lambda: etree.tostring(tree),
    }
    paths = [
        ("edifact decode", lambda: edifact.decode(edi), "pydifact tokenize"),
        ("edifact encode", lambda: edifact.encode(doc), "pydifact serialize"),
        ("hl7 decode", lambda: hl7v2.decode(hl7_bytes), "python-hl7 parse"),
        ("hl7 encode", lambda: hl7v2.encode(doc), "python-hl7 parse"),
        ("xml decode", lambda: zdxml.decode(xml), "lxml parse"),
        ("xml encode", lambda: zdxml.encode(doc), "lxml serialize"),
        ("xml decode+encode", lambda: zdxml.encode(zdxml.decode(xml)[0]), "lxml parse"),
        ("edifact->xml", lambda: zdxml.encode(edifact.decode(edi)[0]), "pydifact tokenize"),
        ("hl7->xml", lambda: zdxml.encode(hl7v2.decode(hl7_bytes)[0]), "python-hl7 parse"),
        ("hl7 ft letter decode", lambda: hl7v2.decode(ft), "python-hl7 parse"),
        ("zd oru decode", lambda: hl7v2.decode(oru), "python-hl7 parse zd"),
        ("zd-hl7 encode", lambda: zdhl7.encode(zd_doc), "python-hl7 parse zd"),
        ("zd oru->xml", lambda: zdxml.encode(dataclasses.replace(
            hl7v2.decode(oru)[0], recipient=zd_doc.recipient)), "python-hl7 parse zd"),
    ]
    print(f"message sizes: edifact {len(edi)} B, hl7 {len(hl7_bytes)} B, xml {len(xml)} B, "
          f"ZorgDomein ORU with PDF {len(oru)} B; one core; each path and its baseline measured "
          f"in turn, best of {ROUNDS} x {SECONDS}s")
    print(f"{'path':20} {'msg/s':>8}   {'baseline':20} {'msg/s':>8}   ratio")
    for name, func, baseline in paths:
        value, base = paired(func, baselines[baseline])
        print(f"{name:20} {value:8,.0f}   {baseline:20} {base:8,.0f}   {value / base:5.2f}x")


if __name__ == "__main__":
    main()
