#!/usr/bin/python3
"""Adds up the gtest XML reports Bazel left under bazel-testlogs and prints one closing line:
'<label>: N passed, N failed, N skipped'. Exit status 1 if any test case failed or errored.

With a third argument, the output of the `bazel test` run: a target Bazel reports FAILED, TIMEOUT
or NO STATUS whose report shows no failed case (all its cases passed, then it exited non-zero: a
LeakSanitizer report, a crash at exit) counts as one failure more, named after the target."""

import pathlib
import re
import sys
import xml.etree.ElementTree as ElementTree

TARGET_VERDICT = re.compile(r"^(//\S+)\s+(FAILED|TIMEOUT|NO STATUS)\b")


def target_report(root: pathlib.Path, target: str) -> pathlib.Path:
    """//a/b:c -> <testlogs>/a/b/c/test.xml"""
    package, _, name = target[2:].partition(":")
    return root / package / name / "test.xml"


def main() -> int:
    label = sys.argv[1] if len(sys.argv) > 1 else "tests"
    root = pathlib.Path(sys.argv[2] if len(sys.argv) > 2 else "bazel-testlogs")
    passed = failed = skipped = 0
    failed_names = []
    skipped_names = []
    for report in sorted(root.rglob("test.xml")):
        try:
            tree = ElementTree.parse(report)
        except ElementTree.ParseError:
            failed += 1
            failed_names.append(f"{report.parent.name} (unreadable report)")
            continue
        for case in tree.iter("testcase"):
            name = f"{case.get('classname')}.{case.get('name')}"
            if case.find("failure") is not None or case.find("error") is not None:
                failed += 1
                failed_names.append(name)
            elif case.find("skipped") is not None or case.get("result") == "skipped" or case.get("status") == "notrun":
                skipped += 1
                message = case.find("skipped")
                reason = message.get("message", "") if message is not None else ""
                skipped_names.append(f"{name}: {' '.join(reason.split())}")
            else:
                passed += 1
    if len(sys.argv) > 3:
        for line in pathlib.Path(sys.argv[3]).read_text(errors="replace").splitlines():
            verdict = TARGET_VERDICT.match(line)
            if not verdict:
                continue
            target, outcome = verdict.groups()
            report = target_report(root, target)
            cases_failed = False
            if report.exists():
                try:
                    tree = ElementTree.parse(report)
                    cases_failed = any(c.find("failure") is not None or c.find("error") is not None
                                       for c in tree.iter("testcase"))
                except ElementTree.ParseError:
                    cases_failed = True  # counted above as an unreadable report
            if not cases_failed:
                failed += 1
                failed_names.append(f"{target} ({outcome} after its cases: see its test.log)")
    for name in skipped_names:
        print(f"  skipped {name}")
    for name in failed_names:
        print(f"  FAILED {name}")
    print(f"{label}: {passed} passed, {failed} failed, {skipped} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
