"""A simulated Entra ID authority and a protected resource on loopback ports, for tests, the demo and CI.

    from aadhelper.testing import Fault, SimulatedAuthority

    with SimulatedAuthority(ssl_context=ctx) as authority:
        authority.add_tenant("contoso.onmicrosoft.com")
        authority.add_client("app-id", tenant="contoso.onmicrosoft.com", secret="s3cret")
        authority.inject(Fault.throttle(60))
        ...  # POST {authority.url}/contoso.onmicrosoft.com/oauth2/v2.0/token

Stdlib only at runtime; servers run in background threads. ``python -m aadhelper.testing --help`` runs one
from the command line. :class:`FakeDaemon` answers ``aadhelper header`` with tokens a test chooses, no authority
needed; :func:`device_sign_in` signs a user in directly; the pytest plugin (:mod:`aadhelper.testing.pytest_plugin`)
has fixtures for all of it. Independent of the CLI (``aadhelper.cli`` is never imported; a test checks).
"""

from __future__ import annotations

from .authority import RecordedRequest, SimulatedAuthority
from .directory import GRAPH
from .entra import EntraError
from .fake_daemon import FakeDaemon, error_answer, token_answer
from .faults import Fault
from .grants import DEVICE_CODE_GRANT
from .jwt import InvalidToken
from .recording_api import RecordingApi
from .resource import ProtectedResource, ResourceRequest
from .sessions import pkce_challenge
from .signin import device_sign_in

__all__ = [
    "DEVICE_CODE_GRANT",
    "GRAPH",
    "EntraError",
    "FakeDaemon",
    "Fault",
    "InvalidToken",
    "ProtectedResource",
    "RecordedRequest",
    "RecordingApi",
    "ResourceRequest",
    "SimulatedAuthority",
    "device_sign_in",
    "error_answer",
    "pkce_challenge",
    "token_answer",
]
