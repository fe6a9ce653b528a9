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

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # `X as X`: re-exported names, for type checkers and readers
    from .authority import RecordedRequest as RecordedRequest
    from .authority import SimulatedAuthority as SimulatedAuthority
    from .directory import GRAPH as GRAPH
    from .entra import EntraError as EntraError
    from .fake_daemon import FakeDaemon as FakeDaemon
    from .fake_daemon import error_answer as error_answer
    from .fake_daemon import token_answer as token_answer
    from .faults import Fault as Fault
    from .grants import DEVICE_CODE_GRANT as DEVICE_CODE_GRANT
    from .jwt import InvalidToken as InvalidToken
    from .managed_identity import SimulatedManagedIdentity as SimulatedManagedIdentity
    from .recording_api import RecordingApi as RecordingApi
    from .resource import ProtectedResource as ProtectedResource
    from .resource import ResourceRequest as ResourceRequest
    from .sessions import pkce_challenge as pkce_challenge
    from .signin import device_sign_in as device_sign_in

#: Where each exported name lives. Loaded on first use (PEP 562): the pytest plugin is loaded by every pytest run of
#: an environment aadhelper is installed in, and must not cost that run the authority's ~100 ms of imports.
_EXPORTS = {
    "DEVICE_CODE_GRANT": "grants",
    "GRAPH": "directory",
    "EntraError": "entra",
    "FakeDaemon": "fake_daemon",
    "Fault": "faults",
    "InvalidToken": "jwt",
    "ProtectedResource": "resource",
    "RecordedRequest": "authority",
    "RecordingApi": "recording_api",
    "ResourceRequest": "resource",
    "SimulatedAuthority": "authority",
    "SimulatedManagedIdentity": "managed_identity",
    "device_sign_in": "signin",
    "error_answer": "fake_daemon",
    "pkce_challenge": "sessions",
    "token_answer": "fake_daemon",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
