"""The kubectl exec credential plugin and its kubeconfig entry (issue 13 §2), against the real kubectl v1.32 and a
loopback HTTPS stub of an API server (its own CA in the kubeconfig) that accepts only the daemon's current token."""

from __future__ import annotations

import calendar
import json
import os
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aadhelper import paths, protocol
from aadhelper.cli import kube_exec
from aadhelper.testing import FakeDaemon
from tests.harness import one_error_line
from tests.tools_world import (  # noqa: F401 -- tools_world: the fixture `tools`
    AKS_SCOPE,
    PROFILE,
    StubApiServer,
    ToolsWorld,
    cluster_kubeconfig,
    tools_world,
)

USER = kube_exec.user_name(PROFILE, kube_exec.AKS_SERVER_ID)
KUBECTL_TIMEOUT = 60

pytestmark = pytest.mark.requires("kubectl")


def kubectl(env: dict[str, str], kubeconfig: Path | str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["kubectl", f"--kubeconfig={kubeconfig}", *args], env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=KUBECTL_TIMEOUT, check=False)


@pytest.fixture
def stub(tools: ToolsWorld) -> Iterator[StubApiServer]:
    """The stub API server, accepting the daemon's current AKS token."""
    with StubApiServer(tools.tls, tools.token(AKS_SCOPE)) as server:
        yield server


@pytest.fixture
def merged(tools: ToolsWorld, stub: StubApiServer, tmp_path: Path) -> Path:
    """A kubeconfig whose context `stub` was pointed at aadhelper's entry by `aadhelper kubeconfig --context`."""
    path = tmp_path / "kubeconfig"
    path.write_text(cluster_kubeconfig(stub.url, tools.tls))
    tools.home.aadhelper("kubeconfig", PROFILE, "--kubeconfig", str(path), "--context", "stub")
    return path


@pytest.mark.parametrize("api_version", kube_exec.API_VERSIONS)
def test_kubectl_reaches_the_api_with_the_daemons_token(tools: ToolsWorld, stub: StubApiServer, merged: Path,
                                                        api_version: str) -> None:
    """If kubectl's user runs `aadhelper kubectl-credential` with exec apiVersion v1 or v1beta1, then `kubectl get
    --raw /api` succeeds and the API server saw exactly the daemon's current token."""
    if api_version != kube_exec.API_V1:
        kubectl(tools.env, merged, "config", "set-credentials", USER, f"--exec-api-version={api_version}")
    result = kubectl(tools.env, merged, "get", "--raw", "/api")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["kind"] == "APIVersions"
    assert stub.tokens == [tools.token(AKS_SCOPE)]


def test_the_plugin_expires_the_credential_min_valid_before_the_token(tools: ToolsWorld) -> None:
    """If the real daemon serves the plugin a token against the profile's minimum validity (300 s by default), then
    the ExecCredential expires that long before the token does: when the daemon would hand out a fresh one."""
    env = dict(tools.env, KUBERNETES_EXEC_INFO=exec_info(kube_exec.API_V1))
    result = subprocess.run([*paths.console_script(), "kubectl-credential", PROFILE, "--scope", AKS_SCOPE], env=env,
                            capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)["status"]
    reply = json.loads(tools.home.aadhelper("token", PROFILE, "--scope", AKS_SCOPE, "--json").stdout)
    assert status["token"] == reply["access_token"]
    assert status["expirationTimestamp"] == kube_exec.rfc3339(reply["expires_on"] - 300)


def test_a_token_the_api_server_refuses_takes_kubectls_401_path(tools: ToolsWorld, stub: StubApiServer,
                                                                merged: Path) -> None:
    """If the API server refuses the daemon's token, then kubectl fails with its Unauthorized error after running
    the plugin again (the only tokens it sent were the daemon's)."""
    stub.accepted = "a-token-the-daemon-never-issued"
    result = kubectl(tools.env, merged, "get", "--raw", "/api")
    assert result.returncode != 0
    assert "Unauthorized" in result.stderr or "must be logged in" in result.stderr, result.stderr
    assert stub.tokens and set(stub.tokens) == {tools.token(AKS_SCOPE)}


