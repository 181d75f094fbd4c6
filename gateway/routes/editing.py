"""Changing the route tables: add, set, remove, import — validated whole before applying.

A change is written to copies of both CSV files, the copies are loaded (which
checks everything), and only then do they replace the files in force (temporary
name, fsync, rename). A change that fails validation leaves the tables as they
were. ``set_row`` changes one row where it stands (comments and order kept).
``describe`` says what changed, line by line and field by field, for the change
log — for a gatewayctl change and for files edited by hand and reloaded alike.
"""

import csv
import io
import tempfile
from pathlib import Path

from gateway.files import write_durably
from gateway.routes.tables import (INSTITUTION_COLUMNS, MAILBOXES, REFERRER_COLUMNS, TableError,
                                   Tables, load)

FILES = {"institution": ("institutions.csv", INSTITUTION_COLUMNS),
         "referrer": ("referrers.csv", REFERRER_COLUMNS)}


def add_row(folder: Path, table: str, values: list[str]) -> Tables:
    """Append a row to ``table`` (institution or referrer); return the new tables."""
    name, _ = FILES[table]
    text = (folder / name).read_text(encoding="utf-8-sig")
    line = _csv_line(values)
    return apply(folder, {name: text + ("" if text.endswith("\n") or not text else "\n") + line})


def remove_row(folder: Path, table: str, agb: str) -> Tables:
    """Remove the row for ``agb`` from ``table``; raise KeyError if there is none."""
    name, _ = FILES[table]
    lines = (folder / name).read_text(encoding="utf-8-sig").splitlines(keepends=True)
    kept = [line for line in lines if _agb(line) != agb]
    if len(kept) == len(lines):
        raise KeyError(agb)
    return apply(folder, {name: "".join(kept)})


def set_row(folder: Path, table: str, agb: str, changes: dict[str, str]) -> Tables:
    """Change columns of the row for ``agb`` in place (the other rows, comments and the
    order stay); raise KeyError if there is none, TableError if the result is invalid."""
    name, columns = FILES[table]
    lines = (folder / name).read_text(encoding="utf-8-sig").splitlines(keepends=True)
    for number, line in enumerate(lines):
        if number and _agb(line) == agb:
            cells = [cell.strip() for cell in next(csv.reader([line]))]
            cells += [""] * (len(columns) - len(cells))
            row = dict(zip(columns, cells))
            row.update(changes)
            lines[number] = _csv_line([row[c] for c in columns])
            return apply(folder, {name: "".join(lines)})
    raise KeyError(agb)


def _agb(line: str) -> str | None:
    """The AGB code a CSV data line is about (None for blanks and comments)."""
    if not line.strip() or line.lstrip().startswith("#"):
        return None
    return next(csv.reader([line]), [""])[0].strip()


def apply(folder: Path, replacements: dict[str, str]) -> Tables:
    """Validate the tables with ``replacements`` (file name -> text) and, if they load,
    put them in force. Raises TableError (nothing changed) otherwise."""
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        for name, _ in FILES.values():
            text = replacements.get(name)
            if text is None:
                text = (folder / name).read_text(encoding="utf-8-sig")
            (Path(scratch) / name).write_text(text, encoding="utf-8")
        if (folder / MAILBOXES).exists():      # the optional mailbox table loads with them
            (Path(scratch) / MAILBOXES).write_bytes((folder / MAILBOXES).read_bytes())
        try:
            tables = load(Path(scratch))
        except TableError as exc:
            raise TableError([p.replace(scratch, str(folder)) for p in exc.problems]) from None
        for name, text in replacements.items():
            _replace(folder / name, text)
    return tables


def describe(old: Tables, new: Tables) -> list[str]:
    """What changed between two versions of the tables, one line per AGB code."""
    changes = []
    for label, before, after in (("institution", old.institutions, new.institutions),
                                 ("referrer", old.referrers, new.referrers)):
        changes += [f"+ {label} {agb}" for agb in sorted(set(after) - set(before))]
        changes += [f"- {label} {agb}" for agb in sorted(set(before) - set(after))]
        changes += [f"~ {label} {agb}: {_fields(before[agb], after[agb])}"
                    for agb in sorted(set(before) & set(after)) if before[agb] != after[agb]]
    return changes


def _fields(old, new) -> str:
    """``field old -> new`` for each field that differs between two rows."""
    shown = []
    for field in vars(old):
        was, now = _text(getattr(old, field)), _text(getattr(new, field))
        if was != now:
            shown.append(f"{field} {was or '(empty)'} -> {now or '(empty)'}")
    return ", ".join(shown)


def _text(value) -> str:
    if value is None:
        return "*"
    return ";".join(sorted(value)) if isinstance(value, frozenset) else str(value)


def as_data(tables: Tables) -> dict:
    """Both tables as JSON-ready rows (``routes ls``, and the daemon's tables in force)."""
    return {"institutions": [{"agb": i.agb, "name": i.name, "format": i.format,
                              "delivery": i.delivery, "options": ";".join(sorted(i.options))}
                             for i in tables.institutions.values()],
            "referrers": [{"agb": r.agb, "name": r.name, "answer_address": r.answer_address,
                           "institutions": "*" if r.institutions is None else
                           ";".join(sorted(r.institutions))} for r in tables.referrers.values()]}


def _csv_line(values: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(values)
    return out.getvalue()


def _replace(path: Path, text: str) -> None:
    write_durably(path, text.encode("utf-8"))
