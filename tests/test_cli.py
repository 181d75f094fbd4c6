"""gatewayctl inspect / convert / validate as a user runs them: exit codes and one-line errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.codecs import edifact, zdxml

ROOT = Path(__file__).parent.parent
REFERRAL = ROOT / "fixtures" / "medvri" / "referral-crlf.edi"
KEYS = ("kind", "zd_number", "sent_at", "in_reply_to", "body", "attachments")


def run(*args, stdin: bytes = b""):
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], input=stdin,
                          capture_output=True, cwd=ROOT, timeout=60)


def test_inspect_json_has_the_documented_keys():
    """inspect --json prints the documented keys with ISO dates and no ZD-nummer line in the body."""
    result = run("inspect", "--json", str(REFERRAL))
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert all(key in data for key in KEYS)
    assert data["sent_at"] == "2026-03-02T10:12:00" and data["patient"]["birth_date"] == "1957-11-30"
    assert (data["sender"]["agb"], data["recipient"]["agb"]) == ("01234567", "06005678")
    assert {"bsn", "sex", "family_name", "family_prefix", "partner_name", "partner_prefix",
            "given_name", "initials"} <= set(data["patient"])
    assert not any(line.startswith("ZD-nummer") for line in data["body"])


def test_inspect_json_lists_several_documents():
    """An interchange with two messages gives a JSON list."""
    result = run("inspect", "--json", str(ROOT / "fixtures" / "medvri" / "two-messages-unoc.edi"))
    assert [doc["zd_number"] for doc in json.loads(result.stdout)] == ["ZD200300400", "ZD200300401"]


def test_inspect_readable():
    """inspect without --json prints a readable summary with the letter."""
    result = run("inspect", str(REFERRAL))
    assert result.returncode == 0
    assert b"referral ZD100200300" in result.stdout and b"| Geachte collega," in result.stdout


def test_convert_from_stdin_to_xml():
    """convert --to xml - reads stdin and writes a Bundle that decodes to the same document."""
    result = run("convert", "--to", "xml", "-", stdin=REFERRAL.read_bytes())
    assert result.returncode == 0, result.stderr
    assert zdxml.decode(result.stdout) == edifact.decode(REFERRAL.read_bytes())


def test_validate():
    """validate says ok with the format, kind and ZD number, and what the reader noted."""
    result = run("validate", str(REFERRAL))
    assert result.stdout == (b"ok: edifact referral ZD100200300\n"
                             b"  warning: PID element 4 (the sender's own patient number) is not kept\n")


@pytest.mark.parametrize("args, stdin, status, code", [
    (("convert", "--to", "pdf", "x"), b"", 64, b"E-USAGE"),
    (("frobnicate",), b"", 64, b"E-USAGE"),
    ((), b"", 64, b"E-USAGE"),
    (("inspect", "/nonexistent/file.edi"), b"", 66, b"E-FILE"),
    (("inspect", "-"), b"UNB+UNOA:1+1+2+250101:0000+X'", 65, b"E-EDI-"),
    (("convert", "--to", "edifact", "-"),
     (ROOT / "fixtures" / "hl7" / "cancellation.hl7").read_bytes(), 65, b"E-ENCODE-KIND"),
    (("validate", "-"), b"hello", 65, b"E-FORMAT-UNKNOWN"),
    (("validate", "-"), b"<!DOCTYPE x><x/>", 65, b"E-XML-DOCTYPE"),
])
def test_errors_are_one_line_with_exit_code(args, stdin, status, code):
    """Every failure is one stderr line 'gatewayctl: error E-…: …' and a sysexits code; no traceback."""
    result = run(*args, stdin=stdin)
    assert result.returncode == status
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gatewayctl: error ")
    assert code in result.stderr and b"Traceback" not in result.stderr


MAILBOX_EDI = ROOT / "fixtures" / "medvri" / "mailbox-unz-reference.edi"


def test_inspect_shows_mailboxes_and_warnings_in_text_and_json():
    """Without tables a mailbox is shown, not refused; the reader's warnings are listed."""
    text = run("inspect", str(MAILBOX_EDI))
    assert text.returncode == 0, text.stderr
    assert b"mailbox 500000101 (no AGB code)" in text.stdout
    assert b"warning   UNZ control reference '1021' differs" in text.stdout
    data = json.loads(run("inspect", "--json", str(MAILBOX_EDI)).stdout)
    assert data["sender"]["mailbox"] == "500000101" and data["sender"]["agb"] == ""
    assert data["warnings"][0].startswith("UNZ control reference '1021' differs")


def test_inspect_with_a_configuration_maps_mailboxes(tmp_path):
    """With a configuration, mailboxes.csv maps the mailbox and the mapping is a warning."""
    run("init", str(tmp_path / "setup"))
    data = json.loads(run("-c", str(tmp_path / "setup" / "gatewayd.toml"), "inspect", "--json",
                          str(MAILBOX_EDI)).stdout)
    assert (data["sender"]["agb"], data["recipient"]["agb"]) == ("01765432", "06005678")
    assert "sender mailbox '500000101' is AGB 01765432 (mailboxes.csv:6)" in data["warnings"]


def test_convert_zorgdomein_pdf_referral(tmp_path):
    """A ZorgDomein ORU^R01 converts to XML, HL7 and zd-hl7 once its facility name is mapped
    (a configuration's mailboxes.csv); without, the missing AGB code is named; to EDIFACT
    the PDF is refused."""
    oru = str(ROOT / "fixtures" / "hl7" / "zd-oru-pdf-referral.hl7")
    unmapped = run("convert", "--to", "xml", oru)
    assert unmapped.returncode == 65 and b"E-ENCODE-FIELD" in unmapped.stderr
    assert b"mailbox 'Ziekenhuis Eemland' is not mapped" in unmapped.stderr
    run("init", str(tmp_path / "setup"))
    config = str(tmp_path / "setup" / "gatewayd.toml")
    for target in ("xml", "hl7", "zd-hl7"):
        result = run("-c", config, "convert", "--to", target, oru)
        assert result.returncode == 0, result.stderr
    refused = run("-c", config, "convert", "--to", "edifact", oru)
    assert refused.returncode == 65 and b"E-ENCODE-ATTACHMENT" in refused.stderr