def test_the_plugins_error_reaches_kubectls_stderr(tools: ToolsWorld, stub: StubApiServer, merged: Path) -> None:
    """If the plugin fails (a profile the daemon does not know), then kubectl shows the plugin's one line and its
    exit code, and the API server is never asked."""
    kubectl(tools.env, merged, "config", "set-credentials", USER, "--exec-arg=kubectl-credential",
            "--exec-arg=no-such-profile")
    result = kubectl(tools.env, merged, "get", "--raw", "/api")
    assert result.returncode != 0
    # One line per plugin run (this machine's kubectl is a version dispatcher that may run the plugin first too).
    ours = [line for line in result.stderr.splitlines() if line.startswith("aadhelper: ")]
    assert ours and len(set(ours)) == 1 and "no-such-profile" in ours[0], result.stderr
    assert "failed with exit code 3" in result.stderr
    assert stub.tokens == []


def test_merging_keeps_every_other_entry_and_replaces_ours(tools: ToolsWorld, stub: StubApiServer,
                                                          tmp_path: Path) -> None:
    """If the entry is merged into a kubeconfig that already has other clusters, users and contexts (and an old
    `aadhelper-app` user with a static token), then all of those stay, ours has only the exec stanza (v1,
    interactiveMode Never, this installation's absolute aadhelper), the file keeps its mode, and kubectl uses it."""
    path = tmp_path / "kubeconfig"
    path.write_text(cluster_kubeconfig(stub.url, tools.tls))
    kubectl(tools.env, path, "config", "set-credentials", USER, "--token=stale-static-token")
    path.chmod(0o640)
    tools.home.aadhelper("kubeconfig", PROFILE, "--kubeconfig", str(path), "--context", "stub")

    view: dict[str, Any] = json.loads(kubectl(tools.env, path, "config", "view", "--raw", "-o", "json").stdout)
    users = {user["name"]: user["user"] for user in view["users"]}
    assert users["other"] == {"token": "static-token-of-other"}
    assert set(users[USER]) == {"exec"}
    exec_block = users[USER]["exec"]
    command = paths.console_script()
    assert os.path.isabs(exec_block["command"]) and exec_block["command"] == command[0]
    assert exec_block["args"] == [*command[1:], "kubectl-credential", PROFILE, "--scope", AKS_SCOPE]
    assert exec_block["apiVersion"] == kube_exec.API_V1 and exec_block["interactiveMode"] == "Never"
    contexts = {context["name"]: context["context"] for context in view["contexts"]}
    assert contexts["stub"] == {"cluster": "stub", "user": USER}
    assert contexts["keep-me"] == {"cluster": "elsewhere", "user": "other"}
    assert {cluster["name"] for cluster in view["clusters"]} == {"stub", "elsewhere"}
    assert view["current-context"] == "stub"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".aadhelper")] == []
    assert kubectl(tools.env, path, "get", "--raw", "/api").returncode == 0


def test_merging_into_a_missing_kubeconfig_creates_a_private_one(tools: ToolsWorld, tmp_path: Path) -> None:
    """If --kubeconfig names a file that does not exist yet, then it is created, readable by its owner only, with
    our user entry (and nothing else is written next to it)."""
    path = tmp_path / "new" / "config"
    path.parent.mkdir()
    tools.home.aadhelper("kubeconfig", PROFILE, "--kubeconfig", str(path))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    view = json.loads(kubectl(tools.env, path, "config", "view", "-o", "json").stdout)
    assert [user["name"] for user in view["users"]] == [USER]
    assert sorted(p.name for p in path.parent.iterdir()) == ["config"]


