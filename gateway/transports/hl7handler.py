"""What an HL7 message over MLLP gets back: the ACK decision, behind the Handler seam.

AA only after ``accept`` returned (the message is durably stored; a resend gets
AA again without a second copy); AE with an ERR segment for content that cannot
be read or a reused control id (the raw input is kept as rejected); AR when the
identity is not mandated for the sender's AGB code. Anything else (a full disk,
a failed fsync) raises, so the transport closes the connection without an ACK.
MSA-2 is always the message's MSH-10.
"""

from typing import Callable

from twisted.internet import defer
from twisted.logger import Logger

from gateway.codecs import hl7v2
from gateway.errors import DecodeError
from gateway.intake import Receipt
from gateway.reading import REFUSALS, Envelope, NotMandated

log = Logger(namespace="gatewayd.mllp")   # module level: as a class attribute Twisted renames it


class AckingHandler:

    def __init__(self, accept: Callable[[bytes, Envelope], list[Receipt]],
                 envelope_for: Callable[[str], Envelope]):
        self.accept, self.envelope_for = accept, envelope_for

    def handle(self, message: bytes, peer: str) -> defer.Deferred:
        """A Deferred firing with the ACK bytes (``accept`` may answer at once or later)."""
        result = defer.maybeDeferred(self.accept, message, self.envelope_for(peer))
        result.addCallbacks(self._accepted, self._refused, callbackArgs=(message, peer),
                            errbackArgs=(message, peer))
        return result

    def _accepted(self, receipts, message: bytes, peer: str) -> bytes:
        for receipt in receipts:
            log.info("accepted id={id} zd={zd} state={state} destination={destination} "
                          "duplicate={duplicate} from {peer}", id=receipt.id, zd=receipt.zd_number,
                          state=receipt.state, destination=receipt.destination,
                          duplicate=receipt.duplicate, peer=peer)
        return hl7v2.ack(message, "AA")

    def _refused(self, failure, message: bytes, peer: str) -> bytes:
        failure.trap(DecodeError, *REFUSALS)
        code = "AR" if failure.check(NotMandated) else "AE"
        log.warn("refused {code} from {peer}: {error}", code=code, peer=peer,
                      error=str(failure.value))
        return hl7v2.ack(message, code, failure.value)
