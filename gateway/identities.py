"""Identities: who may connect, and for which AGB codes.

An identity is a client certificate's subject or an SFTP account, declared in
``gatewayd.toml``::

    [identities.his-brink]
    kind = "his"                 # "his" (a GP system) or "institution" (a hospital system)
    agb = ["01234567"]           # the AGB codes it may send for (the referrers who mandated it)

    [identities.zis-eemland]
    kind = "institution"
    agb = ["06005678", "03056789"]
    pull = "06005678"            # the institution whose spool it may pull
    # ssh_key = "ssh/NAME.pub"   # the public key of its SFTP account, if it has one
    # ssh_public_key = "ssh-ed25519 AAAA…"   # or that key itself, written out
    # cert_sha256 = "…"          # pins its certificate when another CA issued it

An identity's client certificate names it by its common name; one issued by a
CA other than ``tls.ca``'s first certificate is accepted only when its SHA-256
fingerprint is pinned here (``gatewayctl identities add --cert``). Names are
SFTP-account-like: lower case letters, digits, ``-`` and ``_``.

Sending for an AGB code not listed is refused; so is pulling another spool.

The identities in force live in the store (``gateway.inforce``) as ``render``'s
canonical TOML, each SSH key written out (``with_keys``), so that every node
has them without the key files; ``from_text`` reads them back.
"""

import json
import re
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path

from gateway.document import agb_problem
from gateway.errors import ConfigError

KINDS = ("his", "institution")
KEYS = {"kind", "agb", "pull", "ssh_key", "ssh_public_key", "cert_sha256"}
NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


@dataclass(frozen=True)
class Identity:
    name: str
    kind: str
    agb: frozenset[str]
    pull: str = ""
    ssh_key: str = ""          # public key file of its SFTP account (relative to the config)
    cert_sha256: str = ""      # pinned certificate (one from another CA)
    ssh_public_key: str = ""   # that key itself (OpenSSH's one line), when written out


def parse(section: dict, where: str) -> tuple[Identity, ...]:
    """The ``[identities.*]`` tables of a configuration; raise ConfigError naming the key."""
    found = []
    for name, entries in section.items():
        key = f"identities.{name}"
        if not isinstance(entries, dict):
            raise ConfigError(f"{key} must be a table", where=where, code="E-CONFIG-VALUE")
        if unknown := sorted(set(entries) - KEYS):
            raise ConfigError(f"unknown setting(s) {', '.join(f'{key}.{u}' for u in unknown)}",
                              where=where, code="E-CONFIG-KEY")
        kind, codes, pull = entries.get("kind"), entries.get("agb", []), entries.get("pull", "")
        if kind not in KINDS:
            raise ConfigError(f"{key}.kind must be one of {', '.join(KINDS)}", where=where,
                              code="E-CONFIG-VALUE")
        if not isinstance(codes, list) or any(not isinstance(c, str) or agb_problem(c) for c in codes):
            raise ConfigError(f"{key}.agb must be a list of AGB codes (8 digits)", where=where,
                              code="E-CONFIG-VALUE")
        if (kind == "institution") != bool(pull) or (pull and agb_problem(str(pull))):
            raise ConfigError(f"{key}.pull must be the institution's AGB code, for institutions only",
                              where=where, code="E-CONFIG-VALUE")
        ssh_key, pin = entries.get("ssh_key", ""), entries.get("cert_sha256", "")
        public = entries.get("ssh_public_key", "")
        if not isinstance(ssh_key, str):
            raise ConfigError(f"{key}.ssh_key must be a path", where=where, code="E-CONFIG-VALUE")
        if not isinstance(public, str) or "\n" in public.strip():
            raise ConfigError(f"{key}.ssh_public_key must be one line (an OpenSSH public key)",
                              where=where, code="E-CONFIG-VALUE")
        if not isinstance(pin, str) or (pin and not re.fullmatch(r"[0-9a-f]{64}", pin)):
            raise ConfigError(f"{key}.cert_sha256 must be 64 hex digits", where=where,
                              code="E-CONFIG-VALUE")
        if not NAME.fullmatch(name):
            raise ConfigError(f"{key}: a name is lower case letters, digits, - and _ (at most 32)",
                              where=where, code="E-CONFIG-VALUE")
        found.append(Identity(name, kind, frozenset(codes), pull, ssh_key, pin, public.strip()))
    return tuple(found)


def with_keys(found: tuple[Identity, ...], base: Path) -> tuple[Identity, ...]:
    """``found`` with each SSH key file (``ssh_key``, relative to ``base``) read into
    ``ssh_public_key``; raise ConfigError naming the identity when one is unusable."""
    from twisted.conch.ssh import keys as ssh_keys      # only where SSH keys are read
    done = []
    for identity in found:
        if identity.ssh_key and not identity.ssh_public_key:
            try:
                key = ssh_keys.Key.fromFile(str(Path(base) / identity.ssh_key))
            except (OSError, ssh_keys.BadKeyError) as exc:
                raise ConfigError(f"identities.{identity.name}.ssh_key unusable: {exc}",
                                  code="E-CONFIG-SSH") from None
            identity = replace(identity, ssh_public_key=key.toString("openssh").decode())
        done.append(identity)
    return tuple(done)


def render(found: tuple[Identity, ...]) -> str:
    """The canonical TOML of ``found``: one table per identity, by name, in a fixed order
    of keys (what the store keeps and compares)."""
    out = []
    for identity in sorted(found, key=lambda i: i.name):
        entries = {"kind": identity.kind, "agb": sorted(identity.agb), "pull": identity.pull,
                   "ssh_key": identity.ssh_key, "ssh_public_key": identity.ssh_public_key,
                   "cert_sha256": identity.cert_sha256}
        out.append(f"[identities.{identity.name}]\n" + "".join(
            f"{key} = {json.dumps(value)}\n" for key, value in entries.items() if value))
    return "\n".join(out)


def from_text(text: str, where: str = "the store") -> tuple[Identity, ...]:
    """The identities of a TOML ``text`` (``render``'s); raise ConfigError."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", where=where, code="E-CONFIG-SYNTAX") from None
    if set(data) - {"identities"}:
        raise ConfigError("only [identities.*] tables belong here", where=where,
                          code="E-CONFIG-KEY")
    return parse(data.get("identities", {}), where)


SAMPLES = '''
# Identities: who may connect, and for which AGB codes (see gateway/identities.py).
[identities.his-brink]
kind = "his"
agb = ["01234567"]
ssh_key = "ssh/his-brink.pub"

[identities.his-hoogveld]
kind = "his"
agb = ["01765432"]
ssh_key = "ssh/his-hoogveld.pub"

[identities.zis-eemland]
kind = "institution"
agb = ["06005678", "03056789"]
pull = "06005678"

[identities.zis-zuid]
kind = "institution"
agb = ["06009876"]
pull = "06009876"
'''
