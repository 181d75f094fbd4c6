"""The HTTPS API (twisted.web over the same mutual TLS as MLLP).

- ``POST /v1/messages`` — body EDIFACT, HL7 or XML (sniffed): 202 with
  ``{id, zd_number, state}`` after the store committed (a list for several
  documents), or 4xx with ``{code, message, where}``: 400 unreadable (kept as
  rejected), 403 not mandated, 409 a reused control id, 413 too large.
- ``GET /v1/spool`` — the caller's institution's messages waiting for pickup
  (``received_at`` in ISO 8601 UTC, ``Z``).
- ``GET /v1/messages/{id}`` — the payload in the institution's format.
- ``POST /v1/messages/{id}/ack`` — confirms pickup (unconfirmed ones stay offered).
- ``GET /v1/status/{zd}`` — state of the caller's own messages with that ZD number.
- ``GET /healthz`` — 200 when the store answers.

An institution sees and pulls only its own spool (its identity's ``pull``);
anything else is 404, exactly as for a message that does not exist.

The site lives within the bounds of ``gateway.transports.webbounds``: bodies in
memory up to ``limits.max_message_bytes`` (413 before reading a larger one, nothing
stored, the refusal audited), 431 for oversize headers, 408 for slow requests.
"""

import io

from twisted.internet import defer
from twisted.logger import Logger
from twisted.protocols import basic
from twisted.web import resource, server

from gateway import audit, times
from gateway.errors import DecodeError, GatewayError, StoreError
from gateway.intake import Intake
from gateway.reading import REFUSALS, Envelope
from gateway.logs import Throttle
from gateway.retention import purge_text
from gateway.spool import queries
from gateway.spool.payloads import PayloadCorrupt
from gateway.transports import tls
from gateway.transports.guard import Budget
from gateway.transports.webbounds import _json, bounded_site

CONTENT_TYPES = {"xml": b"application/fhir+xml", "hl7": b"x-application/hl7-v2+er7",
                 "zd-hl7": b"x-application/hl7-v2+er7",
                 "edifact": b"application/EDIFACT"}

STREAM_FROM = 64 * 1024      # answers larger than this are written as the client reads them
SPOOL_PAGE = 1000            # messages in one page of GET /v1/spool
log = Logger(namespace="gatewayd.https")   # module level: as a class attribute Twisted renames it


