"""`aadhelper profile add NAME --from-env`: a profile from the variables azure-identity reads.

Which credential wins when several are set follows azure-identity (``identity/_credentials/environment.py`` and
DefaultAzureCredential's order): ``AZURE_CLIENT_SECRET`` (EnvironmentCredential's first choice), else
``AZURE_CLIENT_CERTIFICATE_PATH`` (+ ``AZURE_CLIENT_CERTIFICATE_PASSWORD``, ``AZURE_CLIENT_SEND_CERTIFICATE_CHAIN``;
its second), else ``AZURE_FEDERATED_TOKEN_FILE`` (WorkloadIdentityCredential, next in the chain). As there, a
variable counts as set when it exists, even empty; an empty secret is then an error here rather than a profile that
cannot work. ``AZURE_USERNAME``/``AZURE_PASSWORD`` (EnvironmentCredential's deprecated third choice, no MFA) are not
supported. ``AZURE_AUTHORITY_HOST`` is written into the profile, so the daemon does not depend on its own
environment having it. Secrets go to the OS keyring only, never into the config file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace

from ..config import FEDERATED_TOKEN_FILE_VARIABLE
from ..errors import UsageError
from ..tokens import Secret
from ..urls import InvalidAuthority, resolve_authority_url

TENANT, CLIENT_ID, AUTHORITY_HOST = "AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_AUTHORITY_HOST"
CLIENT_SECRET = "AZURE_CLIENT_SECRET"
CERTIFICATE_PATH, CERTIFICATE_PASSWORD = "AZURE_CLIENT_CERTIFICATE_PATH", "AZURE_CLIENT_CERTIFICATE_PASSWORD"
SEND_CHAIN = "AZURE_CLIENT_SEND_CERTIFICATE_CHAIN"
#: The credential variables in azure-identity's order of preference, with the credential kind each gives.
PRECEDENCE = ((CLIENT_SECRET, "client_secret"), (CERTIFICATE_PATH, "certificate"),
              (FEDERATED_TOKEN_FILE_VARIABLE, "federated"))


@dataclass(frozen=True)
class EnvProfile:
    """What the environment says about an app identity; ``repr`` never shows a secret (:class:`Secret`)."""

    tenant: str
    client_id: str
    credential: str
    #: The credential variable that decided ``credential``.
    variable: str
    authority: str | None = None
    secret: Secret | None = None
    certificate_path: str | None = None
    certificate_password: Secret | None = None
    send_chain: bool = False
    token_file: str | None = None
    #: The variables read, in the order a user would name them.
    used: tuple[str, ...] = ()
    #: Variables that held a secret, now in the keyring: the user may unset them.
    secret_variables: tuple[str, ...] = ()
    #: Credential variables set but not used (a lower precedence), for a note.
    ignored: tuple[str, ...] = ()


def from_environment(environ: Mapping[str, str] = os.environ) -> EnvProfile:
    """The profile the ``AZURE_*`` variables describe; :class:`UsageError` naming what is missing or wrong."""
    tenant, client_id = _required(environ, TENANT), _required(environ, CLIENT_ID)
    used = [TENANT, CLIENT_ID]
    authority = None
    if environ.get(AUTHORITY_HOST, "").strip():
        try:
            authority = resolve_authority_url(None, {AUTHORITY_HOST: environ[AUTHORITY_HOST]})
        except InvalidAuthority as exc:
            raise UsageError(f"--from-env: {exc.source} {exc}") from None
        used.append(AUTHORITY_HOST)
    chosen = [(name, kind) for name, kind in PRECEDENCE if name in environ]
    if not chosen:
        raise UsageError(f"--from-env: none of {', '.join(name for name, _ in PRECEDENCE)} is set",
                         hint="set the one for your app's credential, as for azure-identity's EnvironmentCredential")
    variable, kind = chosen[0]
    ignored = tuple(name for name, _ in chosen[1:])
    value = environ[variable]
    if not value:
        raise UsageError(f"--from-env: {variable} is set but empty")
    used.append(variable)
    base = EnvProfile(tenant=tenant, client_id=client_id, credential=kind, variable=variable, authority=authority,
                      ignored=ignored)
    if kind == "client_secret":
        return replace(base, secret=Secret(value), used=tuple(used), secret_variables=(variable,))
    if kind == "federated":
        return replace(base, token_file=os.path.abspath(value), used=tuple(used))
    secrets = [variable]
    password = None
    if environ.get(CERTIFICATE_PASSWORD):
        password = Secret(environ[CERTIFICATE_PASSWORD])
        used.append(CERTIFICATE_PASSWORD)
        secrets.append(CERTIFICATE_PASSWORD)
    send_chain = bool(environ.get(SEND_CHAIN))  # azure-identity: any non-empty value is true
    if send_chain:
        used.append(SEND_CHAIN)
    return replace(base, certificate_path=os.path.abspath(value), certificate_password=password,
                   send_chain=send_chain, used=tuple(used), secret_variables=tuple(secrets))


def _required(environ: Mapping[str, str], name: str) -> str:
    value = environ.get(name, "").strip()
    if not value:
        raise UsageError(f"--from-env: {name} is not set", hint="export it, or give the settings as options")
    return value
