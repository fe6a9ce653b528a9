"""The ``aadhelper exec`` process stays light: it serves the child's endpoint with the stdlib and the thin client,
and never loads trio, httpx or keyring (the daemon's libraries), whatever the child asks of it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from aadhelper.testing import FakeDaemon
from tests.harness import GRAPH_PROFILE, cli, cli_env

PROBE = textwrap.dedent("""
    import sys
    from aadhelper.cli import main
    code = main(sys.argv[1:])
    heavy = sorted(name for name in ("trio", "httpx", "keyring", "secretstorage") if name in sys.modules)
    sys.stderr.write("HEAVY " + " ".join(heavy) + "\\n")
    sys.exit(code)
""")

CHILD = textwrap.dedent("""
    import json, os, urllib.request
    url = os.environ["IDENTITY_ENDPOINT"] + "?api-version=2019-08-01&resource=https://management.azure.com"
    request = urllib.request.Request(url, headers={"X-IDENTITY-HEADER": os.environ["IDENTITY_HEADER"]})
    print(json.loads(urllib.request.urlopen(request).read())["access_token"])
""")


def test_exec_process_imports_no_daemon_library(isolated_env: dict[str, str], tmp_path: Path) -> None:
    """If a child under exec gets a token through the endpoint, then the exec process has loaded none of trio,
    httpx, keyring or secretstorage."""
    env = cli_env(isolated_env)
    cli(env, *GRAPH_PROFILE, check=True)
    with FakeDaemon(env["AADHELPER_SOCKET"], access_token="light-token"):
        result = subprocess.run([sys.executable, "-c", PROBE, "exec", "graph", "--", sys.executable, "-c", CHILD],
                                env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "light-token"
    assert "HEAVY \n" in result.stderr, result.stderr
