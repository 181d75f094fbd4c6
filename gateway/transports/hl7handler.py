"""What an HL7 message over MLLP gets back: the ACK decision, behind the Handler seam.

AA only after ``accept`` returned (the message is durably stored; a resend gets
AA again without a second copy); AE with an ERR segment for content that cannot
be read or a reused control id (the raw input is kept as rejected); AR when the
identity is not mandated for the sender's AGB code. Anything else (a full disk,
a failed fsync) raises, so the transport closes the connection without an ACK.
MSA-2 is always the message's MSH-10.
"""

from typing import Callable

from gateway.codecs import hl7v2
from gateway.errors import DecodeError
from gateway.intake import DuplicateConflict, Envelope, NotMandated, Receipt


class AckingHandler:
    def __init__(self, accept: Callable[[bytes, Envelope], list[Receipt]],
                 envelope_for: Callable[[str], Envelope]):
        self.accept, self.envelope_for = accept, envelope_for

    def handle(self, message: bytes, peer: str) -> bytes:
        try:
            self.accept(message, self.envelope_for(peer))
        except NotMandated as exc:
            return hl7v2.ack(message, "AR", exc)
        except (DecodeError, DuplicateConflict) as exc:
            return hl7v2.ack(message, "AE", exc)
        return hl7v2.ack(message, "AA")
