"""``aadhelper exec`` end to end: the real daemon (subprocess), the simulated authority over HTTPS, the secret in the
real Secret Service, and the real peers in the child: azure-identity's ManagedIdentityCredential and
DefaultAzureCredential, msal's ManagedIdentityClient, raw HTTP; exit status, signals and a terminal pass through.

DefaultAzureCredential is made deterministic by what exec itself does: it removes AZURE_CLIENT_SECRET,
AZURE_CLIENT_CERTIFICATE_PATH, AZURE_USERNAME/PASSWORD (so EnvironmentCredential is unavailable) and
AZURE_FEDERATED_TOKEN_FILE (so WorkloadIdentityCredential is), and managed identity comes next in its chain, before
the shared cache, VS Code and the az CLI. The tests only drop AZURE_TOKEN_CREDENTIALS (a user's choice of chain) from
their own environment, and set the removed variables (some empty) plus an unrelated AZURE_CLIENT_ID on purpose.
"""

from __future__ import annotations

import json
import os
import pty
import secrets
import select
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aadhelper import mi_endpoint
from aadhelper.secret_store import KeyringSecretStore
from aadhelper.testing import GRAPH, SimulatedAuthority
from tests.harness import AADHELPER, APP, TENANT, DaemonProcess, add_profile, cli, sensitive, token_of

pytestmark = pytest.mark.requires("secret-service")

ARM = "https://management.azure.com"
VAULT = "https://vault.azure.net"
PYTHON = sys.executable
#: What the child is given on purpose and exec must remove (empty values too: msal tests presence, not value).
PLANTED = {"IDENTITY_SERVER_THUMBPRINT": "", "IMDS_ENDPOINT": "http://127.0.0.1:9", "MSI_ENDPOINT": "http://127.0.0.1:9",
           "MSI_SECRET": "msi-secret", "AZURE_CLIENT_SECRET": "env-secret", "AZURE_CLIENT_CERTIFICATE_PATH": "/none",
           "AZURE_FEDERATED_TOKEN_FILE": "/none", "AZURE_USERNAME": "u@contoso.com", "AZURE_PASSWORD": "pw",
           "IDENTITY_ENDPOINT": "http://169.254.169.254/stale", "IDENTITY_HEADER": "stale"}


@pytest.fixture
def app_secret() -> str:
    value = "exec-secret-" + secrets.token_urlsafe(16)
    sensitive(value)
    return value


@pytest.fixture
def authority(server_ssl_context: ssl.SSLContext, app_secret: str) -> Iterator[SimulatedAuthority]:
    """The authority over HTTPS with APP, which may get tokens for Graph and ARM (not Key Vault)."""
    with SimulatedAuthority(ssl_context=server_ssl_context) as served:
        served.add_tenant(TENANT)
        served.add_client(APP, tenant=TENANT, secret=app_secret, resources=(GRAPH, ARM))
        yield served


@pytest.fixture
def env(isolated_env: dict[str, str], ca_pem_file: Path, authority: SimulatedAuthority, app_secret: str,
        secret_service: KeyringSecretStore) -> dict[str, str]:
    """Profile `graph` of APP with its secret in the Secret Service; the variables exec must remove are set, and an
    AZURE_CLIENT_ID of another identity (DefaultAzureCredential then sends client_id)."""
    env = {key: value for key, value in isolated_env.items() if key != "AZURE_TOKEN_CREDENTIALS"}
    env["AADHELPER_NO_AUTOSTART"] = "1"
    add_profile(env, "graph", authority.url, ca_pem_file)
    cli(env, "secret", "set", "graph", input=app_secret + "\n", check=True)
    env.update(PLANTED, AZURE_CLIENT_ID="00000000-0000-0000-0000-0000000000ff", AZURE_TENANT_ID=TENANT)
    return env


