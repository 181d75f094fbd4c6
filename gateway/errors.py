"""The one error hierarchy of gatewayd.

Every error a user can see is a GatewayError with a stable code (``E-…``), a
one-line message saying what is wrong, and where it is (segment, line,
element, field). Messages never carry patient data: they name the field, not
its value.
"""


class GatewayError(Exception):
    """Base of every error gatewayd reports; ``code`` is stable across releases."""

    code = "E-GATEWAY"

    def __init__(self, message: str, where: str = "", code: str | None = None):
        super().__init__(message)
        self.message = message
        self.where = where
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        text = f"{self.code}: {self.message}"
        return f"{text}, {self.where}" if self.where else text


class DocumentError(GatewayError):
    """A canonical Document would break one of its rules (bad AGB, BSN, ZD, date)."""

    code = "E-DOC"


class DecodeError(GatewayError):
    """Input bytes are not a valid message of the format they claim to be."""

    code = "E-DECODE"


class EncodeError(GatewayError):
    """A Document cannot be written in the target format without losing something."""

    code = "E-ENCODE"


class ConfigError(GatewayError):
    """A setting, route table or identity file is invalid."""

    code = "E-CONFIG"


class DeliveryError(GatewayError):
    """A push delivery failed; the message is retried with backoff."""

    code = "E-DELIVERY"


class StoreError(GatewayError):
    """The store could not commit (disk full, I/O error): nothing was stored, nothing is
    acknowledged; the sender tries again."""

    code = "E-STORE"
