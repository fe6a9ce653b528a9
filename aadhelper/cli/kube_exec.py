"""The kubectl exec credential plugin's data, pure: what kubectl hands the plugin, what the plugin answers, and the
kubeconfig ``users:`` entry that runs it. No I/O (:mod:`aadhelper.cli.kubectl` does that).

client-go's contract (k8s.io/client-go plugin/pkg/client/auth/exec, kubectl v1.32):

- kubectl runs the ``exec`` command of the kubeconfig user with ``KUBERNETES_EXEC_INFO`` set to an ExecCredential
  (``{"kind":"ExecCredential","apiVersion":...,"spec":{"interactive":false}}``) in the kubeconfig's apiVersion
  (``client.authentication.k8s.io/v1`` or ``v1beta1``; v1alpha1 is gone) and refuses an answer in another one.
- The answer on stdout: ``{"apiVersion", "kind": "ExecCredential", "status": {"token", "expirationTimestamp"}}``,
  ``expirationTimestamp`` an RFC 3339 time. kubectl keeps the token inside one process until that time (for
  ever when it is absent) and runs the plugin again once after a 401.
- The plugin's stderr reaches the user; a non-zero exit becomes "exec: executable ... failed with exit code N".
- With apiVersion v1 the kubeconfig must say ``interactiveMode``; ``Never`` keeps kubectl from handing the plugin
  its stdin (this plugin never reads it).

Stdlib-only (``time``): the plugin is a thin-client path (tests/test_import_rules.py).
"""

from __future__ import annotations

import time

from ..errors import UsageError
from ..protocol import loads

TYPE_CHECKING = False  # not `from typing import ...`: the client path must not load typing (tests/test_import_rules.py)
if TYPE_CHECKING:
    from typing import Any

API_V1 = "client.authentication.k8s.io/v1"
API_V1BETA1 = "client.authentication.k8s.io/v1beta1"
#: The versions kubectl 1.32 speaks and this plugin answers in.
API_VERSIONS = (API_V1, API_V1BETA1)
EXEC_INFO_ENV = "KUBERNETES_EXEC_INFO"
#: The AKS AAD server application (the audience of every AKS cluster's Entra integration), as kubelogin's default.
AKS_SERVER_ID = "6dae42f8-4368-4678-94ff-3960e28e3630"
#: The verb kubectl runs (``aadhelper kubectl-credential PROFILE --scope S``).
VERB = "kubectl-credential"
#: Far more than any ExecCredential kubectl sends (the cluster's CA with provideClusterInfo is a few KB).
MAX_EXEC_INFO = 1024 * 1024

_FIX = "give the kubeconfig user an exec block with apiVersion client.authentication.k8s.io/v1 " \
       "(`aadhelper kubeconfig PROFILE` writes one)"


def answer_version(exec_info: str | None) -> str:
    """The apiVersion to answer in, from ``KUBERNETES_EXEC_INFO``.

    Unset or empty (the plugin run by hand; client-go always sets it for v1beta1 and v1): v1beta1, as kubelogin
    does. Anything that is not an ExecCredential of a version kubectl 1.32 speaks is a :class:`UsageError`
    naming what arrived, before the daemon is asked for anything.
    """
    if not exec_info:
        return API_V1BETA1
    if len(exec_info) > MAX_EXEC_INFO:
        raise UsageError(f"{EXEC_INFO_ENV} is {len(exec_info)} characters long: not an ExecCredential kubectl sends",
                         hint=_FIX)
    try:
        info = loads(exec_info.encode("utf-8", "surrogateescape"))
    except (ValueError, RecursionError):
        raise UsageError(f"{EXEC_INFO_ENV} is not JSON: kubectl passes an ExecCredential there", hint=_FIX) from None
    if not isinstance(info, dict):
        raise UsageError(f"{EXEC_INFO_ENV} is not a JSON object: kubectl passes an ExecCredential there", hint=_FIX)
    kind = info.get("kind")
    if kind not in (None, "", "ExecCredential"):
        raise UsageError(f"{EXEC_INFO_ENV} holds a {_shown(kind)}, not an ExecCredential", hint=_FIX)
    version = info.get("apiVersion")
    if version in (None, ""):
        return API_V1BETA1  # kubelogin's reading of an ExecCredential without a version
    if version not in API_VERSIONS:
        raise UsageError(f"kubectl asked for an ExecCredential of apiVersion {_shown(version)}; aadhelper answers "
                         f"{API_V1} and {API_V1BETA1}", hint=_FIX)
    answer: str = version
    return answer


def _shown(value: object) -> str:
    """A value from the environment, quoted and cut short for an error line."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def credential_expiry(expires_on: int, min_valid: float, now: float) -> int:
    """When kubectl should run the plugin again: the moment the daemon stops serving this token (``min_valid``
    before it expires, where the daemon has a fresh one ready), never later than the token's expiry and never
    before ``now`` (a timestamp already past would make kubectl run the plugin for every request)."""
    return max(min(expires_on, int(now) + 1), int(expires_on - max(min_valid, 0)))


def rfc3339(epoch: int) -> str:
    """``2026-11-30T12:34:56Z``: the form Go's metav1.Time reads and writes."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def exec_credential(api_version: str, token: str, expiry: int) -> dict[str, Any]:
    """The ExecCredential the plugin prints."""
    return {"apiVersion": api_version, "kind": "ExecCredential",
            "status": {"token": token, "expirationTimestamp": rfc3339(expiry)}}


# -- the kubeconfig side ---------------------------------------------------------------------------------------


def server_scope(server_id: str) -> str:
    """The scope of a cluster's Entra server application (an app id or an ``api://`` URI); a scope stays as is."""
    return server_id if server_id.endswith("/.default") else f"{server_id}/.default"


def user_name(profile: str, server_id: str) -> str:
    """The kubeconfig user entry's name: one per profile, and per server application other than AKS's. Only
    letters, digits, '-' and '_': kubectl's ``config unset users.NAME`` reads dots in NAME as path separators."""
    name = f"aadhelper-{profile}" if server_id == AKS_SERVER_ID else f"aadhelper-{profile}-{server_id}"
    return "".join(char if char.isascii() and (char.isalnum() or char in "-_") else "-" for char in name)


def exec_args(profile: str, scope: str) -> list[str]:
    """The plugin's arguments after this installation's command."""
    return [VERB, profile, "--scope", scope]


def exec_stanza(command: list[str], profile: str, scope: str) -> dict[str, Any]:
    """The ``exec`` block of the user entry: ``command`` is this installation's aadhelper (absolute)."""
    return {"apiVersion": API_V1, "command": command[0], "args": [*command[1:], *exec_args(profile, scope)],
            "interactiveMode": "Never", "provideClusterInfo": False}


def users_yaml(name: str, stanza: dict[str, Any]) -> str:
    """A kubeconfig ``users:`` list with one entry, as YAML to paste into a kubeconfig. Every value is written as
    JSON (JSON is a subset of YAML 1.2, and kubectl's reader takes it), so no YAML library is needed and no path or
    name can change the document's structure."""
    import json  # not the plugin's path: only `aadhelper kubeconfig` prints this

    lines = ["users:", f"- name: {json.dumps(name)}", "  user:", "    exec:"]
    lines += [f"      {key}: {json.dumps(value)}" for key, value in stanza.items()]
    return "\n".join(lines) + "\n"
