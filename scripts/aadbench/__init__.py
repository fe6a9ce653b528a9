"""aadbench: the measurements behind ``scripts/bench``, each next to a baseline taken in the same run.

=====  ==========================================================  ===========================================
row    what                                                        baseline / target
=====  ==========================================================  ===========================================
1      one ``aadhelper header`` process against a warm daemon      ``<venv python> -c pass``; ratio <= 2.0
2      ``git credential fill`` via git-credential-aadhelper        same git, helper ``python -c`` printing a
                                                                   fixed answer; ratio <= 1.5
3      daemon req/s and p50/p99, cached token, 1/10/100 clients    a bare trio server; >= 0.8 of its req/s
4      500 concurrent requests for a cold profile                  exactly 1 authority request
5      refresh soak (40 s tokens, 5 s minimum validity, 150 s)     0 short replies; p99 during refresh <= 1.5x
6      daemon RSS after 50 profiles; idle CPU over 10 s            <= 60 MB; ~0
7      daemon start to first token                                 ``python -c "import trio, httpx, keyring"``;
                                                                   ratio <= 1.5
8      one ``aadhelper kubectl-credential`` process, warm daemon    ``<venv python> -c pass``; ratio <= 1.3
9      ``ManagedIdentityCredential().get_token`` through ``aadhelper  the same call against a bare ``http.server``
       exec`` (a new credential object per call)                   returning a fixed token; ratio <= 1.5
10     ``az account get-access-token`` through the az shim          ``<venv python> -c pass``; ratio <= 1.3
=====  ==========================================================  ===========================================

Modules: :mod:`.world` (temporary home, simulated authorities, profiles, daemon processes), :mod:`.timing`
(statistics, process timing, the :class:`~.timing.Row`), :mod:`.loadgen` (``loadgen.c`` or
:mod:`.pyloadgen`), :mod:`.trio_baseline`, one ``rows_*`` module per group of rows, :mod:`.report`.
"""
