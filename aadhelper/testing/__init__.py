"""A simulated Entra ID authority and a protected resource on loopback ports, for tests, the demo and CI.

    from aadhelper.testing import Fault, SimulatedAuthority

    with SimulatedAuthority(ssl_context=ctx) as authority:
        authority.add_tenant("contoso.onmicrosoft.com")
        authority.add_client("app-id", tenant="contoso.onmicrosoft.com", secret="s3cret")
        authority.inject(Fault.throttle(60))
        ...  # POST {authority.url}/contoso.onmicrosoft.com/oauth2/v2.0/token

Stdlib only at runtime; servers run in background threads. ``python -m aadhelper.testing --help`` runs one
from the command line.
"""

from __future__ import annotations

from .authority import RecordedRequest, SimulatedAuthority
from .directory import GRAPH
from .entra import EntraError
from .faults import Fault
from .grants import DEVICE_CODE_GRANT
from .jwt import InvalidToken
from .resource import ProtectedResource, ResourceRequest
from .sessions import pkce_challenge

__all__ = [
    "DEVICE_CODE_GRANT",
    "GRAPH",
    "EntraError",
    "Fault",
    "InvalidToken",
    "ProtectedResource",
    "RecordedRequest",
    "ResourceRequest",
    "SimulatedAuthority",
    "pkce_challenge",
]