class Api(resource.Resource):
    """Routes requests by path; each request is answered from the intake and store."""

    isLeaf = True

    def __init__(self, intake: Intake, identities: dict, max_bytes: int, accept=None,
                 record=None, clock=None):
        super().__init__()
        self.intake, self.identities, self.max_bytes = intake, identities, max_bytes
        self.accept = accept or intake.accept
        # audit records: with the next group commit in the daemon, at once otherwise
        self.record = record or (lambda events: defer.maybeDeferred(intake.store.record, events))
        self.refusals = Throttle(clock or intake.store.clock)   # refused reads on record

    def render(self, request):
        peer = tls.peer_identity(request.channel.transport)
        identity = self.identities.get(peer)
        parts = [p.decode("utf-8", "replace") for p in request.postpath if p]
        method = request.method.decode()
        gone = []
        request.notifyFinish().addErrback(gone.append)
        answer = defer.maybeDeferred(self._dispatch, method, parts, peer, identity, request)
        answer.addErrback(self._failed, peer)
        answer.addCallback(self._respond, request, gone)
        return server.NOT_DONE_YET

    def _failed(self, failure, peer: str):
        if failure.check(DecodeError, *REFUSALS):
            log.warn("refused {code} from {peer}: {error}", code=failure.value.code,
                     peer=peer, error=str(failure.value))
        if failure.check(GatewayError):
            return _error(failure.value)
        log.failure("request from {peer} failed; nothing acknowledged", failure, peer=peer)
        return 503, _json({"code": "E-UNAVAILABLE", "message": "not stored; send again",
                           "where": ""}), b"application/json"

    @staticmethod
    def _respond(answer, request, gone: list) -> None:
        """Write the answer; a large body in pieces as the client reads it (the next
        pipelined request waits until it is written), counted in the Budget meanwhile."""
        if gone:
            return                        # the client left; a resend gets the first receipt
        status, body, content_type = answer
        request.setResponseCode(status)
        request.setHeader(b"content-type", content_type)
        if len(body) <= STREAM_FROM:
            request.write(body)
            request.finish()
            return
        request.setHeader(b"content-length", b"%d" % len(body))
        request.hold(len(body))
        sent = basic.FileSender().beginFileTransfer(io.BytesIO(body), request)
        sent.addCallbacks(lambda _: request.finish(), lambda _: None)

    def _dispatch(self, method, parts, peer, identity, request):
        if method == "POST" and parts == ["v1", "messages"]:
            return self._post(peer, identity, request)
        if method in ("GET", "HEAD") and parts == ["healthz"]:
            problem = self.intake.store.problem()
            if problem:
                raise StoreError(problem, where="store")
            return 200, b"ok\n", b"text/plain"
        if method == "GET" and parts == ["v1", "spool"]:
            return self._spool(identity, request.args)
        if len(parts) == 3 and parts[:2] == ["v1", "messages"] and method == "GET":
            return self._pull(identity, parts[2], peer, request)
        if len(parts) == 4 and parts[:2] == ["v1", "messages"] and parts[3] == "ack" \
                and method == "POST":
            return self._ack(identity, parts[2], peer)
        if len(parts) == 3 and parts[:2] == ["v1", "status"] and method == "GET":
            return self._status(peer, parts[2])
        raise GatewayError("no such resource", where=f"{method} /{'/'.join(parts)}",
                           code="E-HTTP-NOT-FOUND")

    def _post(self, peer, identity, request) -> defer.Deferred:
        body, request.content = request.content.getvalue(), None
        envelope = Envelope(peer, "https", identity.agb if identity else frozenset())
        return defer.maybeDeferred(self.accept, body, envelope).addCallback(self._posted, peer)

    def _posted(self, receipts, peer: str):
        for receipt in receipts:
            log.info("accepted id={id} zd={zd} state={state} from {peer}", id=receipt.id,
                          zd=receipt.zd_number, state=receipt.state, peer=peer)
        data = [{"id": r.id, "zd_number": r.zd_number, "state": r.state} for r in receipts]
        return 202, _json(data[0] if len(data) == 1 else data), b"application/json"

    def _spool(self, identity, args: dict):
        """A page of the caller's spool, oldest first: ``?after=ID`` continues after the
        last id of the previous page, ``?limit=N`` (1..1000) sizes it; ``more`` says
        whether another page follows."""
        after = _number(args, b"after", 0, low=0)
        limit = min(_number(args, b"limit", SPOOL_PAGE, low=1), SPOOL_PAGE)
        rows = queries.ready_for(self.intake.store.db, _institution(identity), limit + 1, after)
        return 200, _json({"messages": [{**dict(row), "received_at": times.utc(row["received_at"])}
                                        for row in rows[:limit]],
                           "more": len(rows) > limit}), b"application/json"

    def _own(self, identity, message_id: str, peer: str, action: str) -> defer.Deferred:
        """The row of a message in the caller's spool; a 404 otherwise — for somebody else's
        message on record first (the first ten a minute per identity; then one record says
        how many were held back)."""
        row = self.intake.store.get(int(message_id)) if _is_id(message_id) else None
        if row is not None and row["destination"] == _institution(identity) \
                and row["state"] == "ready":
            return defer.succeed(row)
        missing = GatewayError("no such message in your spool", where=f"message {message_id}",
                               code="E-HTTP-NOT-FOUND")
        held = self.refusals.allow(peer) if row is not None else None
        if held is None:
            return defer.fail(missing)
        detail = f"{held} more refused before this one" if held else ""
        recorded = self.record([audit.about(row, f"https:{peer}", action, "refused", detail)])
        return recorded.addCallback(lambda _: defer.fail(missing))

    def _pull(self, identity, message_id: str, peer: str, request) -> defer.Deferred:
        if request.channel.site.answers.over():        # unread answers hold enough already
            raise GatewayError("the gateway holds more than limits.max_buffered_bytes of "
                               "answers not yet read; pull again later", code="E-BUSY")
        return self._own(identity, message_id, peer, "pull").addCallback(self._opened, peer)

    def _opened(self, row, peer: str):
        try:
            payload = self.intake.store.payload(row, "out")
        except PayloadCorrupt as exc:
            self.intake.store.transition(row["id"], "fallback", "https", f"E-PAYLOAD-CORRUPT: {exc}",
                                         action="quarantine")
            log.critical("ALERT payload corrupt id={id}: quarantined in fallback", id=row["id"])
            raise GatewayError("message unavailable", where=f"message {row['id']}",
                               code="E-HTTP-NOT-FOUND") from None
        log.info("pulled id={id} zd={zd} by https:{peer}", id=row["id"], zd=row["zd_number"],
                 peer=peer)
        recorded = self.record([audit.about(row, f"https:{peer}", "pull")])
        return recorded.addCallback(lambda _: (200, payload, CONTENT_TYPES[row["format"]]))

    def _ack(self, identity, message_id: str, peer: str) -> defer.Deferred:
        def confirm(row):
            self.intake.store.transition(row["id"], "delivered", f"https:{peer}",
                                         "pickup confirmed", action="pickup")
            log.info("delivered id={id} zd={zd}: pickup confirmed by https:{peer}", id=row["id"],
                     zd=row["zd_number"], peer=peer)
            return 200, _json({"id": row["id"], "state": "delivered"}), b"application/json"
        return self._own(identity, message_id, peer, "pickup").addCallback(confirm)

    def _status(self, peer: str, zd_number: str):
        rows = [row for row in self.intake.store.by_zd(zd_number) if row["identity"] == peer]
        if not rows and (purged := self.intake.store.purged(zd_number, peer)):
            raise GatewayError(purge_text(zd_number, purged), where=zd_number, code="E-PURGED")
        if not rows:
            raise GatewayError("no message of yours with that ZD number", where=zd_number,
                               code="E-HTTP-NOT-FOUND")
        return 200, _json([{"id": r["id"], "zd_number": r["zd_number"], "kind": r["kind"],
                            "state": r["state"], "destination": r["destination"]} for r in rows]), \
            b"application/json"


