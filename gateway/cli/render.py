"""Documents as plain data (for ``--json``) and as readable text for people."""

import hashlib

from gateway.document import Address, Code, Document


def as_dict(doc: Document) -> dict:
    """``doc`` as JSON-ready data: ISO dates, attachments by size and SHA-256 (not content)."""
    patient = doc.patient
    return {
        "kind": str(doc.kind),
        "zd_number": doc.zd_number,
        "sent_at": doc.sent_at.isoformat(),
        "in_reply_to": doc.in_reply_to,
        "sender": {**_fields(doc.sender), "address": _address(doc.sender.address)},
        "recipient": {**_fields(doc.recipient), "address": _address(doc.recipient.address)},
        "patient": {**_fields(patient), "sex": str(patient.sex),
                    "birth_date": patient.birth_date.isoformat() if patient.birth_date else None,
                    "address": _address(patient.address)},
        "body": list(doc.body),
        "letter": {"media_type": doc.letter.media_type, "size": len(doc.letter.data),
                   "sha256": hashlib.sha256(doc.letter.data).hexdigest()} if doc.letter else None,
        "specialism": _code(doc.specialism),
        "product": _code(doc.product),
        "attachments": [{"file_name": a.file_name, "media_type": a.media_type, "size": len(a.data),
                         "sha256": hashlib.sha256(a.data).hexdigest()} for a in doc.attachments],
        "warnings": list(doc.warnings),
    }


def _code(code: Code | None) -> dict | None:
    return dict(vars(code)) if code else None


def _fields(obj) -> dict:
    return {key: value for key, value in vars(obj).items() if isinstance(value, str)}


def _address(address: Address | None) -> dict | None:
    return dict(vars(address)) if address else None


def as_text(doc: Document) -> str:
    """A short readable summary of ``doc``, with the letter in full."""
    s, r, p = doc.sender, doc.recipient, doc.patient
    family = " ".join(x for x in (p.family_prefix, p.family_name) if x)
    partner = " ".join(x for x in (p.partner_prefix, p.partner_name) if x)
    lines = [
        f"{doc.kind} {doc.zd_number}" + (f" (reply to {doc.in_reply_to})" if doc.in_reply_to else "")
        + f", sent {doc.sent_at:%Y-%m-%d %H:%M}",
        "  from      " + _join(s.name, _agb(s.agb, s.mailbox), s.department, s.organisation,
                               f"organisation AGB {s.organisation_agb}" if s.organisation_agb else ""),
        "  to        " + _join(r.name, _agb(r.agb, r.mailbox), r.department, r.practitioner,
                               f"practitioner AGB {r.practitioner_agb}" if r.practitioner_agb else ""),
        "  patient   " + _join(f"BSN {p.bsn}" if p.bsn else "no BSN", family,
                               f"partner {partner}" if partner else "", p.given_name, p.initials,
                               f"sex {p.sex}", f"born {p.birth_date}" if p.birth_date else "",
                               f"portal id {p.portal_id}" if p.portal_id else ""),
    ]
    lines += [f"  {name:9} {_show(code)}" for name, code in
              (("specialism", doc.specialism), ("product", doc.product)) if code]
    if doc.letter:
        lines.append(f"  letter    {doc.letter.media_type}, {len(doc.letter.data)} bytes")
    lines += [f"  letter    {len(doc.body)} lines", *(f"    | {line}" for line in doc.body)]
    lines += [f"  attachment {a.file_name} ({a.media_type}, {len(a.data)} bytes)"
              for a in doc.attachments]
    lines += [f"  warning   {warning}" for warning in doc.warnings]
    return "\n".join(lines)


def _agb(agb: str, mailbox: str) -> str:
    if not agb:
        return f"mailbox {mailbox} (no AGB code)"
    return f"AGB {agb}" + (f" (mailbox {mailbox})" if mailbox else "")


def _show(code: Code) -> str:
    return " ".join(part for part in (code.code, code.display, f"({code.system})" if code.system
                                      else "") if part)


def _join(*parts: str) -> str:
    return ", ".join(part for part in parts if part)
