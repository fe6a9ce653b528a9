"""Merging aadhelper's exec user entry into a kubeconfig file, with kubectl doing the YAML.

kubectl's ``config set-credentials`` keeps everything else in the file, but it *merges* into an existing entry:
a ``token`` or client certificate already there would stay next to the new exec block. So the entry is removed
first (``config unset users.NAME``) and written again. Both steps run on a copy in the file's directory, which
then replaces the file in one rename: an interrupted or failed merge leaves the original untouched. kubectl
rewrites the whole file when it saves (comments and key order are not kept), as it does for any ``kubectl
config`` command.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from typing import Any

from ..errors import AadhelperError, ConfigError

#: Seconds one kubectl config command may take (it only reads and writes the file).
KUBECTL_TIMEOUT = 30


def merge_user(path: str, name: str, stanza: dict[str, Any], context: str | None) -> None:
    """Make user ``name`` of the kubeconfig at ``path`` (created if missing) exactly the exec ``stanza``, and point
    ``context`` (which must exist) at it."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise AadhelperError("merging into a kubeconfig needs kubectl on PATH",
                             hint="install kubectl, or run without --kubeconfig and paste the printed entry")
    target = os.path.realpath(path)  # a symlinked kubeconfig: replace the file it points to, keep the link
    directory = os.path.dirname(target)
    try:
        mode = os.stat(target).st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o600  # what kubectl creates: a kubeconfig holds credentials
    except OSError as exc:
        raise ConfigError(f"cannot read the kubeconfig {path}: {exc.strerror}") from None
    try:
        fd, scratch = tempfile.mkstemp(prefix=".aadhelper-kubeconfig-", dir=directory)
    except OSError as exc:
        raise ConfigError(f"cannot write next to the kubeconfig {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as copy:
            if os.path.exists(target):
                with open(target, "rb") as original:
                    shutil.copyfileobj(original, copy)

        def config(*args: str) -> str:
            return _kubectl(kubectl, path, scratch, *args)

        if context is not None:
            contexts = [entry.get("name") for entry in json.loads(config("view", "-o", "json")).get("contexts") or []]
            if context not in contexts:
                known = ", ".join(sorted(str(c) for c in contexts)) or "none"
                raise ConfigError(f"the kubeconfig {path} has no context {context!r} (it has: {known})",
                                  hint="name one of them with --context, or leave --context out")
        config("unset", f"users.{name}")
        config("set-credentials", name, f"--exec-command={stanza['command']}",
               f"--exec-api-version={stanza['apiVersion']}", f"--exec-interactive-mode={stanza['interactiveMode']}",
               *(f"--exec-arg={arg}" for arg in stanza["args"]))
        if context is not None:
            config("set-context", context, f"--user={name}")
        os.chmod(scratch, mode)
        os.replace(scratch, target)
    finally:
        if os.path.exists(scratch):
            os.unlink(scratch)


def _kubectl(kubectl: str, shown: str, scratch: str, *args: str) -> str:
    """``kubectl config ARGS --kubeconfig SCRATCH``'s stdout; a failure is one line with kubectl's own reason."""
    try:
        result = subprocess.run([kubectl, "config", *args, f"--kubeconfig={scratch}"], capture_output=True,
                                text=True, stdin=subprocess.DEVNULL, timeout=KUBECTL_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AadhelperError(f"kubectl config {args[0]} did not run: {exc}") from None
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[-1]
        raise ConfigError(f"kubectl could not update the kubeconfig {shown}: {reason.removeprefix('error: ')}")
    return result.stdout
