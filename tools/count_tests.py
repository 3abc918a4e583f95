#!/usr/bin/env python3
"""Counts test cases from a `bazel test --test_summary=short` log.

For each test target Bazel reports, reads its JUnit XML (bazel-testlogs/...)
and counts the gtest cases in it; a target that failed to build, timed out
or left no XML counts as one failed test. Prints one line per failing target
and returns the totals. Also counts `FUZZ <target> PASS|FAIL` lines that
tools/fuzz.sh prints and `LIBVIRT <test> PASS|FAIL` lines of the scripted
libvirt test (its SKIPPED lines count as neither).
"""
import os
import re
import sys
import xml.etree.ElementTree as ET

STATUS = re.compile(r"^(//\S+)\s+(?:\(cached\)\s+)?(PASSED|FAILED|FLAKY|TIMEOUT|NO STATUS|FAILED TO BUILD|SKIPPED)")
FUZZ = re.compile(r"^FUZZ (\S+) (PASS|FAIL)")
# Scripted tests outside Bazel (tests/libvirt/): PASS or FAIL count;
# SKIPPED lines say why and count as neither.
SCRIPT = re.compile(r"^LIBVIRT (\S+) (PASS|FAIL)")


def xml_counts(target):
    pkg, name = target[2:].split(":")
    path = os.path.join("bazel-testlogs", pkg, name, "test.xml")
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    cases = root.iter("testcase")
    passed = failed = 0
    for case in cases:
        if case.get("status") == "notrun" or case.get("result") == "skipped":
            continue
        if case.find("failure") is not None or case.find("error") is not None:
            failed += 1
        else:
            passed += 1
    if passed + failed == 0:
        return None
    return passed, failed


def main(log_path):
    passed = failed = 0
    seen = set()
    with open(log_path, errors="replace") as f:
        lines = f.read().splitlines()
    for line in lines:
        m = STATUS.match(line)
        if m and m.group(1) not in seen:
            target, status = m.group(1), m.group(2)
            seen.add(target)
            counts = xml_counts(target) if status in ("PASSED", "FAILED", "FLAKY") else None
            if counts is None:
                ok = status in ("PASSED", "FLAKY")
                counts = (1, 0) if ok else (0, 1)
            if status not in ("PASSED", "FLAKY") and counts[1] == 0:
                counts = (counts[0], 1)
            passed += counts[0]
            failed += counts[1]
            if counts[1]:
                print(f"failed: {target} ({status}, {counts[1]} failing)")
            continue
        m = FUZZ.match(line)
        if m:
            if m.group(2) == "PASS":
                passed += 1
            else:
                failed += 1
                print(f"failed: fuzz target {m.group(1)}")
            continue
        m = SCRIPT.match(line)
        if m:
            if m.group(2) == "PASS":
                passed += 1
            else:
                failed += 1
                print(f"failed: scripted test {m.group(1)}")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
