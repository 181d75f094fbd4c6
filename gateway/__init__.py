"""gatewayd: a messaging gateway for Dutch healthcare referrals."""

__version__ = "0.1.0"
