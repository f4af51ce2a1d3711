"""PASS / FAIL bookkeeping shared by the reference tests that check many cases in one run."""


class Results:
    """Counts checks; prints `PASS text` (when verbose) or `FAIL text` for each."""

    def __init__(self, verbose: bool = True):
        self.passed = self.failed = 0
        self.verbose = verbose

    def check(self, ok, text: str) -> bool:
        ok = bool(ok)
        self.passed += ok
        self.failed += not ok
        if not ok or self.verbose:
            print(("PASS " if ok else "FAIL ") + text, flush=True)
        return ok
