"""gatewayctl identities: onboarding a practice or hospital without a fresh init.

``ls`` shows each identity's kind, AGB codes, certificate subject and expiry and
SSH key fingerprint. ``add his|institution NAME --agb …`` writes its table into
the configuration and gives it a client certificate: issued by the configured CA
(``tls/ca.key`` beside ``tls.ca``), or signed from the operator's ``--csr FILE``,
or — ``--cert FILE`` — one from another CA, trusted by pinning its fingerprint
(``--ca FILE`` adds that CA to ``tls.ca``). ``--ssh-key FILE`` gives it an SFTP
account. ``rm NAME`` removes it (refused while a route table delivers to it).
The configuration is written atomically and only after the new file loaded
without a problem; each change is audited, put in force in the store (every node takes
it within seconds) and the running gatewayd here takes it at once.
"""

import base64
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.conch.ssh import keys as ssh_keys

from gateway import audit, config, inforce, pki, routes, times
from gateway.cli import live
from gateway.cli.admin import config_path, open_config, open_store, table
from gateway.cli.common import Unreadable, UsageError, actor
from gateway.errors import ConfigError, GatewayError
from gateway.files import sync_folder, write_durably
from gateway.identities import NAME

LS_COLUMNS = ("name", "kind", "agb", "pull", "certificate", "expires", "ssh_key")


class IdentityRefused(GatewayError):
    code = "E-IDENTITY"


def add_commands(group, command) -> None:
    """The ``identities`` subcommands, on the parser's ``group``."""
    command(group, "ls", cmd_ls, "identities with certificate and SSH key")
    add = command(group, "add", cmd_add, "add an identity (issues its client certificate)")
    add.add_argument("kind", choices=("his", "institution"))
    add.add_argument("name", metavar="NAME", help="lower case letters, digits, - and _")
    add.add_argument("--agb", action="append", required=True, metavar="AGB",
                     help="an AGB code it may send for (repeat, or comma-separated)")
    add.add_argument("--pull", metavar="AGB", help="institutions: the spool it may pull")
    source = add.add_mutually_exclusive_group()
    source.add_argument("--csr", metavar="FILE", help="sign this certificate request")
    source.add_argument("--cert", metavar="FILE", help="trust this certificate from another CA")
    add.add_argument("--ca", metavar="FILE", help="with --cert: the CA that issued it (added "
                     "to tls.ca)")
    add.add_argument("--ssh-key", metavar="FILE", help="public key of its SFTP account")
    command(group, "rm", cmd_rm, "remove an identity").add_argument("name", metavar="NAME")


def cmd_ls(args, out) -> int:
    """Every identity: kind, AGB codes, certificate subject and expiry, SSH key fingerprint."""
    settings = open_config(args)
    rows = [_describe(settings, identity) for identity in settings.identities]
    if args.json:
        out(json.dumps(rows, indent=2))
    else:
        out(table([{**r, "agb": ";".join(r["agb"]), "expires": times.local(r["expires"])
                    if r["expires"] else ""} for r in rows], LS_COLUMNS))
    return 0


def _describe(settings, identity) -> dict:
    cert = _read_cert(pki.client_cert_path(settings, identity.name))
    return {"name": identity.name, "kind": identity.kind, "agb": sorted(identity.agb),
            "pull": identity.pull or None, "certificate": pki.subject(cert) if cert else None,
            "expires": cert.not_valid_after_utc.timestamp() if cert else None,
            "pinned": identity.cert_sha256 or None,
            "ssh_key": _ssh_fingerprint(settings.base / identity.ssh_key)
            if identity.ssh_key else None}


def _read_cert(path: Path):
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None


