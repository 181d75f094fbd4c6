"""What an HL7 message over MLLP gets back: the ACK decision, behind the Handler seam.

AA only after ``accept`` returned (the message is durably stored; a resend gets
AA again without a second copy); AE with an ERR segment for content that cannot
be read or a reused control id (the raw input is kept as rejected); AR when the
identity is not mandated for the sender's AGB code. Anything else (a full disk,
a failed fsync) raises, so the transport closes the connection without an ACK.
MSA-2 is always the message's MSH-10.
"""

from typing import Callable

from twisted.logger import Logger

from gateway.codecs import hl7v2
from gateway.errors import DecodeError
from gateway.intake import DuplicateConflict, Envelope, NotMandated, Receipt


class AckingHandler:
    log = Logger(namespace="gatewayd.mllp")

    def __init__(self, accept: Callable[[bytes, Envelope], list[Receipt]],
                 envelope_for: Callable[[str], Envelope]):
        self.accept, self.envelope_for = accept, envelope_for

    def handle(self, message: bytes, peer: str) -> bytes:
        try:
            receipts = self.accept(message, self.envelope_for(peer))
        except NotMandated as exc:
            self.log.warn("refused AR from {peer}: {error}", peer=peer, error=str(exc))
            return hl7v2.ack(message, "AR", exc)
        except (DecodeError, DuplicateConflict) as exc:
            self.log.warn("refused AE from {peer}: {error}", peer=peer, error=str(exc))
            return hl7v2.ack(message, "AE", exc)
        for receipt in receipts:
            self.log.info("accepted id={id} zd={zd} state={state} destination={destination} "
                          "duplicate={duplicate} from {peer}", id=receipt.id, zd=receipt.zd_number,
                          state=receipt.state, destination=receipt.destination,
                          duplicate=receipt.duplicate, peer=peer)
        return hl7v2.ack(message, "AA")
