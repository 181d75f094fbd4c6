"""The ``zd-hl7`` format: ZorgDomein's own HL7 v2.4 ORU^R01, as an output format for
institutions whose hospital system takes ZorgDomein's HL7 (see ``hl7zd``). Reading
takes any HL7 message, as the ``hl7`` codec does."""

from gateway.codecs.hl7v2 import decode, decode_messages
from gateway.codecs.hl7zd import encode

__all__ = ["decode", "decode_messages", "encode"]
