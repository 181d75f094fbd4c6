"""Hypothesis strategies for canonical Documents, within each format's limits."""

import datetime as dt
import re

from hypothesis import strategies as st

from gateway.codecs.edifact import LINE_WIDTH, _HEADER
from gateway.document import (Address, Attachment, Code, Document, Kind, Letter, Patient, Recipient,
                              Sender, Sex, answer_number, bsn_problem)

LATIN1 = st.characters(codec="latin-1", exclude_categories=("Cc",))
UNICODE = st.characters(exclude_categories=("Cc", "Cs", "Co", "Cn"))
AGB = st.from_regex(r"\A[0-9]{8}\Z")
ZD = st.from_regex(r"\AZD[0-9]{8,9}\Z") | st.from_regex(r"\AGW[0-9]{10}\Z")
BSN = st.from_regex(r"\A[0-9]{9}\Z").filter(lambda v: bsn_problem(v) is None)


def words(alphabet=LATIN1, max_size: int = 30):
    """Single-line text without surrounding blanks (the Document rule for fields)."""
    return st.text(alphabet, max_size=max_size).map(str.strip)


def addresses(alphabet=LATIN1):
    return st.one_of(st.none(), st.builds(
        Address, words(alphabet), words(alphabet, 6), words(alphabet, 7), words(alphabet),
        words(alphabet, 12)).filter(lambda a: any(vars(a).values())))


def _valid_local(moment: dt.datetime) -> bool:
    from gateway.document import aware, local_time
    return local_time(aware(moment).astimezone(dt.timezone.utc)) == moment


def sent_times(whole_minutes: bool = False):
    times = st.datetimes(dt.datetime(1980, 1, 1), dt.datetime(2079, 12, 31))
    times = times.map(lambda t: t.replace(microsecond=0, second=0 if whole_minutes else t.second))
    return times.filter(_valid_local)


def codes(alphabet=LATIN1):
    """A coded value, or none."""
    return st.none() | st.builds(Code, words(alphabet, 12).filter(bool), words(alphabet),
                                 st.sampled_from(("", "ZORGDOMEIN", "L", "99zda", "http://loinc.org")))


@st.composite
def documents(draw, alphabet=LATIN1, kinds=tuple(Kind), line_width: int | None = None,
              attachments: bool = True, whole_minutes: bool = False, extras: bool = True):
    """A valid Document; ``line_width`` caps letter lines, ``kinds`` limits the kind;
    ``extras``: a PDF letter, specialism, product and portal patient id may be drawn."""
    kind = draw(st.sampled_from(kinds))
    zd = draw(ZD)
    in_reply_to = None
    if kind is Kind.TELECONSULT_ANSWER:
        zd, in_reply_to = answer_number(zd), zd
    elif kind in (Kind.SUPPLEMENT, Kind.CANCELLATION):
        in_reply_to = draw(st.one_of(st.none(), ZD))
    sent_at = draw(sent_times(whole_minutes))
    text = words(alphabet)
    line = st.text(alphabet, max_size=line_width or 200)
    if line_width:
        line = line.filter(lambda x: not _HEADER.fullmatch(x))
    return Document(
        kind=kind, zd_number=zd, sent_at=sent_at, in_reply_to=in_reply_to,
        sender=Sender(draw(AGB), draw(text), draw(text), draw(text), draw(st.just("") | AGB),
                      draw(addresses(alphabet)), draw(words(alphabet, 15))),
        recipient=Recipient(draw(AGB), draw(text), draw(text), draw(text), draw(st.just("") | AGB),
                            draw(addresses(alphabet)), draw(words(alphabet, 15))),
        patient=Patient(
            bsn=draw(st.just("") | BSN),
            birth_date=draw(st.none() | st.dates(dt.date(1880, 1, 1), sent_at.date())),
            sex=draw(st.sampled_from(tuple(Sex))),
            family_name=draw(text), family_prefix=draw(words(alphabet, 8)),
            partner_name=draw(text), partner_prefix=draw(words(alphabet, 8)),
            given_name=draw(text), initials=draw(words(alphabet, 8)),
            address=draw(addresses(alphabet)), phone=draw(words(alphabet, 15)),
            portal_id=draw(words(alphabet, 12)) if extras else ""),
        body=tuple(draw(st.lists(line, max_size=8))),
        letter=draw(st.none() | st.builds(Letter, st.just("application/pdf"), st.binary(
            max_size=64))) if extras else None,
        specialism=draw(codes(alphabet)) if extras else None,
        product=draw(codes(alphabet)) if extras else None,
        attachments=tuple(draw(st.lists(st.builds(
            Attachment, words(alphabet, 20).filter(lambda n: n and not re.search(r"[/\\]", n)),
            st.from_regex(r"\A(application|image|text)/[a-z0-9][a-z0-9.+-]{0,11}\Z"), st.binary(max_size=64)),
            max_size=2 if attachments else 0))),
    )


def medvri_documents(alphabet=LATIN1):
    """Documents MEDVRI can carry whole: referrals and answers, no attachments, whole
    minutes, letter lines of at most 70 characters, no partner name without an own name."""
    return documents(alphabet, kinds=(Kind.REFERRAL, Kind.TELECONSULT_ANSWER),
                     line_width=LINE_WIDTH, attachments=False, whole_minutes=True,
                     extras=False).filter(
        lambda d: d.patient.family_name or d.patient.family_prefix or not (
            d.patient.partner_name or d.patient.partner_prefix))
