"""The configuration: frozen :class:`Profile`/:class:`Config` values, parsed from TOML, with defaults and environment.

Layers, later wins: built-in defaults -> the TOML file (``$AADHELPER_CONFIG`` or ``<user config dir>/config.toml``)
-> environment (``AZURE_AUTHORITY_HOST`` for profiles without ``authority``; ``AADHELPER_NO_AUTOSTART=1``; the
proxy variables only with ``proxy_from_environment = true``, see :mod:`aadhelper.proxy`).
:func:`parse_config` is pure (text in, value out); :func:`load_config` reads the file. Writing lives in
:mod:`aadhelper.config_edit`. Reading never blocks on a FIFO or device and refuses anything that is not a regular
file (a symlink to one is fine), a file of another user or writable by everyone, and a file over
:data:`MAX_CONFIG_BYTES` (1 MiB), each with a one-line :class:`ConfigError`. The file::

    default_profile = "graph"           # optional when there is exactly one profile

    [daemon]
    autostart = true                    # clients start the daemon when none answers (env AADHELPER_NO_AUTOSTART=1: off)
    idle_exit = 0                       # seconds without requests before a socket-activated daemon exits; 0 = never
    proxy = "http://proxy.example.com:3128"  # HTTP(S) proxy for the daemon's fetches (default: none, direct)
    no_proxy = "internal.example.com,10.1.2.3"  # hosts (and their subdomains) reached directly all the same
    proxy_from_environment = false      # true: HTTPS_PROXY/ALL_PROXY/NO_PROXY of the daemon's start environment
    log_level = "info"                  # error, warning, info, debug (env AADHELPER_LOG_LEVEL wins); read at start

    [profiles.graph]                    # name: letters, digits, '-', '_', '.'; at most 64
    tenant = "contoso.onmicrosoft.com"  # GUID or domain (common/organizations/consumers only for credential "user")
    client_id = "11111111-2222-3333-4444-555555555555"
    scopes = ["https://graph.microsoft.com/.default"]   # default scopes, at least one
    authority = "public"                # public, usgov, china, https://host (default: $AZURE_AUTHORITY_HOST or public)
    credential = "client_secret"        # client_secret (secret in the keyring) | user (sign in as a user, no secret)
                                        # | certificate (key + certificate in the keyring, or certificate_path)
                                        # | federated (workload identity federation: an assertion from another issuer)
                                        # | managed_identity (the machine's identity, see below)
    certificate_path = "~/app.pem"      # certificate: a PEM/PFX file (mode 0600) instead of the keyring
    x5c = false                         # certificate: send the chain (subject name + issuer authentication)
    assertion_alg = "PS256"             # certificate: PS256 (x5t#S256), or RS256 (SHA-1 x5t) for older authorities
    token_file = "/var/run/secrets/azure/tokens/azure-identity-token"   # federated: file holding the assertion
                                        # (default: $AZURE_FEDERATED_TOKEN_FILE when set), re-read at every exchange
    token_command = ["/usr/local/bin/get-oidc-token", "--audience", "api://AzureADTokenExchange"]
                                        # federated, instead of token_file: its stdout is the assertion (no shell)
    min_valid = 300                     # seconds a served token must still be valid, 0..86400
    ca_bundle = "/etc/ssl/my-ca.pem"    # CA file for the authority's TLS (absolute or ~/...)

    [[profiles.ado.git]]                # git remotes served by profile "ado" (longest matching prefix wins)
    url = "https://dev.azure.com/contoso/"
    username = "me@contoso.com"         # optional; default: the client id, or the signed-in account (user)

    [profiles.vm]                       # credential "managed_identity": no tenant, no secret
    credential = "managed_identity"
    scopes = ["https://management.azure.com/.default"]  # exactly one resource/.default
    source = "imds"                     # imds | app_service | arc (default: detected from the daemon's environment)
    client_id = "..."                   # a user-assigned identity: one of client_id, object_id, msi_res_id
    endpoint = "http://127.0.0.1:8080/metadata/identity/oauth2/token"  # override the token URL (tests)

A federated profile's ``token_file`` default is resolved when the file is parsed, from the environment of the process
parsing it: in the daemon that is its start environment (``AZURE_FEDERATED_TOKEN_FILE`` survives the clean start,
see :mod:`aadhelper.process_setup`), so the daemon a Kubernetes pod's first client autostarts finds the pod's file,
and a daemon started by systemd (whose environment has no such variable) needs ``token_file`` written out. The
file's *content* is read again at every exchange (:mod:`aadhelper.grants.federated`).

Plain ``http://`` authorities are accepted only on a loopback host (tests, the demo). Unknown keys are errors,
so a typo never silently falls back to a default. Every :class:`ConfigError` names the file, the profile and
the key.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from . import paths
from .errors import ConfigError, UnknownProfile
from .protocol import MAX_MIN_VALID
from .proxy import DIRECT, InvalidProxy, ProxySetting, from_environment, parse_no_proxy, parse_proxy_url
from .suggest import did_you_mean
from .tokens import Secret
from .urls import InvalidAuthority, match_key, normalize_git_url, resolve_authority_url

CREDENTIALS = ("client_secret", "user", "certificate", "federated", "managed_identity")
#: Credential kinds of an application identity (the client credentials grant): no user, so a real tenant.
APP_CREDENTIALS = ("client_secret", "certificate", "federated")
#: Tenant aliases that are not a tenant: the client credentials grant refuses them (AADSTS9001023).
TENANT_ALIASES = frozenset({"common", "organizations", "consumers"})
#: git's username when a user-credential profile's mapping names none; Azure DevOps accepts any non-empty one.
DEFAULT_GIT_USERNAME = "aadhelper"
#: Largest config file read (a real one is a few KiB; parsing 1 MiB of profiles takes ~0.5 s): anything larger is
#: refused with a one-line error instead of being read into memory.
MAX_CONFIG_BYTES = 1024 * 1024

_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_TENANT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,253}")
# Printable, no whitespace: these travel as form fields, space-separated scope lists and git credential lines.
_TOKEN_RE = re.compile(r"[!-~]{1,2000}")
_TOP_KEYS = ("default_profile", "daemon", "profiles")
_DAEMON_KEYS = ("autostart", "idle_exit", "proxy", "no_proxy", "proxy_from_environment", "log_level")
_PROFILE_KEYS: tuple[str, ...] = ("tenant", "client_id", "scopes", "authority", "credential", "min_valid",
                                   "ca_bundle", "git", "certificate_path", "x5c", "assertion_alg", "token_file",
                                   "token_command")
_CERTIFICATE_KEYS = ("certificate_path", "x5c", "assertion_alg")
#: The client-assertion signing algorithms a certificate profile may use (``assertion_alg``).
ASSERTION_ALGS = ("PS256", "RS256")
#: The variable azure-identity's WorkloadIdentityCredential reads (set by the Azure Workload Identity webhook).
FEDERATED_TOKEN_FILE_VARIABLE = "AZURE_FEDERATED_TOKEN_FILE"
#: The audience Entra expects of a federated token (what the portal fills in for a federated credential).
FEDERATION_AUDIENCE = "api://AzureADTokenExchange"
#: Keys only a managed_identity profile takes (``client_id`` there names a user-assigned identity).
_MANAGED_IDENTITY_KEYS = ("source", "endpoint", "object_id", "msi_res_id", "arc_key_dir")
_PROFILE_KEYS += _MANAGED_IDENTITY_KEYS
_GIT_KEYS = ("url", "username")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})


class ConfigUnreadable(ConfigError):
    """Opening or reading the file failed (I/O error, out of file descriptors, a symlink loop...): unlike a bad
    content, this may pass without the file changing, so the daemon tries again (see :mod:`.config_watch`).
    Travels as a plain ``config`` error."""


@dataclass(frozen=True)
class GitUrl:
    """A git remote prefix served by a profile."""

    url: str  # normalised: scheme + lower-case host[:port] + path, ending in "/"
    username: str | None = None  # None: the profile's default (see Profile.git_username)


@dataclass(frozen=True)
class CertificateSettings:
    """How a ``credential = "certificate"`` profile signs its client assertions."""

    #: A PEM/PFX file holding the key and certificate; None: they are in the keyring.
    path: str | None = None
    #: Send the chain in the assertion's ``x5c`` header (subject name + issuer authentication).
    x5c: bool = False
    #: ``PS256`` (header ``x5t#S256``) or ``RS256`` (header ``x5t``, SHA-1).
    assertion_alg: str = "PS256"

    def as_dict(self) -> dict[str, Any]:
        return {"certificate_path": self.path, "x5c": self.x5c, "assertion_alg": self.assertion_alg}

    @classmethod
    def from_dict(cls, data: object) -> CertificateSettings:
        """The inverse of :meth:`as_dict` (the fetcher's channel); ValueError when malformed."""
        if not isinstance(data, dict):
            raise ValueError("certificate settings must be an object")
        path, x5c, alg = data.get("certificate_path"), data.get("x5c"), data.get("assertion_alg")
        if not isinstance(path, (str, type(None))) or not isinstance(x5c, bool) or alg not in ASSERTION_ALGS:
            raise ValueError("malformed certificate settings")
        return cls(path, x5c, str(alg))


@dataclass(frozen=True)
class Profile:
    """One app registration in one tenant: what the daemon needs to get its tokens."""

    name: str
    tenant: str
    client_id: str
    scopes: tuple[str, ...]
    authority: str  # base URL, no trailing slash
    credential: str  # one of CREDENTIALS
    min_valid: int = 300
    ca_bundle: str | None = None
    git_urls: tuple[GitUrl, ...] = ()
    #: The daemon-level ``[daemon] proxy`` setting, carried by each profile to the fetcher that applies it.
    proxy: ProxySetting = DIRECT
    #: credential "federated": the file holding the assertion (absolute), or the command printing it (argv).
    token_file: str | None = None
    token_command: tuple[str, ...] | None = None
    #: Set for ``credential = "certificate"`` only.
    certificate: CertificateSettings | None = None
    #: Where a ``managed_identity`` profile gets its tokens (None for every other kind).
    managed_identity: ManagedIdentity | None = None

    @property
    def token_endpoint(self) -> str:
        return f"{self.authority}/{self.tenant}/oauth2/v2.0/token"

    @property
    def devicecode_endpoint(self) -> str:
        return f"{self.authority}/{self.tenant}/oauth2/v2.0/devicecode"

    @property
    def authorize_endpoint(self) -> str:
        return f"{self.authority}/{self.tenant}/oauth2/v2.0/authorize"

    def git_username(self, git_url: GitUrl | None = None, account: str | None = None) -> str:
        """The username git gets with the token: the mapping's, else the signed-in ``account`` (user profiles,
        as Git Credential Manager sends), else the client id (what GCM sends for a service principal), else
        :data:`DEFAULT_GIT_USERNAME`. Azure DevOps ignores it as long as it is not empty.
        """
        if git_url is not None and git_url.username:
            return git_url.username
        if self.credential in APP_CREDENTIALS:
            return self.client_id
        return account or DEFAULT_GIT_USERNAME

    def as_dict(self) -> dict[str, Any]:
        """Every setting as JSON-ready values (nothing here is secret)."""
        return {
            "name": self.name, "tenant": self.tenant, "client_id": self.client_id, "scopes": list(self.scopes),
            "authority": self.authority, "credential": self.credential, "min_valid": self.min_valid,
            "ca_bundle": self.ca_bundle, "token_endpoint": self.token_endpoint,
            "git_urls": [{"url": g.url, "username": self.git_username(g)} for g in self.git_urls],
            **({"token_file": self.token_file} if self.token_file is not None else {}),
            **({"token_command": list(self.token_command)} if self.token_command is not None else {}),
            **(self.certificate.as_dict() if self.certificate else {}),
            # A managed identity's tokens come from its own endpoint, not the authority's.
            **({"managed_identity": self.managed_identity.as_dict(), "token_endpoint": self.managed_identity.endpoint}
               if self.managed_identity else {}),
        }


@dataclass(frozen=True)
class Config:
    """The whole configuration; ``profiles`` is read-only."""

    path: str
    profiles: Mapping[str, Profile] = field(default_factory=lambda: MappingProxyType({}))
    default_profile: str | None = None
    autostart: bool = True
    idle_exit: int = 0
    proxy: ProxySetting = DIRECT
    #: The daemon's log level: ``$AADHELPER_LOG_LEVEL``, else ``[daemon] log_level``, else info (read at start).
    log_level: str = "info"

    def profile(self, name: str | None) -> Profile:
        """The named profile, or the default one for ``None``."""
        if name is None:
            if self.default_profile is None:
                if not self.profiles:
                    raise ConfigError(f"{self.path}: no profiles are configured", hint="add one with "
                                      "`aadhelper profile add NAME --tenant T --client-id C --scope S`")
                raise ConfigError(f"{self.path}: key 'default_profile' is not set and there are several profiles "
                                  f"({', '.join(self.profiles)})",
                                  hint="name one, or run `aadhelper profile default NAME`")
            name = self.default_profile
        try:
            return self.profiles[name]
        except KeyError:
            raise unknown_profile(self.path, name, self.profiles) from None

    def profile_for_url(self, url: str) -> tuple[Profile, GitUrl] | None:
        """The profile whose git URL prefix matches ``url`` longest (userinfo ignored), or None."""
        try:
            want = match_key(url)
        except ValueError:
            return None
        best: tuple[int, Profile, GitUrl] | None = None
        for profile in self.profiles.values():
            for git_url in profile.git_urls:
                origin, segments = match_key(git_url.url)
                if (origin == want[0] and want[1][:len(segments)] == segments
                        and (best is None or len(segments) > best[0])):
                    best = (len(segments), profile, git_url)
        return None if best is None else (best[1], best[2])


@dataclass(frozen=True)
class _Where:
    """Where a value sits in the file, so every message names the file, the profile and the key."""

    path: str
    profile: str | None = None
    section: str | None = None

    def error(self, key: str | None, problem: str, hint: str | None = None) -> ConfigError:
        parts = [self.path]
        if self.profile is not None:
            parts.append(f"profile {self.profile!r}")
        if self.section is not None:
            parts.append(self.section)
        parts.append(problem if key is None else f"key {_shown(key)} {problem}")
        return ConfigError(": ".join(parts), hint=hint, profile=self.profile)


def parse_config(text: str, path: str, environ: Mapping[str, str] = os.environ,
                 proxy_environ: Mapping[str, str] | None = None,
                 identity_environ: Mapping[str, str] | None = None) -> Config:
    """Parse and validate a config file's text; ``path`` is only for messages. ``proxy_environ``: the proxy
    variables ``proxy_from_environment`` reads (default: the start environment, see
    :func:`aadhelper.process_setup.start_proxy_environment`); ``identity_environ``: the variables managed-identity
    profiles detect their source from (default: :func:`aadhelper.process_setup.start_identity_environment`)."""
    data = parse_toml(text, path)
    top = _Where(path)
    _check_keys(data, _TOP_KEYS, top)
    daemon = _table(data, "daemon", top)
    where = _Where(path, section="section [daemon]")
    _check_keys(daemon, _DAEMON_KEYS, where)
    autostart = _get(daemon, "autostart", bool, where, "must be true or false", True)
    idle_exit = _get_int(daemon, "idle_exit", where, 0, 10**9, 0)
    if _env_flag(environ, "AADHELPER_NO_AUTOSTART", top):
        autostart = False
    proxy = _parse_proxy(daemon, where, proxy_environ)
    profiles = {name: _parse_profile(name, raw, path, environ, proxy, identity_environ)
                for name, raw in _table(data, "profiles", top).items()}
    _check_git_url_conflicts(profiles, path)
    default = _get(data, "default_profile", str, top, "must be a profile name", None)
    if default is not None and default not in profiles:
        raise top.error("default_profile", f"names profile {_shown(default)}, which is not configured "
                                           f"(profiles: {', '.join(profiles) or 'none'})")
    if default is None and len(profiles) == 1:
        default = next(iter(profiles))
    return Config(path, MappingProxyType(profiles), default, autostart, idle_exit, proxy,
                  log_level=_log_level(daemon, where, environ))


def unknown_profile(path: str, name: str, configured: Iterable[str]) -> UnknownProfile:
    """The error for a profile name that is not in the file."""
    configured = list(configured)
    return UnknownProfile(f"{path}: profile {name!r} is not configured{did_you_mean(name, configured)} "
                          f"(profiles: {', '.join(configured) or 'none'})", profile=name,
                          hint="see `aadhelper profile list`")


def parse_toml(text: str, path: str) -> dict[str, Any]:
    """TOML text as plain data; a syntax error is a :class:`ConfigError` with line and column."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid TOML: nested too deeply") from None


def load_config(path: str | None = None, environ: Mapping[str, str] = os.environ) -> Config:
    """Read and parse the config file; a missing file is an empty configuration."""
    path = path or paths.config_file()
    config = load_config_file(path, environ)
    return parse_config("", path, environ) if config is None else config


def load_config_file(path: str, environ: Mapping[str, str] = os.environ) -> Config | None:
    """Read and parse the config file at ``path``; None when there is no file (a dangling symlink included)."""
    data = read_config_file(path)
    if data is None:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (bad byte at offset {exc.start})") from None
    return parse_config(text, path, environ)


def read_config_file(path: str) -> bytes | None:
    """The config file's bytes, None when it does not exist; never blocks on a FIFO or device, never reads more
    than :data:`MAX_CONFIG_BYTES`.

    A symlink to a regular file is followed (dotfile managers link the config). The type and owner checks are made
    on the opened descriptor, so a file swapped between a check and the read cannot slip through.
    """
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer; the fstat below refuses it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigUnreadable(f"{path}: cannot read the config file: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{path}: the config file is {_file_kind(info.st_mode)}, not a regular file; "
                              "refusing to read it", hint="replace it with a regular file")
        _check_file_owner(path, info)
        if info.st_size > MAX_CONFIG_BYTES:
            raise _too_large(path, info.st_size)
        chunks: list[bytes] = []
        size = 0
        # Bounded even when the file grows while it is read.
        while size <= MAX_CONFIG_BYTES:
            chunk = os.read(fd, MAX_CONFIG_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > MAX_CONFIG_BYTES:
            raise _too_large(path, size)
        return b"".join(chunks)
    except OSError as exc:
        raise ConfigUnreadable(f"{path}: cannot read the config file: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def _too_large(path: str, size: int) -> ConfigError:
    return ConfigError(f"{path}: the config file has {size} bytes or more, over the limit of {MAX_CONFIG_BYTES}; "
                       "refusing to read it", hint="a configuration is a few KiB: check what was written to it")


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def _parse_proxy(daemon: Mapping[str, object], where: _Where, proxy_environ: Mapping[str, str] | None) -> ProxySetting:
    """The ``[daemon]`` proxy keys: a URL, the hosts reached directly, or the opt-in to the start environment's."""
    url = _get(daemon, "proxy", str, where, "must be a URL string like \"http://proxy.example.com:3128\"", None)
    hosts = _get(daemon, "no_proxy", str, where, "must be a string of comma-separated host names", None)
    from_env = _get(daemon, "proxy_from_environment", bool, where, "must be true or false", False)
    if from_env and url is not None:
        raise where.error("proxy_from_environment", "and key 'proxy' exclude each other: set one of them",
                          hint="'proxy' names the proxy; 'proxy_from_environment = true' takes HTTPS_PROXY from the "
                               "daemon's start environment")
    for key, value, parse in (("proxy", url, parse_proxy_url), ("no_proxy", hosts, parse_no_proxy)):
        try:
            if value is not None:
                parse(value)
        except InvalidProxy as exc:
            raise where.error(key, str(exc)) from None
    if from_env:
        if proxy_environ is None:
            from .process_setup import start_proxy_environment

            proxy_environ = start_proxy_environment()
        try:
            setting = from_environment(proxy_environ)
        except InvalidProxy as exc:
            raise where.error("proxy_from_environment", f"is true, but {exc}") from None
        return setting if hosts is None else ProxySetting(setting.url, parse_no_proxy(hosts), setting.source,
                                                          setting.variable)
    if url is None:
        return DIRECT
    return ProxySetting(url, parse_no_proxy(hosts or ""), "config")


def _parse_profile(name: str, raw: object, path: str, environ: Mapping[str, str], proxy: ProxySetting,
                   identity_environ: Mapping[str, str] | None = None) -> Profile:
    if not _NAME_RE.fullmatch(name):
        # No profile=name: the message shows the name, cut short (it may be anything, of any length).
        raise ConfigError(f"{path}: profile name {_shown(name)} must be 1 to 64 letters, digits, '-', '_' or '.'")
    where = _Where(path, profile=name)
    if not isinstance(raw, dict):
        raise where.error(None, "must be a table ([profiles.NAME])")
    _check_keys(raw, _PROFILE_KEYS, where)
    credential = _get(raw, "credential", str, where, f"must be one of {', '.join(CREDENTIALS)}", "client_secret")
    if credential not in CREDENTIALS:
        raise where.error("credential", f"must be one of {', '.join(CREDENTIALS)}, not {_shown(credential)}")
    # A managed identity needs neither: the machine's identity has its tenant, and client_id (optional) names a
    # user-assigned identity.
    optional = credential == "managed_identity"
    tenant = _get_str(raw, "tenant", where, _TENANT_RE, "a tenant GUID or domain") \
        if not optional or "tenant" in raw else ""
    client_id = _get_str(raw, "client_id", where, _TOKEN_RE, "the application (client) id") \
        if not optional or "client_id" in raw else ""
    if credential in APP_CREDENTIALS and tenant.lower() in TENANT_ALIASES:
        raise where.error("tenant", f"must name a real tenant (GUID or domain), not {tenant!r}, for credential "
                                    f"{credential!r}: the client credentials grant has no user to pick a tenant "
                                    "(AADSTS9001023)")
    scopes = _get(raw, "scopes", list, where, "must be a list of scope strings", None)
    if scopes is None:
        raise where.error("scopes", "is missing (a list of at least one scope)")
    if not scopes or not all(isinstance(s, str) and _TOKEN_RE.fullmatch(s) for s in scopes):
        raise where.error("scopes", "must be a non-empty list of scopes, each a string without spaces")
    authority_value = _get(raw, "authority", str, where, "must be a string", None)
    try:
        authority = resolve_authority_url(authority_value, environ)
    except InvalidAuthority as exc:
        raise where.error(None, f"{exc.source} {exc}") from None
    ca_bundle = _get_path(raw, "ca_bundle", where, environ)
    token_file, token_command = _parse_federated(raw, credential, where, environ)
    managed_identity = None
    if credential == "managed_identity":
        managed_identity = _parse_managed_identity(raw, where, scopes, identity_environ)
    else:
        for key in _MANAGED_IDENTITY_KEYS:
            if key in raw:
                raise where.error(key, "is a setting of credential 'managed_identity' only")
    return Profile(
        name=name, tenant=tenant, client_id=client_id, scopes=tuple(scopes), authority=authority,
        credential=credential, min_valid=_get_int(raw, "min_valid", where, 0, MAX_MIN_VALID, 300),
        ca_bundle=ca_bundle, git_urls=_parse_git_urls(raw.get("git"), where), proxy=proxy,
        certificate=_parse_certificate(raw, credential, where, environ), token_file=token_file,
        token_command=token_command, managed_identity=managed_identity,
    )


def _parse_certificate(raw: Mapping[str, object], credential: str, where: _Where,
                       environ: Mapping[str, str]) -> CertificateSettings | None:
    """The certificate keys; an error when they are set for another credential kind. The file itself is checked
    (owner, mode, content) when it is read: see :func:`aadhelper.certificates.read_certificate_file`."""
    if credential != "certificate":
        stray = next((key for key in _CERTIFICATE_KEYS if key in raw), None)
        if stray is not None:
            raise where.error(stray, f"applies to credential 'certificate' only, not {credential!r}")
        return None
    path = _get_path(raw, "certificate_path", where, environ)
    alg = _get(raw, "assertion_alg", str, where, f"must be one of {', '.join(ASSERTION_ALGS)}", "PS256")
    if alg not in ASSERTION_ALGS:
        raise where.error("assertion_alg", f"must be one of {', '.join(ASSERTION_ALGS)}, not {_shown(alg)}")
    x5c = _get(raw, "x5c", bool, where, "must be true or false", False)
    return CertificateSettings(path, x5c, alg)


def _parse_federated(raw: Mapping[str, object], credential: str, where: _Where,
                     environ: Mapping[str, str]) -> tuple[str | None, tuple[str, ...] | None]:
    """A federated profile's assertion source: at most one of ``token_file`` (default
    ``$AZURE_FEDERATED_TOKEN_FILE``, resolved now: see the module docstring) and ``token_command``; neither (the
    variable unset) is an error of that profile's token requests, not of the whole file."""
    token_file = _get_path(raw, "token_file", where, environ)
    command = _get(raw, "token_command", list, where, "must be a list of strings: the program and its arguments",
                   None)
    if credential != "federated":
        for key, value in (("token_file", token_file), ("token_command", command)):
            if value is not None:
                raise where.error(key, f"is only for credential 'federated' (this profile's is {credential!r})")
        return None, None
    if token_file is not None and command is not None:
        raise where.error("token_file", "and key 'token_command' exclude each other: set one of them")
    if command is not None:
        # No shell: the list is the argv (a program found on the daemon's PATH, or an absolute path).
        if not command or not all(isinstance(arg, str) and arg and "\0" not in arg for arg in command):
            raise where.error("token_command", "must be a non-empty list of non-empty strings: the program and its "
                                               "arguments (no shell)")
        return None, tuple(command)
    if token_file is None:
        # azure-identity treats an empty variable as unset; so do we. Unset: the profile has no source, and its
        # token requests say so (grants/federated.py) while the file's other profiles keep working.
        token_file = environ.get(FEDERATED_TOKEN_FILE_VARIABLE) or None
        if token_file is not None and (not os.path.isabs(token_file) or "\0" in token_file):
            raise where.error(None, f"credential 'federated' without 'token_file' takes "
                                    f"{FEDERATED_TOKEN_FILE_VARIABLE}, which must be an absolute path, not "
                                    f"{_shown(token_file)}")
    return token_file, None


def _parse_git_urls(raw: object, where: _Where) -> tuple[GitUrl, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        raise where.error("git", "must be an array of tables ([[profiles.NAME.git]] with url = ...)")
    result: list[GitUrl] = []
    for number, item in enumerate(raw, 1):
        item_where = _Where(where.path, where.profile, f"git URL #{number}")
        _check_keys(item, _GIT_KEYS, item_where)
        url = _get(item, "url", str, item_where, "must be a string", None)
        if url is None:
            raise item_where.error("url", "is missing")
        try:
            normalised = normalize_git_url(url)
        except ValueError as exc:
            raise item_where.error("url", str(exc)) from None
        if any(g.url == normalised for g in result):
            raise item_where.error("url", f"repeats {_shown(normalised)}")
        username = _get(item, "username", str, item_where, "must be a string", None)
        if username is not None and not (username and username.isprintable() and len(username) <= 256):
            raise item_where.error("username", "must be a non-empty printable string")
        result.append(GitUrl(normalised, username))
    return tuple(result)


def _check_git_url_conflicts(profiles: Mapping[str, Profile], path: str) -> None:
    owner: dict[str, str] = {}
    for profile in profiles.values():
        for git_url in profile.git_urls:
            other = owner.setdefault(git_url.url, profile.name)
            if other != profile.name:
                raise _Where(path, profile.name, "git").error("url", f"{_shown(git_url.url)} is also mapped by profile "
                                                                     f"{other!r}; a URL can belong to one profile only")


#: The daemon's log levels, least to most verbose; and the variable that overrides ``[daemon] log_level``.
LOG_LEVELS = ("error", "warning", "info", "debug")
LOG_LEVEL_ENV = "AADHELPER_LOG_LEVEL"


def _log_level(daemon: Mapping[str, object], where: _Where, environ: Mapping[str, str]) -> str:
    choices = ", ".join(LOG_LEVELS)
    level: str = _get(daemon, "log_level", str, where, f"must be one of {choices}", "info")
    if level.lower() not in LOG_LEVELS:
        raise where.error("log_level", f"must be one of {choices}, not {_shown(level)}")
    value = environ.get(LOG_LEVEL_ENV, "").strip().lower()
    if value and value not in LOG_LEVELS:
        raise _Where(where.path).error(None, f"environment variable {LOG_LEVEL_ENV} must be one of {choices}, "
                                             f"not {_shown(value)}")
    return value or level.lower()


def _check_keys(table: Mapping[str, object], allowed: tuple[str, ...], where: _Where) -> None:
    unknown = [key for key in table if key not in allowed]
    if unknown:
        key = unknown[0]
        suggestion = did_you_mean(key, allowed) or f" (known keys: {', '.join(allowed)})"
        raise where.error(key, f"is not a known setting{suggestion}")


def _table(data: Mapping[str, object], key: str, where: _Where) -> dict[str, object]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise where.error(key, f"must be a table ([{key}])")
    return value


def _get(table: Mapping[str, object], key: str, kind: type[Any], where: _Where, problem: str, default: Any) -> Any:
    value = table.get(key)
    if value is None:
        return default
    # bool is an int subclass: `min_valid = true` must not pass as 1.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise where.error(key, problem)
    return value


def _get_int(table: Mapping[str, object], key: str, where: _Where, low: int, high: int, default: int) -> int:
    problem = f"must be an integer from {low} to {high}"
    value: int = _get(table, key, int, where, problem, default)
    if not low <= value <= high:
        raise where.error(key, problem)
    return value


def _get_str(table: Mapping[str, object], key: str, where: _Where, pattern: re.Pattern[str], what: str) -> str:
    value = _get(table, key, str, where, f"must be a string: {what}", None)
    if value is None:
        raise where.error(key, f"is missing ({what})")
    if not pattern.fullmatch(value):
        raise where.error(key, f"must be {what} without spaces, not {_shown(value)}")
    return str(value)


def _get_path(table: Mapping[str, object], key: str, where: _Where, environ: Mapping[str, str]) -> str | None:
    """An absolute file path (``~/`` expanded with ``$HOME``), or None when the key is absent."""
    path = _get(table, key, str, where, "must be a file path", None)
    if path is None:
        return None
    if path == "~" or path.startswith("~/"):
        path = environ.get("HOME", "~") + path[1:]
    if not os.path.isabs(path) or "\0" in path:
        raise where.error(key, "must be an absolute path (or start with ~/)")
    return str(path)


def _env_flag(environ: Mapping[str, str], name: str, where: _Where) -> bool:
    value = environ.get(name, "").strip().lower()
    if value in _TRUE or value in _FALSE:
        return value in _TRUE
    raise where.error(None, f"environment variable {name} must be 1 or 0, not {_shown(value)}")


def _shown(value: str, limit: int = 60) -> str:
    """A value from the file for a message: quoted, and cut short so that the message stays one readable line
    whatever the file holds."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 4]}...{text[-1]}"


def _check_file_owner(path: str, info: os.stat_result) -> None:
    # Whoever can write the file can point a profile's authority at their own host and collect its secret.
    if info.st_uid not in (os.getuid(), 0):
        raise ConfigError(f"{path}: the config file belongs to uid {info.st_uid}, not to you; refusing to use it",
                          hint="copy it to a file of your own or point AADHELPER_CONFIG elsewhere")
    if info.st_mode & stat.S_IWOTH:
        raise ConfigError(f"{path}: the config file is writable by everyone; refusing to use it",
                          hint=f"run `chmod o-w {path}`")


# -- credential "managed_identity" --------------------------------------------------------------------------------

#: Where a managed identity's tokens come from: the VM's instance metadata service, the App Service (Functions,
#: Container Apps) identity endpoint, or the Azure Arc agent (a challenge file).
MANAGED_IDENTITY_SOURCES = ("imds", "app_service", "arc")
#: The endpoints each source calls unless the profile's ``endpoint`` or the environment says otherwise.
IMDS_TOKEN_URL = "http://169.254.169.254/metadata/identity/oauth2/token"
ARC_TOKEN_URL = "http://localhost:40342/metadata/identity/oauth2/token"
#: The only directory an Arc challenge may point into (the agent's, on Linux; msal and azure-identity check it too).
ARC_KEY_DIR = "/var/opt/azcmagent/tokens"
#: The Arc agent's binary: msal takes Arc from its presence when the variables are not set (a systemd user unit
#: does not see the agent's system-wide environment).
_ARC_AGENT = "/opt/azcmagent/bin/himds"
#: How a user-assigned identity is named; at most one per profile (none: the system-assigned identity).
USER_ASSIGNED_KEYS = ("client_id", "object_id", "msi_res_id")
_URL_RE = re.compile(r"https?://[^\s/?#@]+(/[!-~]*)?")
_ARM_ID_RE = re.compile(r"/subscriptions/[!-~]{1,1500}", re.IGNORECASE)


@dataclass(frozen=True)
class ManagedIdentity:
    """Where a ``managed_identity`` profile gets its tokens, resolved when the config is read (in the daemon, from
    the environment the daemon was started with)."""

    source: str  # one of MANAGED_IDENTITY_SOURCES
    #: True when ``source`` was detected from the environment, False when the profile set it.
    detected: bool
    #: The token URL called (GET).
    endpoint: str
    #: ``client_id``, ``object_id`` or ``msi_res_id`` of a user-assigned identity, with its value; None: system.
    user_assigned: tuple[str, str] | None = None
    #: App Service's ``IDENTITY_HEADER``: the endpoint's secret (masked in every repr); None when not set.
    header: Secret | None = None
    #: The directory an Arc challenge file must be in.
    arc_key_dir: str = ARC_KEY_DIR

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, nothing secret: the header only says whether it is set."""
        data: dict[str, Any] = {"source": self.source, "detected": self.detected, "endpoint": self.endpoint,
                                "user_assigned": dict([self.user_assigned]) if self.user_assigned else None}
        if self.source == "app_service":
            data["identity_header"] = "set" if self.header else "missing"
        if self.source == "arc":
            data["arc_key_dir"] = self.arc_key_dir
        return data

    def to_wire(self) -> dict[str, Any]:
        """For the daemon -> fetcher link (private to the user's own processes): the header itself."""
        return {"source": self.source, "detected": self.detected, "endpoint": self.endpoint,
                "user_assigned": list(self.user_assigned) if self.user_assigned else None,
                "header": self.header.reveal() if self.header is not None else None, "arc_key_dir": self.arc_key_dir}

    @classmethod
    def from_wire(cls, wire: object) -> ManagedIdentity:
        """The inverse of :meth:`to_wire`; a malformed value is a ValueError."""
        if not isinstance(wire, dict):
            raise ValueError("malformed managed identity")
        source, endpoint, key_dir, header = (wire.get(k) for k in ("source", "endpoint", "arc_key_dir", "header"))
        user = wire.get("user_assigned")
        if (source not in MANAGED_IDENTITY_SOURCES or not isinstance(endpoint, str) or not isinstance(key_dir, str)
                or not isinstance(header, (str, type(None))) or not isinstance(wire.get("detected"), bool)
                or not (user is None or (isinstance(user, list) and len(user) == 2
                                         and all(isinstance(part, str) for part in user)))):
            raise ValueError("malformed managed identity")
        return cls(str(source), bool(wire["detected"]), endpoint, (user[0], user[1]) if user else None,
                   Secret(header) if header is not None else None, key_dir)


def describe_managed_identity(data: Mapping[str, Any]) -> str:
    """One line from :meth:`ManagedIdentity.as_dict` (``profile show``, and ``status`` from the daemon's reply): the
    source and how it was chosen, the identity, the endpoint, and what an App Service source is missing."""
    how = "detected from the environment" if data.get("detected") else "set in the profile"
    user = data.get("user_assigned")
    identity = "system-assigned identity" if not isinstance(user, dict) or not user else \
        "user-assigned identity " + " ".join(f"{key} {value}" for key, value in user.items())
    line = f"{data.get('source')} ({how}), {identity}, endpoint {data.get('endpoint') or '(none)'}"
    if data.get("identity_header") == "missing":
        line += ", IDENTITY_HEADER missing"
    return line


def detect_identity_source(environ: Mapping[str, str]) -> str:
    """The managed-identity source of an environment, as azure-identity and msal pick it: ``IDENTITY_ENDPOINT``
    with ``IDENTITY_HEADER`` is App Service, with ``IMDS_ENDPOINT`` (or the Arc agent installed) Azure Arc, else
    IMDS. An empty variable counts as unset (azure-identity's rule; msal differs, see PROTOCOLS.md)."""
    if environ.get("IDENTITY_ENDPOINT") and environ.get("IDENTITY_HEADER"):
        return "app_service"
    if (environ.get("IDENTITY_ENDPOINT") and environ.get("IMDS_ENDPOINT")) or os.path.exists(_ARC_AGENT):
        return "arc"
    return "imds"


def _parse_managed_identity(raw: Mapping[str, object], where: _Where, scopes: list[str],
                            identity_environ: Mapping[str, str] | None) -> ManagedIdentity:
    if len(scopes) != 1 or not scopes[0].endswith("/.default") or scopes[0] == "/.default":
        raise where.error("scopes", "must be exactly one scope of the form <resource>/.default for credential "
                                    "'managed_identity' (a managed identity gets tokens for one resource at a time)")
    if identity_environ is None:
        from .process_setup import start_identity_environment

        identity_environ = start_identity_environment()
    source = _get(raw, "source", str, where, f"must be one of {', '.join(MANAGED_IDENTITY_SOURCES)}", None)
    if source is not None and source not in MANAGED_IDENTITY_SOURCES:
        raise where.error("source", f"must be one of {', '.join(MANAGED_IDENTITY_SOURCES)}, not {_shown(source)}")
    detected = source is None
    source = source or detect_identity_source(identity_environ)
    endpoint = _get(raw, "endpoint", str, where, "must be a URL string", None)
    if endpoint is not None and not _URL_RE.fullmatch(endpoint):
        raise where.error("endpoint", f"must be an http:// or https:// URL without spaces, not {_shown(endpoint)}")
    if endpoint is None:
        # Checked by the token source when it is used: a bad variable must not stop the daemon reading its config.
        if source == "imds":
            host = identity_environ.get("AZURE_POD_IDENTITY_AUTHORITY_HOST", "").strip().rstrip("/")
            endpoint = host + "/metadata/identity/oauth2/token" if host else IMDS_TOKEN_URL
        else:
            endpoint = identity_environ.get("IDENTITY_ENDPOINT") or (ARC_TOKEN_URL if source == "arc" else "")
    named = [key for key in USER_ASSIGNED_KEYS if key in raw]
    if len(named) > 1:
        raise where.error(named[1], f"and key {named[0]!r} exclude each other: a profile uses one identity")
    user_assigned = None
    if named:
        key = named[0]
        pattern = _ARM_ID_RE if key == "msi_res_id" else _TOKEN_RE
        what = "an Azure resource id (/subscriptions/...)" if key == "msi_res_id" else "an id"
        user_assigned = (key, _get_str(raw, key, where, pattern, what))
    key_dir = _get(raw, "arc_key_dir", str, where, "must be a directory path", ARC_KEY_DIR)
    if not os.path.isabs(key_dir) or "\0" in key_dir:
        raise where.error("arc_key_dir", "must be an absolute path")
    header = identity_environ.get("IDENTITY_HEADER") if source == "app_service" else None
    return ManagedIdentity(source, detected, endpoint, user_assigned, Secret(header) if header else None,
                           os.path.normpath(key_dir))
