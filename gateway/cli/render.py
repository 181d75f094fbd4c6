"""Documents as plain data (for ``--json``) and as readable text for people."""

import hashlib

from gateway.document import Address, Document


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
        "attachments": [{"file_name": a.file_name, "media_type": a.media_type, "size": len(a.data),
                         "sha256": hashlib.sha256(a.data).hexdigest()} for a in doc.attachments],
    }


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
        "  from      " + _join(s.name, f"AGB {s.agb}", s.department, s.organisation,
                               f"organisation AGB {s.organisation_agb}" if s.organisation_agb else ""),
        "  to        " + _join(r.name, f"AGB {r.agb}", r.department, r.practitioner,
                               f"practitioner AGB {r.practitioner_agb}" if r.practitioner_agb else ""),
        "  patient   " + _join(f"BSN {p.bsn}" if p.bsn else "no BSN", family,
                               f"partner {partner}" if partner else "", p.given_name, p.initials,
                               f"sex {p.sex}", f"born {p.birth_date}" if p.birth_date else ""),
        f"  letter    {len(doc.body)} lines",
        *(f"    | {line}" for line in doc.body),
    ]
    lines += [f"  attachment {a.file_name} ({a.media_type}, {len(a.data)} bytes)"
              for a in doc.attachments]
    return "\n".join(lines)


def _join(*parts: str) -> str:
    return ", ".join(part for part in parts if part)