def test_merging_into_a_context_that_does_not_exist_changes_nothing(tools: ToolsWorld, stub: StubApiServer,
                                                                   tmp_path: Path) -> None:
    """If --context names a context the kubeconfig does not have, then the merge is refused with one line naming
    it and the file is unchanged."""
    path = tmp_path / "kubeconfig"
    path.write_text(before := cluster_kubeconfig(stub.url, tools.tls))
    result = tools.home.aadhelper("kubeconfig", PROFILE, "--kubeconfig", str(path), "--context", "typo",
                                  check=False)
    assert result.returncode == 3
    assert "typo" in one_error_line(result)
    assert path.read_text() == before


def test_the_printed_entry_is_a_users_list_kubectl_reads(tools: ToolsWorld, stub: StubApiServer,
                                                        tmp_path: Path) -> None:
    """If the user pastes what `aadhelper kubeconfig PROFILE` prints into a kubeconfig, then kubectl reads it and
    reaches the API with the daemon's token."""
    printed = tools.home.aadhelper("kubeconfig", PROFILE).stdout
    assert printed.startswith("users:\n")
    clusters = tmp_path / "clusters"
    clusters.write_text(cluster_kubeconfig(stub.url, tools.tls, user=USER))
    users = tmp_path / "users"
    users.write_text("apiVersion: v1\nkind: Config\n" + printed)
    env = dict(tools.env, KUBECONFIG=f"{clusters}:{users}")
    result = subprocess.run(["kubectl", "get", "--raw", "/api"], env=env, capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, timeout=KUBECTL_TIMEOUT, check=False)
    assert result.returncode == 0, result.stderr
    assert stub.tokens == [tools.token(AKS_SCOPE)]


# -- the plugin alone, against a fake daemon --------------------------------------------------------------------

EXPIRES_IN = 3600


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeDaemon]:
    """A fake daemon handing out a token that expires in an hour, served against a minimum validity of 300 s."""
    def answer(request: dict[str, Any]) -> dict[str, Any]:
        return protocol.ok_reply(access_token="fake-aks-token", token_type="Bearer",
                                 expires_on=int(time.time()) + EXPIRES_IN, profile="p", scopes=[AKS_SCOPE],
                                 tenant="contoso.onmicrosoft.com", min_valid=300)

    with FakeDaemon(tmp_path / "run" / "daemon.sock", answer) as daemon:
        yield daemon


def plugin(fake: FakeDaemon, exec_info: str | bytes | None, *args: str) -> subprocess.CompletedProcess[bytes]:
    # Bytes, so that a value that is not UTF-8 reaches the plugin as kubectl's bytes would.
    env = {os.fsencode(k): os.fsencode(v) for k, v in fake.environ(os.environ).items()
           if k != kube_exec.EXEC_INFO_ENV}
    if exec_info is not None:
        env[kube_exec.EXEC_INFO_ENV.encode()] = exec_info if isinstance(exec_info, bytes) else os.fsencode(exec_info)
    env[b"AADHELPER_NO_AUTOSTART"] = b"1"
    return subprocess.run([*paths.console_script(), "kubectl-credential", "p", *args], env=env, capture_output=True,
                          stdin=subprocess.DEVNULL, timeout=30, check=False)


def exec_info(version: str) -> str:
    return json.dumps({"kind": "ExecCredential", "apiVersion": version, "spec": {"interactive": False}})


@pytest.mark.parametrize("given, answered", [(exec_info(kube_exec.API_V1), kube_exec.API_V1),
                                             (exec_info(kube_exec.API_V1BETA1), kube_exec.API_V1BETA1),
                                             (None, kube_exec.API_V1BETA1), ("", kube_exec.API_V1BETA1)],
                         ids=["v1", "v1beta1", "unset", "empty"])
