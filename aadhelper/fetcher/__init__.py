"""The daemon's token fetcher: everything a fresh token costs (the keyring read, the authority's HTTPS exchange,
refresh-token rotation), behind one small interface the token cache uses.

Why a separate piece: the daemon answers requests on one trio thread, and a refresh done on that thread stalls
it for milliseconds at a time (the keyring read holds the GIL in a worker thread, TLS handshakes and building the
HTTP request run on the loop). So the fetcher runs in a child process at idle CPU priority, and the serving loop
only sends one line and reads one back (scripts/bench, row 5).

=====================  ================================================================================
module                 responsibility
=====================  ================================================================================
:mod:`.local`          the :class:`Fetcher` interface; :class:`LocalFetcher`, the work in this process
                       (what the child runs; the demo and in-process tests use it directly)
:mod:`.wire`           the channel between daemon and child, declared once: ops, fields, codecs, framing,
                       the build check
:mod:`.parent`         the daemon's side: :class:`ProcessFetcher` forks the child, sends fetches, matches
                       replies, starts a new child after a crash (and refuses one of another build)
:mod:`.child`          the child's side: its life and its dispatch
=====================  ================================================================================

How the daemon starts (logging, preload, gc.freeze, fork, trio) is one function:
:func:`aadhelper.daemon_start.run_daemon`.
"""

from __future__ import annotations

from .local import AsyncSecrets, Fetcher, LocalFetcher, SignInStates

__all__ = ["AsyncSecrets", "Fetcher", "LocalFetcher", "SignInStates"]
