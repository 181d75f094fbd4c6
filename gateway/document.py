"""The canonical Document every codec reads into and writes from.

All three wire formats (EDIFACT MEDVRI, HL7 v2, ZorgDomein XML) convert through
these frozen dataclasses, which also own the identifier rules:

- AGB code: exactly 8 digits (no public check digit exists).
- BSN: 9 digits passing the 11-proef; 8-digit values are left-padded by
  ``normalize_bsn`` before checking; 000000000 is invalid.
- ZD number: ``ZD`` + 8 or 9 digits; a teleconsult answer carries the request's
  number with the suffix ``_ANTW`` and answers (``in_reply_to``) that number.
- Gateway number: what the gateway gives a document that came without a ZD number
  (MEDVRI, HL7): ``GW`` + 10 digits (``gateway_number``). It can never be taken for a
  ZorgDomein number, and codecs never write it into ZorgDomein's identifier systems.
  ``zd_number`` holds either kind; ``_ANTW`` works for both.
- A party's ``agb`` may be empty only when its ``mailbox`` says how the sender
  addressed it instead (a network mailbox number, a facility name); the route tables
  map it to an AGB code (``routes.resolve``).

Conventions: ``sent_at`` is a naive datetime in Dutch local time
(Europe/Amsterdam), whole seconds. Text fields hold no control characters;
every field except letter lines is stripped of surrounding blanks. An absent
text field is ``""``, an absent address is ``None``; a document always has a
patient, whose fields may all be empty. ``warnings`` are what a reader found odd but
accepted (without patient data); they are not part of the document's equality.
"""

import dataclasses
import datetime as dt
import hashlib
import operator
import re
from dataclasses import dataclass, field
from enum import StrEnum
from zoneinfo import ZoneInfo

from gateway.errors import DocumentError, EncodeError

AMSTERDAM = ZoneInfo("Europe/Amsterdam")
_ZD = re.compile(r"ZD[0-9]{8,9}|GW[0-9]{10}")
_ZD_ANSWER = re.compile(r"(?:ZD[0-9]{8,9}|GW[0-9]{10})_ANTW")
_GATEWAY = re.compile(r"GW[0-9]{10}(?:_ANTW)?")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*")
ANSWER_SUFFIX = "_ANTW"
_BSN_WEIGHTS = (9, 8, 7, 6, 5, 4, 3, 2)
_PATH_SEPARATOR = re.compile(r"[/\\]")


class Kind(StrEnum):
    REFERRAL = "referral"
    TELECONSULT_REQUEST = "teleconsult-request"
    TELECONSULT_ANSWER = "teleconsult-answer"
    SUPPLEMENT = "supplement"
    CANCELLATION = "cancellation"
    REQUEST = "request"                  # a diagnostic request (ZorgDomein ORM, request form)


class Sex(StrEnum):
    MALE = "M"
    FEMALE = "F"
    UNKNOWN = "U"


def agb_problem(value: str) -> str | None:
    """Return why ``value`` is not an AGB code, or None when it is one."""
    if len(value) == 8 and value.isascii() and value.isdigit():
        return None
    return "is not an AGB code (8 digits)"


def normalize_bsn(value: str) -> str:
    """Left-pad an 8-digit BSN with a zero; other values are returned unchanged."""
    return "0" + value if len(value) == 8 and value.isascii() and value.isdigit() else value


def bsn_problem(value: str) -> str | None:
    """Return why ``value`` is not a valid 9-digit BSN, or None when it is one."""
    if not (len(value) == 9 and value.isascii() and value.isdigit()):
        return "is not a BSN (9 digits)"
    # the 11-proef on the ASCII codes: each digit d is its code - 48, so the weights'
    # sum (44) times 48 comes off, and the last digit counts -1: its 48 goes back on
    codes = value.encode("ascii")
    total = sum(map(operator.mul, codes, _BSN_WEIGHTS)) - codes[8] - 48 * 44 + 48
    if value == "000000000" or total % 11:
        return "fails the BSN 11-proef"
    return None


def zd_problem(value: str, answer: bool = False) -> str | None:
    """Return why ``value`` is not a ZD or gateway number (with ``_ANTW`` when ``answer``),
    or None."""
    if (_ZD_ANSWER if answer else _ZD).fullmatch(value):
        return None
    number = "ZD + 8 or 9 digits, or GW + 10 digits"
    return f"is not an answer number ({number}, then _ANTW)" if answer else \
        f"is not a ZD number ({number})"


def gateway_number(seed: bytes) -> str:
    """The gateway number for a document without a ZD number: ``GW`` + 10 digits of the
    SHA-256 of ``seed`` (the same input gives the same number)."""
    return "GW" + str(int(hashlib.sha256(seed).hexdigest(), 16))[-10:]


def is_gateway_number(value: str) -> bool:
    """Whether ``value`` is a gateway number (or an answer to one), not a ZD number."""
    return bool(_GATEWAY.fullmatch(value))


@dataclass(frozen=True)
class Address:
    street: str = ""
    house_number: str = ""
    postcode: str = ""
    city: str = ""
    country: str = ""


