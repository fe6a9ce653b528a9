"""Entra ID's error replies: the AADSTS codes the simulator answers with, and the exact JSON body around them.

An :class:`EntraError` raised anywhere in request handling becomes, through :meth:`Trace.body`, the body Entra
sends: ``error``, ``error_description`` ("AADSTS<n>: <text>\\r\\nTrace ID: ...\\r\\nCorrelation ID: ...\\r\\n
Timestamp: ..."), ``error_codes``, ``timestamp``, ``trace_id``, ``correlation_id``, ``error_uri`` and, for a
Conditional Access challenge, ``claims``. Entra answers ``invalid_client`` with HTTP 401 and other errors with 400.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

# AADSTS code -> (OAuth error, description template). Wording follows what Entra sends; codes marked "sim" are the
# simulator's choice where Entra has no documented answer (Entra never sends slow_down; 50196 is its "request loop").
CATALOGUE: Mapping[int, tuple[str, str]] = {
    900144: ("invalid_request", "The request body must contain the following parameter: '{name}'."),
    900561: ("invalid_request", "The endpoint only accepts {allowed} requests. Received a {method} request."),
    9002313: ("invalid_request", "Invalid request. Request is malformed or invalid. {detail}"),
    90002: ("invalid_request", "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and "
            "are signing into the correct cloud. Check with your subscription administrator, this may happen if "
            "there are no active subscriptions for the tenant."),
    9001023: ("invalid_request", "The grant type is not supported over the /common or /consumers endpoints. "
              "Please use the /organizations or tenant-specific endpoint."),
    70003: ("unsupported_grant_type", "The app requested an unsupported grant type '{grant_type}'."),
    700016: ("unauthorized_client", "Application with identifier '{client_id}' was not found in the directory "
             "'{tenant}'. This can happen if the application has not been installed by the administrator of the "
             "tenant or consented to by any user in the tenant. You may have sent your authentication request to "
             "the wrong tenant."),
    7000215: ("invalid_client", "Invalid client secret provided. Ensure the secret being sent in the request is the "
              "client secret value, not the client secret ID, for a secret added to app '{client_id}'."),
    7000222: ("invalid_client", "The provided client secret keys for app '{client_id}' are expired. Visit the Azure "
              "portal to create new keys for your app: https://aka.ms/NewClientSecret, or consider using "
              "certificate credentials for added security: https://aka.ms/certCreds."),
    7000218: ("invalid_client", "The request body must contain the following parameter: 'client_assertion' or "
              "'client_secret'."),
    700025: ("invalid_client", "Client is public so neither 'client_assertion' nor 'client_secret' should be "
             "presented."),
    700027: ("invalid_client", "Client assertion failed signature validation. [Reason - {reason}]"),
    700021: ("invalid_client", "Client assertion application identifier doesn't match 'client_id' parameter. Review "
             "the documentation at https://learn.microsoft.com/entra/identity-platform/certificate-credentials ."),
    700024: ("invalid_client", "Client assertion is not within its valid time range. Current time: {now}, assertion "
             "valid from {nbf}, expiry time of assertion {exp}. Review the documentation at "
             "https://learn.microsoft.com/entra/identity-platform/certificate-credentials ."),
    50013: ("invalid_client", "Assertion is invalid. {reason}"),
    50027: ("invalid_request", "JWT token is invalid or malformed."),
    70011: ("invalid_scope", "The provided value for the input parameter 'scope' is not valid. The scope '{scope}' "
            "is not valid."),
    1002012: ("invalid_scope", "The provided value for scope {scope} is not valid. Client credential flows must have "
              "a scope value with /.default suffixed to the resource identifier (application ID URI)."),
    700022: ("invalid_scope", "The provided value for the input parameter scope is not valid because it contains "
             "more than one resource. Scope {scope} is not valid."),
    500011: ("invalid_resource", "The resource principal named {resource} was not found in the tenant named "
             "{tenant}. This can happen if the application has not been installed by the administrator of the "
             "tenant or consented to by any user in the tenant. You might have sent your authentication request "
             "to the wrong tenant."),
    65001: ("interaction_required", "The user or administrator has not consented to use the application with ID "
            "'{client_id}'. Send an interactive authorization request for this user and resource."),
    65004: ("access_denied", "User declined to consent to access the app."),
    # Workload identity federation (testing/federation.py).
    70021: ("invalid_request", "No matching federated identity record found for presented assertion. Assertion "
            "Issuer: '{issuer}'. Assertion Subject: '{subject}'. Assertion Audience: '{audience}'."),
    700213: ("invalid_client", "No matching federated identity record found for presented assertion subject "
             "'{subject}'. Check your federated identity credential Subject, Audience and Issuer against the "
             "presented assertion."),
    700212: ("invalid_client", "No matching federated identity record found for presented assertion audience "
             "'{audience}'. Check your federated identity credential Subject, Audience and Issuer against the "
             "presented assertion."),
    50166: ("invalid_client", "Request to External OIDC endpoint failed. Issuer: '{issuer}'."),
    70000: ("invalid_grant", "The provided value for the '{param}' parameter is not valid."),
    70008: ("invalid_grant", "The provided authorization code or refresh token has expired due to inactivity. Send "
            "a new interactive authorization request for this user and resource."),
    700082: ("invalid_grant", "The refresh token has expired due to inactivity. The token was issued on {issued} "
             "and was inactive for {inactive}."),
    50173: ("invalid_grant", "The provided grant has expired due to it being revoked, a fresh auth token is needed. "
            "{reason} The grant was issued on '{issued}'."),
    54005: ("invalid_grant", "OAuth2 Authorization code was already redeemed, please retry with a new valid code or "
            "use an existing refresh token."),
    500112: ("invalid_grant", "The reply address '{got}' does not match the reply address '{expected}' provided "
             "when requesting Authorization code."),
    501481: ("invalid_grant", "The Code_Verifier does not match the code_challenge supplied in the authorization "
             "request."),
    50011: ("invalid_request", "The redirect URI '{redirect_uri}' specified in the request does not match the "
            "redirect URIs configured for the application '{client_id}'. Make sure the redirect URI sent in the "
            "request matches one added to your application in the Azure portal. Navigate to "
            "https://aka.ms/redirectUriMismatchError to learn more about how to fix this."),
    50149: ("invalid_request", "Invalid Code_Challenge_method parameter."),
    70005: ("unsupported_response_type", "response_type '{response_type}' is not enabled for the application."),
    70016: ("authorization_pending", "OAuth 2.0 device flow error. Authorization is pending. Continue polling."),
    50196: ("slow_down", "The device code was polled too soon; wait {interval} s between polls."),  # sim
    70018: ("bad_verification_code", "The provided value for the input parameter 'device_code' is not valid."),
    70019: ("expired_token", "Verification code expired. Have the user retry the sign-in."),
    90055: ("temporarily_unavailable", "There are too many incoming requests. Retry after {retry_after} seconds."),
    90033: ("temporarily_unavailable", "A transient error has occurred. Please try again."),
}


class EntraError(Exception):
    """An error reply of the authority; raised by request handlers and rendered by :meth:`Trace.body`."""

    def __init__(self, error: str, aadsts: int, description: str, *, status: int | None = None,
                 claims: str | None = None, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(f"{error} AADSTS{aadsts}")
        self.error = error
        self.aadsts = aadsts
        self.description = description
        self.status = status if status is not None else (401 if error == "invalid_client" else 400)
        self.claims = claims
        self.headers = dict(headers or {})


def entra_error(aadsts: int, *, error: str | None = None, status: int | None = None,
                headers: Mapping[str, str] | None = None, **fields: object) -> EntraError:
    """The catalogued error ``aadsts`` (its OAuth ``error`` overridden when given), described from ``fields``."""
    catalogued, template = CATALOGUE[aadsts]
    return EntraError(error or catalogued, aadsts, template.format(**fields).strip(), status=status,
                      headers=headers)


def timestamp(now: float) -> str:
    """Entra's timestamp format, ``2024-05-01 12:00:00Z``."""
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(now))


