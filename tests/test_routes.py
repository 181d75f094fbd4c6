"""AGB route tables: loading errors with file:line, and matching."""

import dataclasses
from pathlib import Path

import pytest

from gateway import routes
from gateway.codecs import edifact, hl7v2
from gateway.document import Attachment, Kind
from tests.helpers.fakes import write_tables

ROOT = Path(__file__).parent.parent
SAMPLES = ROOT / "gateway" / "routes" / "samples"
REFERRAL = edifact.decode((ROOT / "fixtures" / "medvri" / "referral-crlf.edi").read_bytes())[0]


def test_samples_load():
    """The sample tables that init installs are valid."""
    tables = routes.load(SAMPLES)
    assert "06005678" in tables.institutions and "01234567" in tables.referrers


def test_every_problem_is_reported_with_file_and_line(tmp_path):
    """Each bad row is named as file:line: problem, and the whole table is refused."""
    write_tables(tmp_path, "06005678,Eemland,pdf,pull,\n0600567,X,xml,ftp://x,cancel;fax\n",
                 "# comment\n\n01234567,Visser,06009999,sftp:his-brink\n01234567,Twice,*,mail:x\n")
    with pytest.raises(routes.TableError) as caught:
        routes.load(tmp_path)
    problems = caught.value.problems
    inst, ref = tmp_path / "institutions.csv", tmp_path / "referrers.csv"
    assert f"{inst}:2: format 'pdf' is not one of edifact, hl7, zd-hl7, xml" in problems
    assert any(p.startswith(f"{inst}:3: agb '0600567'") for p in problems)
    assert any(p.startswith(f"{inst}:3: delivery") for p in problems)
    assert f"{inst}:3: unknown option(s) fax (known: cancel, supplement, attachments)" in problems
    assert f"{ref}:4: institution(s) 06009999 not in institutions.csv" in problems
    assert f"{ref}:5: agb 01234567 appears twice" in problems
    assert any(p.startswith(f"{ref}:5: answer_address") for p in problems)


def test_match_routes_known_referrer_to_institution():
    """A known referrer's referral goes to the recipient institution in its format."""
    route = routes.match(REFERRAL, routes.load(SAMPLES))
    assert route == routes.Route("06005678", "xml", "pull", None)


def test_unknown_referrer_goes_to_that_institutions_fallback(tmp_path):
    """A referrer the institution does not know lands in that institution's fallback queue."""
    tables = routes.load(write_tables(tmp_path, "06005678,Eemland,xml,pull,\n",
                                      "01765432,Other,06005678,\n"))
    route = routes.match(REFERRAL, tables)
    assert route.destination == "06005678"
    assert route.fallback == "referrer AGB 01234567 not in the table"


def test_unknown_recipient_and_missing_options(tmp_path):
    """An unknown recipient AGB, or a kind or attachment the institution does not take, is fallback."""
    tables = routes.load(write_tables(tmp_path, "06005678,Eemland,xml,pull,\n",
                                      "01234567,Visser,*,\n"))
    other = dataclasses.replace(REFERRAL, recipient=dataclasses.replace(REFERRAL.recipient, agb="06000001"))
    assert routes.match(other, tables).fallback == "recipient AGB 06000001 not in the table"
    cancel = dataclasses.replace(REFERRAL, kind=Kind.CANCELLATION)
    assert routes.match(cancel, tables).fallback == "institution 06005678 does not accept cancellations"
    attached = dataclasses.replace(REFERRAL, attachments=(Attachment("a.pdf", "application/pdf", b"x"),))
    assert "attachments" in routes.match(attached, tables).fallback


def test_answer_goes_to_the_requesters_answer_address():
    """An answer routes back to the requesting referrer's answer address, as MEDVRI."""
    answer = hl7v2.decode((ROOT / "fixtures" / "hl7" / "teleconsult-answer-crlf.hl7").read_bytes())[0]
    request = routes.Request("01765432", frozenset({"06005678"}))
    route = routes.match(answer, routes.load(SAMPLES), request)
    assert route == routes.Route("answers:01765432", "edifact", "sftp:his-hoogveld", None)


def test_only_the_institution_the_request_went_to_may_answer_it():
    """An answer to a request that went to another institution is not delivered: it waits in
    fallback, whoever it names as its recipient."""
    answer = hl7v2.decode((ROOT / "fixtures" / "hl7" / "teleconsult-answer-crlf.hl7").read_bytes())[0]
    request = routes.Request("01765432", frozenset({"06009999"}))
    route = routes.match(answer, routes.load(SAMPLES), request)
    assert route.fallback == "answer from AGB 03056789 to a request that went to institution 06009999"