@dataclass(frozen=True)
class Sender:
    """The responsible sender: for a referral the referrer, with a personal AGB code (or,
    until the route tables map it, the ``mailbox`` the sender used instead)."""

    agb: str
    name: str = ""
    department: str = ""
    organisation: str = ""
    organisation_agb: str = ""
    address: Address | None = None
    phone: str = ""
    mailbox: str = ""


@dataclass(frozen=True)
class Recipient:
    """The receiving party: ``agb`` is the institution's code used for routing (empty
    while only the ``mailbox`` or facility name the sender used is known)."""

    agb: str
    name: str = ""
    department: str = ""
    practitioner: str = ""
    practitioner_agb: str = ""
    address: Address | None = None
    phone: str = ""
    mailbox: str = ""


@dataclass(frozen=True)
class Patient:
    bsn: str = ""
    birth_date: dt.date | None = None
    sex: Sex = Sex.UNKNOWN
    family_name: str = ""
    family_prefix: str = ""
    partner_name: str = ""
    partner_prefix: str = ""
    given_name: str = ""
    initials: str = ""
    address: Address | None = None
    phone: str = ""
    portal_id: str = ""         # the patient's number in the receiving hospital (ZorgDomein's
                                # "CS-Zorgportaal patient ID", HL7 PID-3 ``^^^ZIS^PI``)


@dataclass(frozen=True)
class Attachment:
    file_name: str
    media_type: str
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class Letter:
    """The letter as a document of its own (ZorgDomein sends referral letters and request
    forms as a PDF); ``body`` may hold text lines besides it."""

    media_type: str
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class Code:
    """A coded value as senders write it: HL7 v2 CE (code^display^coding system)."""

    code: str
    display: str = ""
    system: str = ""


@dataclass(frozen=True)
class Document:
    kind: Kind
    zd_number: str
    sent_at: dt.datetime
    sender: Sender
    recipient: Recipient
    patient: Patient = Patient()
    body: tuple[str, ...] = ()
    in_reply_to: str | None = None
    attachments: tuple[Attachment, ...] = ()
    letter: Letter | None = None
    specialism: Code | None = None         # the specialism referred to (ZorgDomein OBR-4)
    product: Code | None = None            # ZorgDomein's product ("zorgproduct") code
    warnings: tuple[str, ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self):
        for problem in _problems(self):
            raise DocumentError(problem[1], where=problem[0], code=problem[2])

    def fingerprint(self, length: int = 20) -> str:
        """A stable hex digest of the whole document, for control ids that must be
        the same each time the same document is encoded."""
        digest = hashlib.sha256(repr(self).encode("utf-8"))
        for attachment in self.attachments:
            digest.update(attachment.data)
        if self.letter is not None:
            digest.update(self.letter.data)
        return digest.hexdigest()[:length]


def _problems(doc: Document):
    """Yield (field, problem, code) for every rule ``doc`` breaks."""
    kind = doc.kind if doc.kind.__class__ is Kind else Kind(doc.kind)
    answer = kind is Kind.TELECONSULT_ANSWER
    if problem := zd_problem(doc.zd_number, answer):
        yield "zd_number", problem, "E-DOC-ZD"
    if answer and doc.in_reply_to != doc.zd_number.removesuffix(ANSWER_SUFFIX):
        yield "in_reply_to", "an answer must reply to its own number without _ANTW", "E-DOC-ZD"
    elif doc.in_reply_to is not None and (problem := zd_problem(doc.in_reply_to)):
        yield "in_reply_to", problem, "E-DOC-ZD"
    if not isinstance(doc.sent_at, dt.datetime) or doc.sent_at.tzinfo or doc.sent_at.microsecond:
        yield "sent_at", "must be a naive local datetime in whole seconds", "E-DOC-DATE"
    elif (doc.sent_at.hour == 2 or doc.sent_at.year < 1977) and \
            local_time(aware(doc.sent_at).astimezone(dt.timezone.utc)) != doc.sent_at:
        # Dutch summer time has begun at 02:00 (skipping to 03:00) since 1977
        yield "sent_at", "is a time skipped by the change to summer time", "E-DOC-DATE"
    for name, value in (("sender.agb", _party_agb(doc.sender)),
                        ("recipient.agb", _party_agb(doc.recipient)),
                        ("sender.organisation_agb", doc.sender.organisation_agb or None),
                        ("recipient.practitioner_agb", doc.recipient.practitioner_agb or None)):
        if value is not None and (problem := agb_problem(value)):
            yield name, problem, "E-DOC-AGB"
    yield from _patient_problems(doc.patient, doc.sent_at)
    for index, attachment in enumerate(doc.attachments, 1):
        if not attachment.file_name or _PATH_SEPARATOR.search(attachment.file_name):
            yield f"attachments[{index}].file_name", "must be a plain file name", "E-DOC-ATTACHMENT"
        if not _MEDIA_TYPE.fullmatch(attachment.media_type):
            yield f"attachments[{index}].media_type", "is not a media type", "E-DOC-ATTACHMENT"
    if doc.letter is not None and not _MEDIA_TYPE.fullmatch(doc.letter.media_type):
        yield "letter.media_type", "is not a media type", "E-DOC-ATTACHMENT"
    for name in ("specialism", "product"):
        if (code := getattr(doc, name)) is not None and not code.code:
            yield f"{name}.code", "must not be empty", "E-DOC-TEXT"
    for name, value in _addresses(doc):
        if value is not None and not any(_ADDRESS_TEXTS(value)):
            yield name, "an empty address must be None", "E-DOC-TEXT"
    yield from _text_problems(doc)