def run_exec(env: dict[str, str], script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``aadhelper exec graph ARGS -- python -c SCRIPT``."""
    return cli(env, "exec", "graph", *args, "--", PYTHON, "-c", textwrap.dedent(script), timeout=timeout)


def child_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


SDK_SCRIPT = """
    import json, msal, requests
    from azure.identity import DefaultAzureCredential, ManagedIdentityCredential
    out = {}
    for resource in ("https://management.azure.com", "https://graph.microsoft.com"):
        scope = resource + "/.default"
        mic = ManagedIdentityCredential().get_token(scope)
        dac = DefaultAzureCredential().get_token(scope)
        client = msal.ManagedIdentityClient(msal.SystemAssignedManagedIdentity(), http_client=requests.Session())
        result = client.acquire_token_for_client(resource=resource)
        out[resource] = {"mic": [mic.token, mic.expires_on], "dac": [dac.token, dac.expires_on],
                         "msal": [result.get("access_token"), result.get("expires_in"), result.get("error")]}
    print(json.dumps(out))
"""


def test_sdks_in_the_child_get_exactly_the_daemons_tokens(env: dict[str, str], authority: SimulatedAuthority) -> None:
    """If a child under `aadhelper exec` asks ManagedIdentityCredential, DefaultAzureCredential (with an unrelated
    AZURE_CLIENT_ID set) and msal's ManagedIdentityClient for two resources, then each gets exactly the daemon's
    token and expiry for that resource, from one authority request per resource (single flight in the daemon)."""
    with DaemonProcess(env):
        out = child_json(run_exec(env, SDK_SCRIPT))
        for resource in (ARM, GRAPH):
            reply = json.loads(cli(env, "token", "graph", "--scope", f"{resource}/.default", "--json",
                                   check=True).stdout)
            sensitive(reply["access_token"])
            got = out[resource]
            assert got["mic"] == got["dac"] == [reply["access_token"], reply["expires_on"]]
            token, expires_in, error = got["msal"]
            assert error is None and token == reply["access_token"] and expires_in > mi_endpoint.MIN_VALID - 60
            assert authority.validate(f"Bearer {token}", audience=resource)
        assert authority.count("token") == 2


def test_wrong_or_missing_secret_is_refused_with_the_json_shape(env: dict[str, str]) -> None:
    """If a child calls the endpoint without the secret header or with a wrong one, then it gets 401 with JSON
    {statusCode, message}, and ManagedIdentityCredential fails after that one request showing aadhelper's message."""
    script = """
        import json, os, urllib.request, urllib.error
        from azure.identity import ManagedIdentityCredential
        url = os.environ["IDENTITY_ENDPOINT"] + "?api-version=2019-08-01&resource=https://management.azure.com"
        out = {}
        for name, headers in (("missing", {}), ("wrong", {"X-IDENTITY-HEADER": "x" * 43})):
            try:
                urllib.request.urlopen(urllib.request.Request(url, headers=headers))
            except urllib.error.HTTPError as exc:
                out[name] = [exc.code, exc.headers["Content-Type"], json.loads(exc.read())]
        os.environ["IDENTITY_HEADER"] = "not-the-secret"
        try:
            ManagedIdentityCredential().get_token("https://management.azure.com/.default")
        except Exception as exc:
            out["sdk"] = str(exc)
        print(json.dumps(out))
    """
    with DaemonProcess(env):
        out = child_json(run_exec(env, script))
    for name in ("missing", "wrong"):
        status, content_type, body = out[name]
        assert status == 401 and content_type == "application/json"
        assert body["statusCode"] == 401 and f"header is {name}" in body["message"]
    assert "401, aadhelper: the X-IDENTITY-HEADER header is wrong" in out["sdk"]


def test_resource_the_app_may_not_use_fails_with_the_authoritys_reason(env: dict[str, str]) -> None:
    """If the child asks for a resource the profile's app may not use, then ManagedIdentityCredential fails at once
    with the authority's error in aadhelper's one line; with --scope, resources outside it are refused likewise."""
    script = """
        import json, sys
        from azure.identity import ManagedIdentityCredential
        try:
            ManagedIdentityCredential().get_token(sys.argv[1] + "/.default")
        except Exception as exc:
            print(json.dumps(str(exc)))
        else:
            print(json.dumps("no error"))
    """
    with DaemonProcess(env):
        message = child_json(cli(env, "exec", "graph", "--", PYTHON, "-c", textwrap.dedent(script), VAULT))
        assert "403, aadhelper: " in message and "invalid" in message and "graph" in message
        limited = child_json(cli(env, "exec", "graph", "--scope", f"{GRAPH}/.default", "--", PYTHON, "-c",
                                 textwrap.dedent(script), ARM))
        assert "403, aadhelper: resource 'https://management.azure.com' is not one this aadhelper exec serves" \
            in limited


def test_child_environment_holds_no_token_or_secret(env: dict[str, str], app_secret: str) -> None:
    """If the daemon holds a token and a child runs under exec, then the child's environment has none of the removed
    variables, no token and no profile secret, and a fresh IDENTITY_HEADER (>= 32 chars) for each exec."""
    with DaemonProcess(env):
        token = token_of(env, "graph")
        script = "import json, os; print(json.dumps(dict(os.environ)))"
        first, second = child_json(run_exec(env, script)), child_json(run_exec(env, script))
    for child in (first, second):
        assert not set(mi_endpoint.REMOVED_VARIABLES) & set(child)
        assert "AZURE_TOKEN_CREDENTIALS" not in child
        assert child["IDENTITY_ENDPOINT"].startswith("http://127.0.0.1:")
        assert len(child["IDENTITY_HEADER"]) >= 32
        for value in child.values():
            assert token not in value and app_secret not in value
    assert first["IDENTITY_HEADER"] != second["IDENTITY_HEADER"]


AZ_SHIM_SCRIPT = """
    import json, os, shutil, stat, subprocess
    from azure.identity import AzureCliCredential
    az = shutil.which("az")
    out = {"az": az, "mode": stat.S_IMODE(os.stat(os.path.dirname(az)).st_mode),
           "tokens": {r: list(AzureCliCredential().get_token(r + "/.default")) for r in (%r, %r)}}
    print(json.dumps(out))
"""


def test_az_shim_gives_the_child_an_az_with_the_daemons_tokens(env: dict[str, str], authority: SimulatedAuthority,
                                                                 tmp_path: Path) -> None:
    """If a child under `aadhelper exec --az-shim` runs azure-identity's AzureCliCredential, then it finds an `az`
    in a private (0700) directory first on its PATH and gets exactly the daemon's token and expiry for each of two
    resources; the directory is gone when exec ends, and `-- az ...` runs that shim too."""
    env = dict(env, PATH=os.pathsep.join(["/usr/bin", "/bin"]))  # no real az anywhere
    with DaemonProcess(env):
        out = child_json(run_exec(env, AZ_SHIM_SCRIPT % (ARM, GRAPH), "--az-shim"))
        for resource in (ARM, GRAPH):
            reply = json.loads(cli(env, "token", "graph", "--scope", f"{resource}/.default", "--json",
                                   check=True).stdout)
            sensitive(reply["access_token"])
            assert out["tokens"][resource] == [reply["access_token"], reply["expires_on"]]
        assert authority.count("token") == 2
        direct = cli(env, "exec", "graph", "--az-shim", "--", "az", "account", "get-access-token", "--resource",
                     ARM, check=True)
        assert json.loads(direct.stdout)["accessToken"] == out["tokens"][ARM][0]
    assert os.path.basename(out["az"]) == "az" and out["mode"] == 0o700
    assert not os.path.exists(os.path.dirname(out["az"]))


def test_endpoint_refuses_after_the_command_exits(env: dict[str, str]) -> None:
    """If CMD exits, then its endpoint's port refuses connections."""
    with DaemonProcess(env):
        url = child_json(run_exec(env, "import json, os; print(json.dumps(os.environ['IDENTITY_ENDPOINT']))"))
    port = int(url.split(":")[2].split("/")[0])
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)


