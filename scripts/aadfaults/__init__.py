"""``scripts/faults``: the fault-injection suite of issue 9 §3, printed as one table.

The cases and what each column measures live in :mod:`aadhelper.testing.fault_suite` (shared with
``tests/test_fault_suite.py``, which asserts the same cases); this package only runs them and prints the table.
"""