_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


@dataclass(frozen=True)
class Trace:
    """The identifiers Entra stamps on one request's reply; the correlation id echoes ``client-request-id``."""

    trace_id: str
    correlation_id: str
    now: float

    @classmethod
    def new(cls, now: float, client_request_id: str | None) -> Trace:
        echoed = client_request_id if client_request_id and _GUID.fullmatch(client_request_id) else None
        return cls(str(uuid.uuid4()), echoed or str(uuid.uuid4()), now)

    def describe(self, exc: EntraError) -> str:
        """The ``error_description`` text, with the trace lines Entra appends."""
        return (f"AADSTS{exc.aadsts}: {exc.description}\r\nTrace ID: {self.trace_id}\r\n"
                f"Correlation ID: {self.correlation_id}\r\nTimestamp: {timestamp(self.now)}")

    def body(self, exc: EntraError) -> dict[str, object]:
        """The JSON error body."""
        body: dict[str, object] = {
            "error": exc.error,
            "error_description": self.describe(exc),
            "error_codes": [exc.aadsts],
            "timestamp": timestamp(self.now),
            "trace_id": self.trace_id,
            "correlation_id": self.correlation_id,
            "error_uri": f"https://login.microsoftonline.com/error?code={exc.aadsts}",
        }
        if exc.claims is not None:
            body["claims"] = exc.claims
        return body

    def headers(self) -> dict[str, str]:
        """Response headers Entra sends on every reply."""
        return {"x-ms-request-id": self.trace_id, "client-request-id": self.correlation_id,
                "Cache-Control": "no-store, no-cache", "Pragma": "no-cache"}