def _ssh_fingerprint(path: Path) -> str:
    """``SHA256:…`` as ``ssh-keygen -l`` prints it."""
    try:
        blob = ssh_keys.Key.fromFile(str(path)).blob()
    except (OSError, ssh_keys.BadKeyError):
        return f"(unreadable: {path.name})"
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def cmd_add(args, out) -> int:
    """Add an identity: validate, certificate, SSH key, configuration, audit, daemon."""
    settings = open_config(args)
    name, codes = args.name, [c.strip() for a in args.agb for c in a.split(",") if c.strip()]
    if not NAME.fullmatch(name):
        raise UsageError(f"identity name {name!r}: lower case letters, digits, - and _ "
                         "(at most 32, not starting with a digit or -)")
    if any(i.name == name for i in settings.identities):
        raise IdentityRefused(f"identity {name!r} exists already (identities rm first)")
    if args.ca and not args.cert:
        raise UsageError("--ca goes with --cert")
    entries = {"kind": args.kind, "agb": codes}
    if args.pull:
        entries["pull"] = args.pull
    if args.ssh_key:
        entries["ssh_key"] = _ssh_key(settings, name, Path(args.ssh_key))
    if (args.kind == "institution") != bool(args.pull):
        raise UsageError("--pull AGB is for institutions, and every institution needs one")
    made, pin = _certificate(settings, args)
    if pin:
        entries["cert_sha256"] = pin
    path = config_path(args)
    checked = _checked_config(path, _with_identity(path.read_text(encoding="utf-8"), name, entries))
    made.update(_install(settings, name, made))
    _put_in_place(checked, path)
    _publish(path, settings, name, audit.Event(actor(), "identities-add", detail=(
        f"{name} {args.kind} agb={';'.join(codes)}" + (" ssh" if args.ssh_key else "")
        + (" pinned" if pin else ""))[:200]))
    answer = live.reload_parts(settings, ["identities", "certificates"])
    data = {"name": name, **{k: str(v) for k, v in made.items() if k != "cert_obj"},
            "daemon": answer and answer["pid"]}
    out(json.dumps(data, indent=2) if args.json else
        "\n".join(f"{k:12} {v}" for k, v in data.items() if k != "daemon")
        + f"\n{live.where(answer)}")
    return 0


def _certificate(settings, args) -> tuple[dict, str]:
    """The new identity's client certificate (and key, when issued here); the pin for a
    certificate from another CA."""
    if args.cert:
        cert = _load(Path(args.cert), x509.load_pem_x509_certificate, "certificate")
        common = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        if not common or common[0].value != args.name:
            raise IdentityRefused(f"the certificate's common name must be {args.name!r} (it names "
                                  "the identity)")
        if args.ca:
            issuer = _load(Path(args.ca), x509.load_pem_x509_certificate, "CA certificate")
            try:
                cert.verify_directly_issued_by(issuer)
            except (ValueError, TypeError, Exception) as exc:
                raise IdentityRefused(f"{args.cert} was not issued by {args.ca}: "
                                      f"{type(exc).__name__}") from None
            return {"cert_obj": cert, "ca_added": issuer}, pki.fingerprint(cert)
        return {"cert_obj": cert}, pki.fingerprint(cert)
    try:
        authority = pki.Authority.load(settings.tls_ca, settings.tls_ca.with_suffix(".key"))
    except (OSError, ValueError):
        raise IdentityRefused(f"no usable CA key at {settings.tls_ca.with_suffix('.key')}; sign "
                              "elsewhere and use --cert, or bring a --csr for a CA key here") \
            from None
    if args.csr:
        csr = _load(Path(args.csr), x509.load_pem_x509_csr, "certificate request")
        try:
            return {"cert_obj": authority.sign(csr, args.name)}, ""
        except ValueError as exc:
            raise IdentityRefused(f"{args.csr}: {exc}") from None
    cert, key = authority.issue(args.name)
    return {"cert_obj": cert, "key_obj": key}, ""


def _load(path: Path, loader, what: str):
    try:
        return loader(path.read_bytes())
    except OSError as exc:
        raise Unreadable(f"cannot read {path}: {exc.strerror}") from None
    except ValueError:
        raise IdentityRefused(f"{path} is not a PEM {what}") from None


def _install(settings, name: str, made: dict) -> dict:
    """Write the certificate (and key) beside the CA; add an issuing CA to ``tls.ca``."""
    folder = pki.client_cert_path(settings, name).parent
    cert_path, key_path = pki.write(folder, name, made.pop("cert_obj"), made.pop("key_obj", None))
    written = {"cert": cert_path}
    if key_path.exists() and "ca_added" not in made:
        written["key"] = key_path
    issuer = made.pop("ca_added", None)
    if issuer is not None:
        pem = issuer.public_bytes(serialization.Encoding.PEM)
        bundle = settings.tls_ca.read_bytes()
        if pem not in bundle:
            write_durably(settings.tls_ca, bundle.rstrip(b"\n") + b"\n" + pem)
        written["ca"] = settings.tls_ca
    return written


