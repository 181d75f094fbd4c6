"""MEDVRI PID names as published readers and writers lay them out: what we write is read
with a surname by mmerlijn/msg-edifact's and Zato's rules, and their PID lines read right."""

import dataclasses
import datetime as dt

import pytest
from hypothesis import given, settings

from gateway.codecs import edifact
from gateway.document import Sex
from gateway.errors import EncodeError
from tests.strategies import medvri_documents

REFERRAL = (b"UNB+UNOA:1+01234567+06005678+260302:1012+R1'UNH+1+MEDVRI:1'GGA+M. Visser'"
            b"DET+26:03:02+10:12'%s'TXT:1+Geachte collega,'UNT+6+1'UNZ+1+R1'")


def split_components(segment: str) -> list[list[str]]:
    """An EDIFACT segment split on unescaped '+' and ':' with release '?' (ISO 9735)."""
    elements, component, escaped = [[]], "", False
    for char in segment:
        if escaped:
            component, escaped = component + char, False
        elif char == "?":
            escaped = True
        elif char in "+:":
            elements[-1].append(component)
            component = ""
            if char == "+":
                elements.append([])
        else:
            component += char
    elements[-1].append(component)
    return elements


def mmerlijn_reads(pid: str) -> dict:
    """The rules of mmerlijn/msg-edifact src/segments/PID.php (getMsg), written down:
    initials = component 6; a woman (V): lastname/prefix = components 1/2 and
    own_lastname/own_prefix = 3/4; anyone else: own_lastname/own_prefix = 1/2.
    So the surname it takes as in use is ``lastname`` for a woman, ``own_lastname`` else."""
    elements = split_components(pid) + [[""]] * 5
    name, sex = (elements[3] + [""] * 6)[:6], elements[2][0]
    found = {"initials": name[5], "lastname": "", "prefix": "", "own_lastname": "", "own_prefix": ""}
    if sex == "V":
        found.update(lastname=name[0], prefix=name[1], own_lastname=name[2], own_prefix=name[3])
    else:
        found.update(own_lastname=name[0], own_prefix=name[1])
    return found


def zato_reads(pid: str) -> dict:
    """Zato's zato.edifact.nl PatientName, written down: married_name, married_name_prefix,
    maiden_name, maiden_name_prefix, first_name, initials at components 1 to 6."""
    keys = ("married_name", "married_name_prefix", "maiden_name", "maiden_name_prefix",
            "first_name", "initials")
    return dict(zip(keys, ((split_components(pid) + [[""]] * 5)[3] + [""] * 6)[:6]))


def our_pid(data: bytes) -> str:
    """The PID segment of an interchange we wrote, up to its unescaped terminator."""
    text = data.decode("latin-1")
    start = end = text.index("\nPID+") + 1
    while text[end] != "'":
        end += 2 if text[end] == "?" else 1
    return text[start:end]


@given(medvri_documents())
@settings(max_examples=100, deadline=None)
def test_independent_readers_find_the_surname_in_use(doc):
    """Whatever patient we write, mmerlijn's rules find the name in use (the partner's
    when the patient has one, else the own name) and Zato's find it in component 1."""
    patient = doc.patient
    pid = our_pid(edifact.encode(doc))
    in_use = patient.partner_name if (patient.partner_name or patient.partner_prefix) \
        else patient.family_name
    read = mmerlijn_reads(pid)
    assert read["lastname" if patient.sex is Sex.FEMALE else "own_lastname"] == in_use
    assert zato_reads(pid)["married_name"] == in_use
    if patient.partner_name and patient.sex is Sex.FEMALE:
        assert mmerlijn_reads(pid)["own_lastname"] == patient.family_name
        assert zato_reads(pid)["maiden_name"] == patient.family_name


@pytest.mark.parametrize("pid, own, partner", [
    # mmerlijn/msg-edifact tests/Feature/EdifactTest.php writes a man as:
    ("PID+2000:01:01+M+Groot:de::::J++BSN123456782", ("Groot", "de"), ("", "")),
    # mmerlijn/msg tests/EdifactMedvriTest.php writes a woman using her partner's name as:
    ("PID+1999:09:13+V+Hek:van ?'t:Groot:de::KM++BSN123456782", ("Groot", "de"), ("Hek", "van 't")),
    # Zato's test interchange (test_selective_modification):
    ("PID+1975:03:18+V+Dijk:van der:Peters:de::M.++BSN999990019", ("Peters", "de"),
     ("Dijk", "van der")),
    # mmerlijn/msg's older writer put a man's own name second:
    ("PID+1999:09:13+M+::Groot:de::KM++BSN123456782", ("Groot", "de"), ("", "")),
])
def test_published_pid_lines_read_right(pid, own, partner):
    """PID lines as published libraries write them give the own and partner names they mean."""
    (doc,) = edifact.decode(REFERRAL % pid.encode("latin-1"))
    patient = doc.patient
    assert (patient.family_name, patient.family_prefix) == own
    assert (patient.partner_name, patient.partner_prefix) == partner


def test_lone_surname_is_written_first():
    """A man with only his own surname is written as mmerlijn writes him: 'Groot:de::::J'."""
    (doc,) = edifact.decode(REFERRAL % b"PID+2000:01:01+M+Groot:de::::J++BSN123456782")
    assert b"PID+2000:01:01+M+Groot:de::::J++BSN123456782'" in edifact.encode(doc)


def test_partner_name_without_own_name_is_not_written():
    """A partner name with no own family name cannot be laid out in MEDVRI: EncodeError."""
    (doc,) = edifact.decode(REFERRAL % b"PID+2000:01:01+V+Groot:de::::J")
    odd = dataclasses.replace(doc, patient=dataclasses.replace(
        doc.patient, family_name="", family_prefix="", partner_name="Groot",
        birth_date=dt.date(2000, 1, 1)))
    with pytest.raises(EncodeError) as caught:
        edifact.encode(odd)
    assert caught.value.where == "field patient.family_name"