def test_bad_input_does_not_hurt_other_connections_or_the_daemon(env: dict[str, str]) -> None:
    """If one connection holds a half-sent head (slowloris), others send a malformed query and an oversize head,
    and eight keep-alive connections each have a request in flight at once, then the bad ones get 4xx JSON, every
    good one its token, twice per connection, and the daemon keeps serving."""
    script = """
        import json, os, socket
        from urllib.parse import urlsplit
        url = urlsplit(os.environ["IDENTITY_ENDPOINT"])
        secret = os.environ["IDENTITY_HEADER"]
        def head(query, extra=""):
            return (f"GET {url.path}?{query} HTTP/1.1\\r\\nHost: x\\r\\nX-IDENTITY-HEADER: {secret}\\r\\n{extra}"
                    "\\r\\n").encode()
        def reply(conn):
            data = b""
            while b"\\r\\n\\r\\n" not in data:
                data += conn.recv(65536)
            top, _, body = data.partition(b"\\r\\n\\r\\n")
            length = int([l for l in top.split(b"\\r\\n") if l.lower().startswith(b"content-length")][0].split(b":")[1])
            while len(body) < length:
                body += conn.recv(65536)
            return int(top.split()[1]), json.loads(body)
        def conn():
            return socket.create_connection((url.hostname, url.port), timeout=30)
        good = "api-version=2019-08-01&resource=https://management.azure.com"
        slow = conn()
        slow.sendall(head(good)[:25])
        out = {"bad": []}
        for data in (head("api-version=2019-08-01&&=&resource"), head(good, "X-Big: " + "y" * 10000 + "\\r\\n")):
            c = conn()
            c.sendall(data)
            out["bad"].append(reply(c))
            c.close()
        conns = [conn() for _ in range(8)]
        out["good"] = []
        for _ in range(2):
            for c in conns:
                c.sendall(head(good))
            out["good"] += [reply(c) for c in reversed(conns)]
        print(json.dumps(out))
    """
    with DaemonProcess(env) as daemon:
        out = child_json(run_exec(env, script))
        daemon.check_alive()
        token = token_of(env, "graph", "--scope", f"{ARM}/.default")
    assert [(status, body["statusCode"]) for status, body in out["bad"]] == [(400, 400), (431, 431)]
    assert "malformed query string" in out["bad"][0][1]["message"]
    assert [status for status, _ in out["good"]] == [200] * 16
    assert {body["access_token"] for _, body in out["good"]} == {token}