def test_the_plugin_echoes_the_api_version_and_expires_when_the_daemon_stops_serving(
        fake: FakeDaemon, given: str | None, answered: str) -> None:
    """If kubectl asks in v1 or v1beta1 (or nothing is set, as when run by hand: v1beta1, like kubelogin), then the
    plugin answers an ExecCredential of that version whose expirationTimestamp is RFC 3339 UTC and min_valid
    before the token's expiry (when the daemon would hand out a fresh one)."""
    before = int(time.time())
    result = plugin(fake, given)
    assert result.returncode == 0, result.stderr
    credential = json.loads(result.stdout)
    assert credential["apiVersion"] == answered and credential["kind"] == "ExecCredential"
    assert credential["status"]["token"] == "fake-aks-token"
    stamp = credential["status"]["expirationTimestamp"]
    assert time.strftime("%Y-%m-%dT%H:%M:%SZ", time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")) == stamp
    expiry = calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))
    assert before + EXPIRES_IN - 300 <= expiry <= int(time.time()) + EXPIRES_IN - 300


@pytest.mark.parametrize("value", [
    "garbage", "[]", "null", '"ExecCredential"', '{"apiVersion": 5}', '{"kind": "Pod", "apiVersion": "v1"}',
    exec_info("client.authentication.k8s.io/v1alpha1"), exec_info("client.authentication.k8s.io/v2"),
    "[" * 100_000, '{"apiVersion": "' + "x" * 120_000 + '"}', b"\xff\xfe{", "{\"apiVersion\": \"\\ud800\"}",
], ids=["text", "list", "null", "string", "number-version", "other-kind", "v1alpha1", "v2", "deep", "huge",
        "not-utf8", "lone-surrogate"])
def test_garbage_exec_info_is_one_clear_line_before_the_daemon_is_asked(fake: FakeDaemon,
                                                                          value: str | bytes) -> None:
    """If KUBERNETES_EXEC_INFO is not an ExecCredential of a version kubectl speaks, then the plugin exits 2 with
    one line naming the problem and the fix, prints nothing on stdout, and never asks the daemon."""
    result = plugin(fake, value)
    assert result.returncode == 2, result.stderr
    stderr = result.stderr.decode()
    assert "Traceback" not in stderr and len(stderr.splitlines()) == 1 and stderr.startswith("aadhelper: ")
    assert "KUBERNETES_EXEC_INFO" in stderr or "apiVersion" in stderr
    assert result.stdout == b"" and fake.requests == []


def test_the_plugin_never_reads_stdin(fake: FakeDaemon) -> None:
    """If kubectl leaves the plugin's stdin open and silent, then the plugin answers all the same (it never reads
    it: interactiveMode Never)."""
    env = dict(fake.environ(os.environ), AADHELPER_NO_AUTOSTART="1")
    env[kube_exec.EXEC_INFO_ENV] = exec_info(kube_exec.API_V1)
    process = subprocess.Popen([*paths.console_script(), "kubectl-credential", "p"], env=env, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        code = process.wait(timeout=30)  # the reply fits the pipe: waiting first cannot deadlock
        out = process.stdout.read() if process.stdout else b""
    finally:
        if process.stdin:
            process.stdin.close()
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream:
                stream.close()
    assert code == 0 and json.loads(out)["status"]["token"] == "fake-aks-token"


@pytest.mark.parametrize("expires_on, min_valid, now", [(10_000, 300, 5_000), (10_000, 0, 5_000),
                                                        (10_000, 300, 9_800), (10_000, 20_000, 5_000),
                                                        (10_000, 300, 10_000), (10_000, 9_999, 0)])
def test_the_reported_expiry_is_never_after_the_token_expires(expires_on: int, min_valid: int, now: int) -> None:
    """If the daemon served a token against some minimum validity, then the plugin's expiry is min_valid before the
    token's expiry, never later than that expiry, and never in the past while the token is valid (a past time would
    make kubectl run the plugin before every request)."""
    expiry = kube_exec.credential_expiry(expires_on, min_valid, now)
    assert expiry <= expires_on
    assert expiry >= min(expires_on, now + 1)
    if expires_on - min_valid > now:
        assert expiry == expires_on - min_valid
