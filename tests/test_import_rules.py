"""The thin client's import allow-list, as a test (issue 11 §3): what `aadhelper header`, `aadhelper token` and the
git helper import beyond a bare interpreter. One `from dataclasses import dataclass` in protocol.py would triple
the client's cost (scripts/bench, row 1) and nothing else would notice."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from aadhelper.testing import FakeDaemon

#: Everything the client paths may import (beyond what the interpreter had already loaded at start-up).
ALLOWED = frozenset({
    "aadhelper", "aadhelper.cli", "aadhelper.cli.token", "aadhelper.cli.values", "aadhelper.cli.git",
    "aadhelper.client", "aadhelper.errors", "aadhelper.paths", "aadhelper.protocol", "aadhelper.git_helper",
    "_json", "_socket",
    # the kubectl plugin and the az shim (issue 13): their verbs, pure formatting, and binascii for the token's tid
    "aadhelper.cli.kubectl", "aadhelper.cli.kube_exec", "aadhelper.cli.az", "aadhelper.cli.az_format", "binascii",
})
#: Never, whatever the interpreter loaded at start-up (the editable install's finder loads re and enum).
FORBIDDEN = frozenset({"json", "typing", "dataclasses", "argparse", "tomllib", "platformdirs", "trio", "httpx",
                       "keyring", "aadhelper.autostart", "aadhelper.config", "aadhelper.cache"})

#: Runs one entry point and writes the modules it added (after what the interpreter loaded at start-up) to stderr.
PROBE = textwrap.dedent("""
    import sys
    before = set(sys.modules)
    from aadhelper.cli import git_credential_main, main
    try:
        code = git_credential_main(sys.argv[2:]) if sys.argv[1] == "git" else main(sys.argv[1:])
    finally:
        added = sorted(set(sys.modules) - before)
        sys.stderr.write("MODULES " + " ".join(added) + "\\n")
    sys.exit(code)
""")

TOKEN_REPLY = {"v": 1, "ok": True, "access_token": "eyJ.fake.token", "token_type": "Bearer",
               "expires_on": 4_000_000_000, "profile": "graph", "scopes": ["https://x/.default"],
               "username": "me@contoso.com", "tenant": "contoso", "min_valid": 300}


@pytest.fixture
def fake_daemon(tmp_path: Path) -> Iterator[str]:
    """A socket in a private directory answering every request with a token reply."""
    path = str(tmp_path / "run" / "daemon.sock")
    with FakeDaemon(path, lambda request: TOKEN_REPLY):
        yield path


@pytest.mark.parametrize("argv", [["header", "graph"], ["token", "graph", "--min-valid", "60", "--scope", "x"],
                                  ["git", "get"], ["kubectl-credential", "graph", "--scope", "x"],
                                  ["az", "--profile", "graph", "account", "get-access-token", "--output", "json",
                                   "--resource", "https://x", "--tenant", "contoso"]],
                         ids=["header", "token", "git", "kubectl-credential", "az"])
@pytest.mark.parametrize("daemon_runs", [True, False], ids=["answered", "no-daemon"])
def test_client_paths_import_only_the_allow_list(fake_daemon: str, tmp_path: Path, argv: list[str],
                                                 daemon_runs: bool) -> None:
    """If header, token, the git helper, the kubectl plugin or the az shim runs (answered, or with no daemon), then it
    imports nothing beyond the allow-list, and none of json, typing, dataclasses, argparse, tomllib, platformdirs,
    trio, httpx or keyring."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("AADHELPER_")}
    env.update(AADHELPER_NO_AUTOSTART="1", KUBERNETES_EXEC_INFO='{"apiVersion":"client.authentication.k8s.io/v1"}',
               AADHELPER_SOCKET=fake_daemon if daemon_runs else str(tmp_path / "none" / "daemon.sock"))
    result = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, env=env,
                            input="protocol=https\nhost=dev.azure.com\n\n", timeout=60)
    added = set(result.stderr.split("MODULES ", 1)[1].split())
    allowed = ALLOWED if daemon_runs else ALLOWED | {"aadhelper.autostart"}  # it decides whether to start one
    assert added <= allowed, f"imports beyond the allow-list: {sorted(added - allowed)}"
    assert not added & (FORBIDDEN - allowed)
    if daemon_runs:
        assert result.returncode == 0, result.stderr
        assert "eyJ.fake.token" in result.stdout


def test_completing_profile_names_imports_only_the_allow_list(tmp_path: Path) -> None:
    """If the shell completion asks `aadhelper __complete profiles` (on every TAB after a verb taking a profile),
    then the names are printed and nothing is imported beyond the client's allow-list and the completion module:
    no argparse, tomllib, json or daemon module."""
    config = tmp_path / "config.toml"
    config.write_text('[profiles.graph]\ntenant = "t"\n')
    env = {key: value for key, value in os.environ.items() if not key.startswith("AADHELPER_")}
    env.update(AADHELPER_CONFIG=str(config))
    result = subprocess.run([sys.executable, "-c", PROBE, "__complete", "profiles"], capture_output=True, text=True,
                            env=env, timeout=60)
    added = set(result.stderr.split("MODULES ", 1)[1].split())
    allowed = ALLOWED | {"aadhelper.cli.completion"}
    assert added <= allowed, f"imports beyond the allow-list: {sorted(added - allowed)}"
    assert not added & FORBIDDEN
    assert (result.returncode, result.stdout) == (0, "graph\n")
