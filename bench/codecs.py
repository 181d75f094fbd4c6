"""Codec throughput on one core, with the bare libraries measured in the same run.

Prints messages/s per path and the ratio to its baseline (pydifact tokenize,
python-hl7 parse, lxml parse/serialize), so a noisy shared machine still gives
comparable figures. Run: ``make bench`` or ``.venv/bin/python bench/codecs.py``.
Targets (issue 2): EDIFACT decode >= 0.6x bare pydifact; HL7 decode >= 1,000/s
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
from gateway.codecs import edifact, fhirxml, hl7v2, zdxml  # noqa: E402

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "medvri" / "referral-crlf.edi"
ROUNDS, SECONDS = 3, 0.7


def rate(func) -> float:
    """Best calls/s of ROUNDS rounds of about SECONDS each."""
    best = 0.0
    for _ in range(ROUNDS):
        count, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < SECONDS:
            for _ in range(20):
                func()
            count += 20
        best = max(best, count / elapsed)
    return best


def messages():
    """A referral of about 2 KB in each format (the fixture with a longer letter)."""
    doc = edifact.decode(FIXTURE.read_bytes())[0]
    letter = doc.body + tuple(f"Regel {i}: anamnese, bevindingen en beleid, zonder bijzonderheden."
                              for i in range(16))
    doc = dataclasses.replace(doc, body=letter)
    return doc, edifact.encode(doc), hl7v2.encode(doc), zdxml.encode(doc)


def main() -> None:
    doc, edi, hl7_bytes, xml = messages()
    edi_text = edi.decode("ascii")
    chars = Characters.from_str(edi_text[3:9])
    body = edi_text[9:]
    pyd_segments = [Segment("UNB", *(["x"] * 5))] + [Segment("TXT", line) for line in doc.body]
    serializer = Serializer(chars)
    hl7_text = hl7_bytes.decode("latin-1")
    tree = etree.fromstring(xml)

    baselines = {
        "pydifact tokenize": rate(lambda: list(Tokenizer().get_tokens(body, chars))),
        "pydifact serialize": rate(lambda: serializer.serialize(pyd_segments)),
        "python-hl7 parse": rate(lambda: hl7.parse(hl7_text)),
        "lxml parse": rate(lambda: etree.fromstring(xml, fhirxml.hardened_parser())),
        "lxml serialize": rate(lambda: etree.tostring(tree)),
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
    ]
    print(f"message sizes: edifact {len(edi)} B, hl7 {len(hl7_bytes)} B, xml {len(xml)} B; "
          f"best of {ROUNDS} rounds of {SECONDS}s, one core")
    print(f"{'baseline':28} {'msg/s':>10}")
    for name, value in baselines.items():
        print(f"{name:28} {value:10,.0f}")
    print(f"\n{'path':28} {'msg/s':>10}  ratio to baseline")
    for name, func, baseline in paths:
        value = rate(func)
        print(f"{name:28} {value:10,.0f}  {value / baselines[baseline]:5.2f}x {baseline}")


if __name__ == "__main__":
    main()
