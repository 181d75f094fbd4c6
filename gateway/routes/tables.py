"""AGB route tables: load and validate the administrators' CSV files.

``institutions.csv``: ``agb,name,format,delivery,options`` — the receiving
institution's AGB code; output format ``xml``, ``hl7`` (REF^I12/RRI^I12), ``zd-hl7``
(ZorgDomein's ORU^R01, for hospital systems that take ZorgDomein's HL7) or ``edifact``; delivery
``pull``, ``mllp://host:port`` or ``sftp:ACCOUNT``; options, ``;``-separated,
from ``cancel``, ``supplement``, ``attachments``.

``referrers.csv``: ``agb,name,institutions,answer_address`` — a referrer's
personal AGB code; the institutions that know this referrer (``;``-separated
AGB codes, or ``*``); where answers for this referrer go (``sftp:ACCOUNT``, or
empty when answers are not delivered automatically).

``mailboxes.csv`` (optional): ``mailbox,agb,name`` — how a sender addressed a party
instead of by AGB code, and the AGB code it stands for: a network mailbox number in
an EDIFACT UNB (ZorgMail/Medicom style, e.g. ``500000101``), or a receiving facility
name in HL7 MSH-6 (as ZorgDomein writes it, e.g. ``Ziekenhuis Eemland``); ``name``
says what it is. The AGB code is routed like any other (an institution or referrer
not in the tables sends the message to fallback, naming the code).
Names match without regard to case or repeated blanks. An 8-digit mailbox is
refused: an 8-digit UNB address is read as an AGB code.

Blank lines and lines starting with ``#`` are ignored; the header row is
required. Every problem is reported as ``file:line: problem``; a table with any
problem is refused as a whole.
"""

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

from gateway.document import agb_problem
from gateway.errors import ConfigError

FORMATS = ("edifact", "hl7", "zd-hl7", "xml")
OPTIONS = ("cancel", "supplement", "attachments")
INSTITUTION_COLUMNS = ("agb", "name", "format", "delivery", "options")
REFERRER_COLUMNS = ("agb", "name", "institutions", "answer_address")
MAILBOX_COLUMNS = ("mailbox", "agb", "name")
MAILBOXES = "mailboxes.csv"
MAILBOX_LENGTH = 70

_DELIVERY = re.compile(r"pull|mllp://[A-Za-z0-9.-]+:[0-9]{1,5}|sftp:[a-z_][a-z0-9_-]{0,31}")
_HOST_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_ANSWER = re.compile(r"sftp:[a-z_][a-z0-9_-]{0,31}")


def shown(mailbox: str) -> str:
    """A mailbox number as a reason or log line shows it: cut to the longest a table holds
    (a sender's over-long value is never echoed whole)."""
    return mailbox[:MAILBOX_LENGTH]


@dataclass(frozen=True)
class Institution:
    agb: str
    name: str
    format: str
    delivery: str
    options: frozenset[str]


@dataclass(frozen=True)
class Referrer:
    agb: str
    name: str
    institutions: frozenset[str] | None   # None means every institution ("*")
    answer_address: str

    def known_to(self, institution_agb: str) -> bool:
        return self.institutions is None or institution_agb in self.institutions


@dataclass(frozen=True)
class Mailbox:
    mailbox: str
    agb: str
    name: str
    line: str          # mailboxes.csv:line, for the note a mapping leaves


@dataclass(frozen=True)
class Tables:
    institutions: dict[str, Institution]
    referrers: dict[str, Referrer]
    mailboxes: dict[str, Mailbox] = field(default_factory=dict)   # by mailbox_key()


def mailbox_key(mailbox: str) -> str:
    """How mailboxes are compared: case and repeated blanks do not count."""
    return " ".join(mailbox.split()).casefold()


class TableError(ConfigError):
    """A route table failed to load; ``problems`` lists every ``file:line: problem``."""

    code = "E-ROUTES"

    def __init__(self, problems: list[str]):
        shown = "; ".join(problems[:5]) + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "")
        super().__init__(f"route tables refused: {shown}")
        self.problems = problems


TEXTS = ("institutions.csv", "referrers.csv", MAILBOXES)    # the files, in loading order


def load(folder: Path) -> Tables:
    """Load both tables from ``folder``; raise TableError listing every problem."""
    texts, problems = read_texts(folder)
    return parse(texts, folder, problems)


def read_texts(folder: Path) -> tuple[dict[str, str | None], list[str]]:
    """The text of each table file in ``folder`` (None for an absent mailboxes.csv), and
    a ``file:0: cannot read`` problem for each file that cannot be read."""
    texts: dict[str, str | None] = {}
    problems: list[str] = []
    for name in TEXTS:
        path = Path(folder) / name
        texts[name] = None
        if name == MAILBOXES and not path.exists():
            continue
        try:
            texts[name] = path.read_text(encoding="utf-8-sig")    # a spreadsheet's BOM is fine
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"{path}:0: cannot read: {getattr(exc, 'strerror', None) or exc}")
    return texts, problems


def parse(texts: dict[str, str | None], folder: Path, problems: list[str] | None = None) -> Tables:
    """The tables from their files' ``texts`` (as ``read_texts`` gives them; problems are
    named as lines of the files in ``folder``); raise TableError listing every problem."""
    problems = list(problems or [])
    folder = Path(folder)
    institutions = _load_institutions(folder / "institutions.csv",
                                      texts.get("institutions.csv"), problems)
    referrers = _load_referrers(folder / "referrers.csv", texts.get("referrers.csv"),
                                set(institutions), problems)
    mailboxes = _load_mailboxes(folder / MAILBOXES, texts[MAILBOXES], problems) \
        if texts.get(MAILBOXES) is not None else {}
    if problems:
        raise TableError(problems)
    return Tables(institutions, referrers, mailboxes)