def site(api: Api, idle_seconds: float, request_seconds: float, budget: Budget) -> server.Site:
    """The HTTPS site for ``api``: bodies in memory, capped at its ``max_bytes`` and counted
    in ``budget``; idle connections and slow requests closed; refused bodies on record (with
    the next group commit; ten a minute per identity, then a count)."""
    def refused(peer: str, error: GatewayError) -> None:
        held = api.refusals.allow(("body", peer))
        if held is not None:
            detail = f"{error}; {held} more refused before this one" if held else str(error)
            api.record([audit.Event(f"https:{peer}", "receive", "refused", detail=detail)])
    return bounded_site(api, api.max_bytes, idle_seconds, request_seconds, budget, refused)


def _number(args: dict, name: bytes, default: int, low: int) -> int:
    """A whole-number query parameter; a 400 naming it when it is not one from ``low``."""
    values = args.get(name)
    if not values:
        return default
    text = values[0].decode("ascii", "replace")
    if not _is_id(text) or int(text) < low:
        raise GatewayError(f"{name.decode()} must be a whole number from {low}",
                           where=name.decode(), code="E-HTTP-QUERY")
    return int(text)


def _is_id(text: str) -> bool:
    """A message id as a URL may give it: 1 to 18 ASCII digits (no other scripts' digits)."""
    return text.isascii() and text.isdigit() and len(text) <= 18


def _institution(identity) -> str:
    """The spool an identity may pull; none for a HIS or an unknown certificate."""
    if identity is None or not identity.pull:
        raise GatewayError("this identity has no spool to pull", where="identity",
                           code="E-HTTP-FORBIDDEN")
    return identity.pull


STATUS = {"E-STORE": 503, "E-BUSY": 503, "E-NOT-MANDATED": 403, "E-HTTP-FORBIDDEN": 403, "E-DUPLICATE-CONFLICT": 409,
          "E-TOO-LARGE": 413, "E-HTTP-NOT-FOUND": 404, "E-PURGED": 410, "E-HTTP-QUERY": 400}


def _error(exc: GatewayError):
    status = STATUS.get(exc.code, 400 if isinstance(exc, (DecodeError, *REFUSALS)) else 500)
    body = {"code": exc.code, "message": exc.message, "where": exc.where}
    return status, _json(body), b"application/json"


