"""Letter text in HL7: every place senders put it (OBX TX/FT/ST, NTE after OBR and OBX),
formatting commands turned into lines, and nothing in OBX or NTE ever dropped."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.codecs import hl7syntax, hl7v2
from gateway.errors import DecodeError
from tests.strategies import LATIN1

HEAD = (b"MSH|^~\\&|HISX|Praktijk^01700001^VEKTIS|ZIS|Ziekenhuis Eemland^06005678^VEKTIS|"
        b"20260302101200+0100||REF^I12^REF_I12|HISX-1|P|2.4|||AL|NE|NLD|UNICODE UTF-8\r"
        b"RF1|P|R|Med||O|ZD100200300^ZorgDomein\r"
        b"PRD|RP|Visser^M|||||01234567^AGB\r"
        b"PRD|RT\r"
        b"PID|1||123456782^^^NLMINBIZA^NNNLD||Dijk^Pieter||19571130|M\r"
        b"OBR|1|ZD100200300||11488-4^Consultation note^LN\r")


def letter(*segments: bytes) -> tuple[str, ...]:
    (doc,) = hl7v2.decode(HEAD + b"\r".join(segments) + b"\r")
    return doc.body


def test_ft_letter_with_line_breaks_is_read():
    """An OBX of value type FT with \\.br\\ commands becomes one body line per break."""
    assert letter(b"OBX|1|FT|11488-4^Brief^LN||Geachte collega,\\.br\\\\.br\\Graag uw oordeel.") == \
        ("Geachte collega,", "", "Graag uw oordeel.")


def test_st_and_tx_mixed_in_order():
    """ST and TX observations add their text in segment order, TX repetitions as lines."""
    assert letter(b"OBX|1|ST|A^Anamnese^L||Pijn sinds maart", b"OBX|2|TX|B^Beleid^L||Rust~Controle") \
        == ("Pijn sinds maart", "Rust", "Controle")


def test_nte_after_obr_and_after_obx_are_letter_lines():
    """NTE comments after OBR and after an OBX are part of the letter, in order."""
    body = letter(b"NTE|1|P|Opmerking bij aanvraag", b"OBX|1|TX|11488-4^Brief^LN||Regel 1",
                  b"NTE|2|P|Na de regel~tweede")
    assert body == ("Opmerking bij aanvraag", "Regel 1", "Na de regel", "tweede")


@pytest.mark.parametrize("value, lines", [
    (b"a\\.sp\\b", ("a", "", "b")),
    (b"a\\.sp 2\\b", ("a", "", "", "b")),
    (b"\\.in 4\\ingesprongen\\.br\\ook", ("    ingesprongen", "    ook")),
    (b"\\.ti 2\\eerste\\.br\\tweede", ("  eerste", "tweede")),
    (b"titel\\.ce\\midden", ("titel", "midden")),
    (b"\\.nf\\vast\\.fi\\vrij", ("vastvrij",)),
    (b"\\H\\belangrijk\\N\\ niet", ("belangrijk niet",)),
    (b"caf\\XE9\\ 100\\X25\\", ("caf\xe9 100%",)),
    (b"onbekend \\Zab\\ blijft", ("onbekend \\Zab\\ blijft",)),
])
def test_formatting_commands_become_text(value, lines):
    """HL7 formatting commands turn into lines and indents; unknown escapes stay as written."""
    assert letter(b"OBX|1|FT|11488-4^Brief^LN||" + value) == lines


def test_coded_and_numeric_results_are_placed_as_lines():
    """A coded or numeric observation in a letter is kept as a 'label: value' line."""
    assert letter(b"OBX|1|NM|8302-2^Lengte^LN||182|cm", b"OBX|2|CE|X^Roken^L||N^Nee^L") == \
        ("Lengte: 182 cm", "Roken: Nee")


def test_content_that_cannot_be_placed_is_an_error():
    """An OBX whose value cannot be placed in the document is refused, never dropped."""
    with pytest.raises(DecodeError) as caught:
        letter(b"OBX|1|RP|X^Beeld^L||pacs://server/1^IMAGE")
    assert caught.value.code == "E-HL7-UNPLACED"
    assert caught.value.where == "segment 7 (OBX), OBX-5"


def _escaped(line: str) -> str:
    return hl7syntax.escape(line)


COMMANDS = st.sampled_from(["", "\\H\\", "\\N\\", "\\.fi\\", "\\.nf\\"])


@given(lines=st.lists(st.text(LATIN1, max_size=40), min_size=1, max_size=8),
       noise=st.lists(COMMANDS, min_size=8, max_size=8), as_nte=st.booleans())
@settings(max_examples=150, deadline=None)
def test_generated_ft_and_nte_letters_lose_no_character(lines, noise, as_nte):
    """Any letter written as FT with \\.br\\ (or NTE segments), with highlight and fill
    commands sprinkled in, reads back as exactly its lines."""
    pieces = [noise[i] + _escaped(line) for i, line in enumerate(lines)]
    if as_nte:
        segments = [b"NTE|%d|P|" % i + p.encode("utf-8") for i, p in enumerate(pieces, 1)]
        expected = tuple(lines)
    else:
        value = "\\.br\\".join(pieces)
        segments = [b"OBX|1|FT|11488-4^Brief^LN||" + value.encode("utf-8")]
        expected = tuple(lines) if value else ()      # an OBX without a value holds no text
    assert letter(*segments) == expected


ANYWHERE = st.sampled_from(["\\.br\\", "\\.sp\\", "\\.sp 2\\", "\\.in 3\\", "\\.ti 1\\", "\\.ce\\",
                            "\\H\\", "\\N\\", "\\.fi\\", "\\.nf\\"])


@given(text=st.text(LATIN1, min_size=1, max_size=120),
       commands=st.lists(st.tuples(st.integers(0, 120), ANYWHERE), max_size=10))
@settings(max_examples=150, deadline=None)
def test_formatting_commands_anywhere_lose_no_character(text, commands):
    """Formatting commands put anywhere in an FT letter change only its line breaks and
    indentation: every other character of the text arrives, in order."""
    cuts = sorted({min(at, len(text)) for at, _ in commands})
    pieces, start = [], 0
    for cut, (_, command) in zip(cuts, commands):
        pieces += [_escaped(text[start:cut]), command]
        start = cut
    pieces.append(_escaped(text[start:]))
    body = letter(b"OBX|1|FT|11488-4^Brief^LN||" + "".join(pieces).encode("utf-8"))
    assert "".join(body).replace(" ", "") == text.replace(" ", "")
