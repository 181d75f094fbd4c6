"""Wire-format codecs: each turns bytes into canonical Documents and back.

A codec is a module with ``decode(data: bytes) -> list[Document]``,
``decode_messages(data) -> list[(control id, Document)]`` (the id is what dedup
keys on: UNB/UNH references, MSH-10, Bundle.id) and ``encode(doc) -> bytes``;
the registry below names them (``zd-hl7`` is an output format: it reads what ``hl7``
reads). ``sniff`` tells which codec a message needs from its first bytes.
"""

from types import ModuleType

from gateway.codecs import edifact, hl7v2, zdhl7, zdxml
from gateway.codecs.sniff import sniff
from gateway.errors import GatewayError

CODECS: dict[str, ModuleType] = {"edifact": edifact, "hl7": hl7v2, "zd-hl7": zdhl7, "xml": zdxml}

__all__ = ["CODECS", "get", "sniff"]


def get(name: str) -> ModuleType:
    """Return the codec module called ``name`` (edifact, hl7, zd-hl7, xml); raise GatewayError
    if unknown."""
    try:
        return CODECS[name]
    except KeyError:
        raise GatewayError(f"unknown format {name!r} (known: {', '.join(CODECS)})",
                           code="E-FORMAT") from None
