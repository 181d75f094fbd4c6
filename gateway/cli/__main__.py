"""``python -m gateway.cli`` runs gatewayctl."""

import sys

from gateway.cli import main

sys.exit(main())