@pytest.mark.parametrize(("code", "status"), [("exit 7", 7), ("exit 0", 0), ("kill -TERM $$", 128 + 15),
                                              ("kill -KILL $$", 128 + 9)])
def test_exit_status_passes_through(env: dict[str, str], code: str, status: int) -> None:
    """If CMD exits with a status or dies of a signal, then exec exits with that status, or 128 + the signal."""
    with DaemonProcess(env):
        result = cli(env, "exec", "graph", "--", "sh", "-c", code)
    assert result.returncode == status, result.stderr


def test_missing_command_and_unknown_profile_are_one_line_errors(env: dict[str, str]) -> None:
    """If CMD cannot be found, the profile is unknown or no command is given, then exec prints one line and exits
    127, 3 or 2, without running anything."""
    with DaemonProcess(env):
        missing = cli(env, "exec", "graph", "--", "no-such-command-aadhelper")
        unknown = cli(env, "exec", "nosuch", "--", "true")
        empty = cli(env, "exec", "graph")
    assert missing.returncode == 127 and missing.stderr.strip().endswith("command not found")
    assert unknown.returncode == 3 and "nosuch" in unknown.stderr
    assert empty.returncode == 2 and "put it after `--`" in empty.stderr
    for result in (missing, unknown, empty):
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


SIGNAL_SCRIPT = """
    import signal, sys
    got = []
    def note(number, frame):
        got.append(number)
        print(f"got {signal.Signals(number).name}", flush=True)
        sys.exit(40 + len(got))
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, note)
    print("ready", flush=True)
    signal.pause()
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT], ids=lambda s: s.name)
def test_signals_to_exec_are_forwarded_to_the_command(env: dict[str, str], sig: signal.Signals) -> None:
    """If SIGINT, SIGTERM, SIGHUP or SIGQUIT is sent to the exec process, then CMD receives it once and exec exits
    with CMD's status (exec itself does not die of it)."""
    with DaemonProcess(env):
        process = subprocess.Popen([AADHELPER, "exec", "graph", "--", PYTHON, "-c", textwrap.dedent(SIGNAL_SCRIPT)],
                                   env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   start_new_session=True)  # its own group: the signal reaches exec alone
        try:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "ready"
            process.send_signal(sig)
            stdout, stderr = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert stdout.strip() == f"got {sig.name}", stderr
    assert process.returncode == 41, stderr


TERMINAL_SCRIPT = """
    import os, signal, sys
    got = []
    signal.signal(signal.SIGINT, lambda number, frame: got.append(number))
    foreground = os.tcgetpgrp(0) == os.getpgrp()
    print(f"tty={os.isatty(0)} foreground={foreground}", flush=True)
    line = input("name? ")
    print(f"hello {line}", flush=True)
    while not got:
        signal.pause()
    print("interrupted", flush=True)
    input("again? ")
    print(f"sigints={len(got)}", flush=True)
    sys.exit(3)
"""


def test_interactive_command_keeps_the_terminal(env: dict[str, str]) -> None:
    """If exec runs in a terminal (a pty), then CMD is in the terminal's foreground process group, reads what is
    typed, and a Ctrl-C typed there reaches it exactly once (exec does not send it a second time); exec exits with
    CMD's status."""
    with DaemonProcess(env):
        master, slave = pty.openpty()

        def make_controlling_terminal() -> None:
            import fcntl
            import termios

            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        process = subprocess.Popen([AADHELPER, "exec", "graph", "--", PYTHON, "-c", textwrap.dedent(TERMINAL_SCRIPT)],
                                   env=env, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                                   preexec_fn=make_controlling_terminal)
        os.close(slave)
        seen = b""

        def expect(text: bytes) -> None:
            nonlocal seen
            deadline = time.monotonic() + 60
            while text not in seen:
                assert time.monotonic() < deadline, f"no {text!r} on the terminal: {seen!r}"
                ready, _, _ = select.select([master], [], [], 1)
                if ready:
                    try:
                        seen += os.read(master, 4096)
                    except OSError:  # EIO: every process left the terminal
                        assert text in seen, f"no {text!r} on the terminal: {seen!r}"

        try:
            expect(b"name? ")
            assert b"tty=True foreground=True" in seen
            os.write(master, b"world\n")
            expect(b"hello world")
            os.write(master, b"\x03")  # Ctrl-C: the terminal signals its foreground group
            expect(b"again? ")
            os.write(master, b"done\n")
            expect(b"sigints=")
            assert process.wait(timeout=60) == 3
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            os.close(master)
    assert b"sigints=1" in seen, seen
