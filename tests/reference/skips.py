"""How the Python tests report what they could not run, as tests/test_util.h does for the C ones.

tests/CMakeLists.txt gives every test SKIP_RETURN_CODE 77, so a script that exits with SKIP is
reported by ctest as skipped, not passed. A missing dependency (npm packages, shared test data)
is a skip on a developer's machine and a failure under continuous integration (CI set to anything
but "", "0" or "false"), where everything must be installed; a check the machine itself cannot
run (a CPU without an instruction set) is a skip everywhere.
"""

from __future__ import annotations

import os

SKIP = 77


def ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false")


def missing(what: str, how: str) -> int:
    """Reports a missing dependency; returns the exit status for it (SKIP, or 1 under CI)."""
    if ci():
        print(f"FAIL (CI is set, so a missing dependency fails): {what} not found; {how}")
        return 1
    print(f"SKIP: {what} not found; {how}")
    return SKIP


def unsupported(reason: str) -> int:
    """Reports checks this machine cannot run; returns SKIP."""
    print(f"SKIP: {reason}")
    return SKIP