def copy_samples(folder: Path) -> Path:
    folder.mkdir()
    for name in ("institutions.csv", "referrers.csv"):
        (folder / name).write_text((SAMPLES / name).read_text())
    return folder


def test_add_and_remove_rows_are_validated_before_applying(tmp_path):
    """A bad new row is refused with the real file and line, and the tables stay as they were."""
    from gateway.routes import editing
    folder = copy_samples(tmp_path / "routes")
    before = (folder / "institutions.csv").read_text()
    with pytest.raises(routes.TableError) as caught:
        editing.add_row(folder, "institution", ["0600", "X", "xml", "pull", ""])
    assert caught.value.problems == [f"{folder / 'institutions.csv'}:5: agb '0600' is not an AGB "
                                     "code (8 digits)"]
    assert (folder / "institutions.csv").read_text() == before
    old = routes.load(folder)
    new = editing.add_row(folder, "institution", ["06001111", "Nieuw", "hl7", "pull", "cancel"])
    new = editing.remove_row(folder, "referrer", "01765432")
    assert editing.describe(old, new) == ["+ institution 06001111", "- referrer 01765432"]
    assert routes.load(folder) == new


def test_removing_an_institution_still_named_by_a_referrer_is_refused(tmp_path):
    """Removing an institution that a referrer row names would break the table: refused."""
    from gateway.routes import editing
    folder = copy_samples(tmp_path / "routes")
    with pytest.raises(routes.TableError, match="06005678 not in institutions.csv"):
        editing.remove_row(folder, "institution", "06005678")


def test_mailboxes_are_validated_with_file_and_line(tmp_path):
    """mailboxes.csv problems are named file:line like the other tables'; an 8-digit mailbox
    is refused because such a UNB address is read as an AGB code."""
    folder = write_tables(tmp_path, "06005678,Eemland,xml,pull,\n", "01234567,Visser,*,\n")
    (folder / "mailboxes.csv").write_text("mailbox,agb,name\n500000201,06005678,ok\n"
                                          "50000020,06005678,eight digits\n"
                                          " ziekenhuis  EEMLAND ,0600567,bad agb\n"
                                          "500000201,06005678,twice\n")
    with pytest.raises(routes.TableError) as caught:
        routes.load(folder)
    where = tmp_path / "mailboxes.csv"
    assert any(p.startswith(f"{where}:3: mailbox '50000020' is an AGB code") for p in caught.value.problems)
    assert any(p.startswith(f"{where}:4: agb '0600567'") for p in caught.value.problems)
    assert f"{where}:5: mailbox '500000201' appears twice" in caught.value.problems


def test_resolve_maps_mailboxes_and_notes_it(tmp_path):
    """A party addressed by mailbox (any case, any spacing) gets the mapped AGB code, and
    the document's warnings say which row did it; routing then works as usual."""
    folder = write_tables(tmp_path, "06005678,Eemland,xml,pull,\n", "01234567,Visser,*,\n")
    (folder / "mailboxes.csv").write_text("mailbox,agb,name\nZiekenhuis  Eemland,06005678,zis\n")
    tables = routes.load(folder)
    doc = dataclasses.replace(REFERRAL, recipient=dataclasses.replace(
        REFERRAL.recipient, agb="", mailbox="ziekenhuis eemland"))
    resolved = routes.resolve(doc, tables)
    assert (resolved.recipient.agb, resolved.recipient.mailbox) == ("06005678", "")
    assert resolved.warnings[-1] == \
        "recipient mailbox 'ziekenhuis eemland' is AGB 06005678 (mailboxes.csv:2)"
    assert routes.match(resolved, tables) == routes.Route("06005678", "xml", "pull", None)


def test_unmapped_mailboxes_go_to_fallback_saying_so():
    """An unmapped recipient or referrer mailbox sends the message to fallback, naming it."""
    tables = routes.load(SAMPLES)
    no_recipient = dataclasses.replace(REFERRAL, recipient=dataclasses.replace(
        REFERRAL.recipient, agb="", mailbox="999999999"))
    assert routes.match(no_recipient, tables).fallback == \
        "recipient mailbox '999999999' not in mailboxes.csv"
    no_sender = dataclasses.replace(REFERRAL, sender=dataclasses.replace(
        REFERRAL.sender, agb="", mailbox="888888888"))
    assert routes.match(no_sender, tables).fallback == \
        "referrer mailbox '888888888' not in mailboxes.csv"
