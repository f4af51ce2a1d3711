#!/bin/sh
# Runs a Node test script (ctest's command for tests/node/*.mjs): without node, the test is
# skipped (exit 77), or fails when CI is set (tests/reference/skips.py's rule).
if command -v node >/dev/null 2>&1; then exec node "$@"; fi
case "$(printf %s "${CI:-}" | tr A-Z a-z)" in
  "" | 0 | false) echo "SKIP: node not found; scripts/deps.sh --test installs it"; exit 77 ;;
  *) echo "FAIL (CI is set, so a missing dependency fails): node not found"; exit 1 ;;
esac
