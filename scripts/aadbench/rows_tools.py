"""Rows 8 and 10: what the kubectl plugin and the az shim cost per call against a warm daemon, next to a bare
interpreter (issue 13 §4).

Row 8 runs ``aadhelper kubectl-credential PROFILE`` with ``KUBERNETES_EXEC_INFO`` as kubectl sets it (v1); row 10
runs the ``az`` shim (``aadhelper az install-shim``'s shell script) with azure-identity's command line. Both
against ``<venv python> -c pass``.
"""

from __future__ import annotations

import json

from aadhelper.cli.az import write_az_shim
from aadhelper.cli.kube_exec import API_V1, EXEC_INFO_ENV

from .plan import MAIN, Bench, Plan
from .rows_client import PYTHON
from .rows_client import _compare as compare  # one home for timing a pair of processes
from .timing import Command, Row
from .world import AADHELPER, SCOPE

KUBECTL_TARGET = 1.3
AZ_TARGET = 1.3
EXEC_INFO = json.dumps({"kind": "ExecCredential", "apiVersion": API_V1, "spec": {"interactive": False}})


def kubectl_spec(plan: Plan) -> Row:
    return Row(8, "kubectl-credential", "`aadhelper kubectl-credential` process (kubectl's exec plugin), warm daemon",
               f"ratio <= {KUBECTL_TARGET}", unit="ms")


def kubectl_row(bench: Bench, row: Row) -> None:
    env = dict(bench.world.env, **{EXEC_INFO_ENV: EXEC_INFO})
    subject = Command([AADHELPER, "kubectl-credential", MAIN], env, expect=b'"kind":"ExecCredential"')
    baseline = Command([PYTHON, "-c", "pass"], env)
    compare(row, subject, baseline, bench.plan.header_runs, "python -c pass", KUBECTL_TARGET)


def az_spec(plan: Plan) -> Row:
    return Row(10, "az-shim", "`az account get-access-token` through the az shim, warm daemon",
               f"ratio <= {AZ_TARGET}", unit="ms")


def az_row(bench: Bench, row: Row) -> None:
    shim = write_az_shim(str(bench.world.file("az-shim")), MAIN)
    env = bench.world.env
    subject = Command([shim, "account", "get-access-token", "--output", "json", "--resource",
                       SCOPE.removesuffix("/.default")], env, expect=b'"accessToken"')
    baseline = Command([PYTHON, "-c", "pass"], env)
    compare(row, subject, baseline, bench.plan.header_runs, "python -c pass", AZ_TARGET)