def _party_agb(party: Sender | Recipient) -> str | None:
    """The AGB code to check: none while only the party's mailbox is known."""
    return None if party.mailbox and not party.agb else party.agb


def _addresses(doc: Document):
    return (("sender.address", doc.sender.address), ("recipient.address", doc.recipient.address),
            ("patient.address", doc.patient.address))


def _patient_problems(patient: Patient, sent_at: dt.datetime):
    if patient.bsn and (problem := bsn_problem(patient.bsn)):
        yield "patient.bsn", problem, "E-DOC-BSN"
    if patient.sex not in _SEXES:
        yield "patient.sex", "must be M, F or U", "E-DOC-SEX"
    if patient.birth_date is not None and isinstance(sent_at, dt.datetime):
        if patient.birth_date > sent_at.date() or patient.birth_date.year < 1880:
            yield "patient.birth_date", "is not a plausible birth date", "E-DOC-DATE"


def _text_problems(doc: Document):
    texts = all_text(doc)
    joined = "".join(texts)
    clean = joined.isprintable() or not _CONTROL.search(joined)       # isprintable: fast path
    if clean:
        named = texts[:len(texts) - len(doc.body)]
        if list(map(str.strip, named)) == named:
            return
    for name, value in text_fields(doc):
        if _CONTROL.search(value):
            yield name, "contains a control character", "E-DOC-TEXT"
        elif not name.startswith("body") and value != value.strip():
            yield name, "has leading or trailing blanks", "E-DOC-TEXT"


def all_text(doc: Document) -> list[str]:
    """Every text value of ``doc``, the letter lines last (fast; no field names)."""
    values = [doc.zd_number]
    for part in (doc.sender, doc.recipient, doc.patient):
        values += _STRINGS[type(part)](part)
        if part.address is not None:
            values += _ADDRESS_TEXTS(part.address)
    for attachment in doc.attachments:
        values += (attachment.file_name, attachment.media_type)
    if doc.letter is not None:
        values.append(doc.letter.media_type)
    for code in (doc.specialism, doc.product):
        if code is not None:
            values += (code.code, code.display, code.system)
    values += doc.body
    return values


def fits_latin1(doc: Document) -> bool:
    """Whether every text of ``doc`` can be written in ISO-8859-1."""
    try:
        "".join(all_text(doc)).encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def text_fields(obj, prefix: str = ""):
    """Yield (dotted name, value) for every text field reachable from ``obj`` (slow: for
    naming the field in an error once ``all_text`` found a problem)."""
    if isinstance(obj, tuple):
        for index, item in enumerate(obj, 1):
            yield from text_fields(item, f"{prefix}[{index}]")
        return
    if isinstance(obj, str):
        yield prefix, obj
        return
    if not dataclasses.is_dataclass(obj):
        return
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        name = f"{prefix}.{f.name}" if prefix else f.name
        if isinstance(value, str) and f.name in ("kind", "sex"):
            continue
        yield from text_fields(value, name)


_STRINGS = {cls: operator.attrgetter(*(f.name for f in dataclasses.fields(cls) if f.type is str))
            for cls in (Sender, Recipient, Patient)}             # a tuple of the party's texts
_SEXES = tuple(Sex)
# an address's fields in order (vars() would give the same, but builds the instance's
# dict, which makes every later read of the address slower)
_ADDRESS_TEXTS = operator.attrgetter(*(f.name for f in dataclasses.fields(Address)))


def require_agb(doc: Document, fmt: str) -> None:
    """Raise EncodeError when the sender or recipient is known only by a mailbox: ``fmt``
    identifies parties by AGB code (the route tables' mailboxes.csv maps mailboxes)."""
    for name, party in (("sender", doc.sender), ("recipient", doc.recipient)):
        if not party.agb:
            raise EncodeError(f"{fmt} needs the {name}'s AGB code; mailbox {party.mailbox[:35]!r} "
                              "is not mapped to one (mailboxes.csv)", where=f"field {name}.agb",
                              code="E-ENCODE-FIELD")


def answer_number(request_zd: str) -> str:
    """The ZD number of the answer to the request ``request_zd``."""
    return request_zd + ANSWER_SUFFIX


def aware(local: dt.datetime) -> dt.datetime:
    """``local`` (naive, Dutch time) with its Europe/Amsterdam UTC offset attached."""
    return local.replace(tzinfo=AMSTERDAM)


def local_time(moment: dt.datetime) -> dt.datetime:
    """A timestamp as naive Dutch local time; a naive ``moment`` is taken as local already."""
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(AMSTERDAM).replace(tzinfo=None)