def _rows(path: Path, text: str | None, columns: tuple[str, ...], problems: list[str]):
    """Yield (line number, row dict) for each data row of the CSV ``text`` of ``path``
    (None: it could not be read, which is said already)."""
    if text is None:
        return
    text = text.removeprefix("\ufeff")
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1)
             if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        problems.append(f"{path}:1: no header row ({','.join(columns)})")
        return
    header_line, header = lines[0]
    found = tuple(cell.strip() for cell in next(csv.reader([header])))
    if found != columns:
        problems.append(f"{path}:{header_line}: header must be {','.join(columns)}, "
                        f"not {','.join(found)}")
        return
    for number, line in lines[1:]:
        cells = [cell.strip() for cell in next(csv.reader([line]))]
        if len(cells) != len(columns):
            problems.append(f"{path}:{number}: {len(cells)} columns, expected {len(columns)}")
            continue
        yield number, dict(zip(columns, cells))


def _load_institutions(path: Path, text: str | None, problems: list[str]) -> dict[str, Institution]:
    found: dict[str, Institution] = {}
    seen: set[str] = set()
    for number, row in _rows(path, text, INSTITUTION_COLUMNS, problems):
        where = f"{path}:{number}"
        options = frozenset(o.strip() for o in row["options"].split(";") if o.strip())
        checks = [
            (agb_problem(row["agb"]), f"agb {row['agb']!r} {agb_problem(row['agb'])}"),
            (row["agb"] in seen, f"agb {row['agb']} appears twice"),
            (not row["name"], "name is empty"),
            (row["format"] not in FORMATS, f"format {row['format']!r} is not one of {', '.join(FORMATS)}"),
            (not _DELIVERY.fullmatch(row["delivery"]),
             f"delivery {row['delivery']!r} is not pull, mllp://host:port or sftp:ACCOUNT"),
            (bool(_DELIVERY.fullmatch(row["delivery"])) and bool(_address_problem(row["delivery"])),
             f"delivery {row['delivery']!r}: {_address_problem(row['delivery'])}"),
            (row["delivery"].startswith("mllp://") and row["format"] not in ("hl7", "zd-hl7"),
             "delivery over mllp:// needs format hl7 or zd-hl7"),
            (bool(options - set(OPTIONS)),
             f"unknown option(s) {', '.join(sorted(options - set(OPTIONS)))} (known: {', '.join(OPTIONS)})"),
        ]
        bad = [f"{where}: {said}" for failed, said in checks if failed]
        problems += bad
        seen.add(row["agb"])
        if not bad:
            found[row["agb"]] = Institution(row["agb"], row["name"], row["format"], row["delivery"],
                                            options)
    return found


def _address_problem(delivery: str) -> str | None:
    """Why an ``mllp://host:port`` address that looks right cannot be reached, or None."""
    if not delivery.startswith("mllp://"):
        return None
    host, _, port = delivery.removeprefix("mllp://").rpartition(":")
    if not 1 <= int(port) <= 65535:
        return f"port {int(port)} is outside 1..65535"
    if len(host) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in host.split(".")):
        return f"host {host!r} is not a host name or IPv4 address"
    return None


def _load_referrers(path: Path, text: str | None, institutions: set[str],
                    problems: list[str]) -> dict[str, Referrer]:
    found: dict[str, Referrer] = {}
    seen: set[str] = set()
    for number, row in _rows(path, text, REFERRER_COLUMNS, problems):
        where = f"{path}:{number}"
        known = None if row["institutions"] == "*" else frozenset(
            a.strip() for a in row["institutions"].split(";") if a.strip())
        checks = [
            (agb_problem(row["agb"]), f"agb {row['agb']!r} {agb_problem(row['agb'])}"),
            (row["agb"] in seen, f"agb {row['agb']} appears twice"),
            (not row["name"], "name is empty"),
            (known is not None and not known, "institutions is empty (use * for all)"),
            (known is not None and bool(known - institutions),
             f"institution(s) {', '.join(sorted((known or set()) - institutions))} not in "
             "institutions.csv"),
            (bool(row["answer_address"]) and not _ANSWER.fullmatch(row["answer_address"]),
             f"answer_address {row['answer_address']!r} is not sftp:ACCOUNT"),
        ]
        bad = [f"{where}: {said}" for failed, said in checks if failed]
        problems += bad
        seen.add(row["agb"])
        if not bad:
            found[row["agb"]] = Referrer(row["agb"], row["name"], known, row["answer_address"])
    return found


def _load_mailboxes(path: Path, text: str, problems: list[str]) -> dict[str, Mailbox]:
    found: dict[str, Mailbox] = {}
    for number, row in _rows(path, text, MAILBOX_COLUMNS, problems):
        where = f"{path}:{number}"
        key = mailbox_key(row["mailbox"])
        checks = [
            (not key, "mailbox is empty"),
            (len(row["mailbox"]) > MAILBOX_LENGTH, f"mailbox is longer than {MAILBOX_LENGTH}"),
            (not agb_problem(row["mailbox"]),
             f"mailbox {row['mailbox']!r} is an AGB code (an 8-digit UNB address is read as one)"),
            (key in found, f"mailbox {row['mailbox']!r} appears twice"),
            (bool(agb_problem(row["agb"])), f"agb {row['agb']!r} {agb_problem(row['agb'])}"),
        ]
        bad = [f"{where}: {said}" for failed, said in checks if failed]
        problems += bad
        if not bad:
            found[key] = Mailbox(row["mailbox"], row["agb"], row["name"], f"{path.name}:{number}")
    return found
