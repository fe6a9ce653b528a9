"""The fault-injection suite of issue 9 §3: each case attacks a real daemon process and measures what users see.

One table of cases (:func:`all_cases`; a module per family of faults), run by ``scripts/faults`` (which prints
the figures) and by ``tests/test_fault_suite.py`` (which asserts them: :meth:`Result.problems`). A case
measures, over a window of a client asking every ``measure.POLL`` seconds:

* **daemon alive** at the end (it answers a ping);
* **other clients served**: a healthy profile of the same daemon asked alongside; answered within
  ``measure.PROMPT`` seconds;
* **cached token served**: every request made while the token fetched before the fault still had the
  profile's minimum validity got a token;
* **authority requests** the faulted app sent in the window, counted by the simulated authority itself (by the
  daemon's ``status`` when no request can reach the authority: connection refused, a TLS failure), against
  the bound of one request per backoff step (1 s doubling to 5 min, each step at least half its nominal size);
* **anything lost**: a cached token, a stored secret, a sign-in (refresh token) or a configuration the daemon
  had before the fault and no longer has after it (losses the design accepts are shown apart);
* the **one line** the CLI printed for a client without a token, and its exit code: never a traceback.

How the authority faults reach a refresh: the authority issues tokens of ``authority_cases.LIFETIME`` s and
the profile's ``min_valid`` is ``authority_cases.MIN_VALID`` s, so the daemon refreshes about 30 s after the
first token (the spacing floor of :mod:`aadhelper.refresh_policy`) and that refresh meets the fault while the old
token is still servable: the case sees the cached token served while it has its minimum validity left, then the
error line, then the backoff. Every authority case has an authority of its own and they all run at once against
one shared daemon; config and process faults get a daemon each; the keyring lock and stop cases touch the
keyring every case shares, so they run alone while the authority cases wait for their refresh
(:func:`run.run_cases`); the D-Bus gone case brings a bus and keyring of its own.
"""

from .base import Case, Shared
from .measure import KnownDefect, Result, Timing, backoff_bound
from .run import COLUMNS, all_cases, row, run_cases, table

__all__ = ["COLUMNS", "Case", "KnownDefect", "Result", "Shared", "Timing", "all_cases", "backoff_bound", "row",
           "run_cases", "table"]