def _ssh_key(settings, name: str, source: Path) -> str:
    """Copy an SFTP public key next to the host key as ``NAME.pub``; its config path."""
    try:
        key = ssh_keys.Key.fromFile(str(source))
    except OSError as exc:
        raise Unreadable(f"cannot read {source}: {exc.strerror}") from None
    except ssh_keys.BadKeyError:
        raise IdentityRefused(f"{source} is not an SSH public key") from None
    if not key.isPublic():
        raise IdentityRefused(f"{source} is a private key; give the .pub file")
    target = settings.paths_ssh_host_key.parent / f"{name}.pub"
    target.parent.mkdir(parents=True, exist_ok=True)
    write_durably(target, key.toString("openssh") + b"\n")
    return os.path.relpath(target, settings.base)


def cmd_rm(args, out) -> int:
    """Remove an identity (refused while a route table delivers to its SFTP account)."""
    settings = open_config(args)
    if not any(i.name == args.name for i in settings.identities):
        raise IdentityRefused(f"no identity {args.name!r}")
    tables = routes.load(settings.paths_routes)
    users = [f"institution {i.agb}" for i in tables.institutions.values()
             if i.delivery == f"sftp:{args.name}"] + [
        f"referrer {r.agb}" for r in tables.referrers.values()
        if r.answer_address == f"sftp:{args.name}"]
    if users:
        raise IdentityRefused(f"the route tables deliver to sftp:{args.name} ({', '.join(users)}); "
                              "change those rows first")
    path = config_path(args)
    _put_in_place(_checked_config(path, _without_identity(path.read_text(encoding="utf-8"),
                                                           args.name)), path)
    _publish(path, settings, args.name, audit.Event(actor(), "identities-rm", detail=args.name))
    answer = live.reload_parts(settings, ["identities", "certificates"])
    out(json.dumps({"removed": args.name, "daemon": answer and answer["pid"]}) if args.json else
        f"removed identity {args.name} (its certificate files stay in "
        f"{pki.client_cert_path(settings, args.name).parent}); {live.where(answer)}")
    return 0


def _publish(path: Path, settings, name: str, event) -> None:
    """The identities of the configuration at ``path`` (just written) into the store as
    the ones in force on every node, with ``event`` as the audit record of ``name``'s
    change (other differences from the store's, if this node's file had them, are
    recorded as an identities-change)."""
    inforce.publish(open_store(settings), inforce.identity_texts(config.load(path)), actor(),
                    events=[event], told=frozenset({name}))


HEADER = re.compile(r"^\s*\[")


def _section(lines: list[str], name: str) -> tuple[int, int] | None:
    """Line range of ``[identities.NAME]`` up to the next table header."""
    pattern = re.compile(rf'^\s*\[\s*identities\s*\.\s*("{re.escape(name)}"|{re.escape(name)})\s*\]')
    for start, line in enumerate(lines):
        if pattern.match(line):
            end = next((i for i in range(start + 1, len(lines)) if HEADER.match(lines[i])),
                       len(lines))
            return start, end
    return None


def _with_identity(text: str, name: str, entries: dict) -> str:
    body = "".join(f"{key} = {json.dumps(value)}\n" for key, value in entries.items())
    return text.rstrip("\n") + f"\n\n[identities.{name}]\n{body}"


def _without_identity(text: str, name: str) -> str:
    lines = text.splitlines(keepends=True)
    found = _section(lines, name)
    if found is None:
        raise IdentityRefused(f"identity {name!r} is not written as [identities.{name}] in the "
                              "configuration; edit it by hand")
    return "".join(lines[:found[0]] + lines[found[1]:])


def _checked_config(path: Path, text: str) -> Path:
    """``text`` written durably beside the configuration and loaded without a problem
    (else ConfigError, and nothing changed); the file to put in place."""
    check = path.with_name(f".{path.name}.new")
    write_durably(check, text.encode("utf-8"))
    try:
        config.load(check)
    except ConfigError:
        check.unlink(missing_ok=True)
        raise
    shutil.copymode(path, check)
    return check


def _put_in_place(checked: Path, path: Path) -> None:
    os.replace(checked, path)
    sync_folder(path.parent)
