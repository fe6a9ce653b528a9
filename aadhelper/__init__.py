"""aadhelper: a credential helper for Microsoft Entra ID.

A per-user daemon keeps long-lived secrets in the OS keyring and access tokens in memory, refreshes them
before they expire, and answers thin clients (``aadhelper header``, the git credential helper) over a
Unix socket. See docs/architecture.md for the architecture; this package's modules each hold one responsibility.
"""

__version__ = "0.1.0"
