"""Run the ONNX node tests for some ops (or all supported) and print pass/fail with reasons.

    python tools/node_report.py [OP ...] [--all-failures]
"""
import os
import sys
import traceback

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from node_exclusions import EXCLUDED  # noqa: E402
from node_suite import run_case, selected_cases  # noqa: E402


def main(argv):
    ops = {a for a in argv if not a.startswith("-")} or None
    cases = selected_cases(ops)
    passed = failed = excluded = 0
    for c in cases:
        if c.name in EXCLUDED:
            excluded += 1
            print(f"EXCL {c.name}: {EXCLUDED[c.name]}")
            continue
        try:
            run_case(c)
            passed += 1
        except Exception as e:  # report every failure, keep going
            failed += 1
            msg = str(e).strip().splitlines()
            print(f"FAIL {c.name}: {type(e).__name__}: {' | '.join(msg[:6])[:600]}")
            if "--tb" in argv:
                traceback.print_exc()
    total = len(cases)
    print(f"node tests: {passed} passed / {total} selected ({100 * passed / max(total, 1):.1f}%), "
          f"{failed} failed, {excluded} excluded")


if __name__ == "__main__":
    main(sys.argv[1:])
