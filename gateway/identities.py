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
    # cert_sha256 = "…"          # pins its certificate when another CA issued it

An identity's client certificate names it by its common name; one issued by a
CA other than ``tls.ca``'s first certificate is accepted only when its SHA-256
fingerprint is pinned here (``gatewayctl identities add --cert``). Names are
SFTP-account-like: lower case letters, digits, ``-`` and ``_``.

Sending for an AGB code not listed is refused; so is pulling another spool.
"""

import re
from dataclasses import dataclass

from gateway.document import agb_problem
from gateway.errors import ConfigError

KINDS = ("his", "institution")
KEYS = {"kind", "agb", "pull", "ssh_key", "cert_sha256"}
NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


@dataclass(frozen=True)
class Identity:
    name: str
    kind: str
    agb: frozenset[str]
    pull: str = ""
    ssh_key: str = ""          # public key file of its SFTP account (relative to the config)
    cert_sha256: str = ""      # pinned certificate (one from another CA)


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
        if not isinstance(ssh_key, str):
            raise ConfigError(f"{key}.ssh_key must be a path", where=where, code="E-CONFIG-VALUE")
        if not isinstance(pin, str) or (pin and not re.fullmatch(r"[0-9a-f]{64}", pin)):
            raise ConfigError(f"{key}.cert_sha256 must be 64 hex digits", where=where,
                              code="E-CONFIG-VALUE")
        if not NAME.fullmatch(name):
            raise ConfigError(f"{key}: a name is lower case letters, digits, - and _ (at most 32)",
                              where=where, code="E-CONFIG-VALUE")
        found.append(Identity(name, kind, frozenset(codes), pull, ssh_key, pin))
    return tuple(found)


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
