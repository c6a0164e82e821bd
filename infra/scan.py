"""Scan infra/ with checkov (run by `make infra-scan` from the checkov venv): fail on any failed check or any
template checkov could not parse (checkov itself exits 0 then), and list every skip with its reason.

--skip-download keeps checkov from calling its vendor's API (no network here, and none needed).
"""

import json
import subprocess
import sys
from pathlib import Path

INFRA = Path(__file__).resolve().parent


def main() -> int:
    command = [
        sys.executable,
        "-m",
        "checkov.main",
        "--directory",
        str(INFRA),
        "--framework",
        "bicep",
        "--skip-download",
        "--output",
        "json",
    ]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    try:
        report = json.loads(completed.stdout)
    except json.JSONDecodeError:
        print(completed.stdout[-2000:], completed.stderr[-2000:], sep="\n", file=sys.stderr)
        return 1
    reports = report if isinstance(report, list) else [report]
    results = [r["results"] for r in reports if "results" in r]
    failed = [check for r in results for check in r.get("failed_checks", [])]
    skipped = [check for r in results for check in r.get("skipped_checks", [])]
    passed = sum(len(r.get("passed_checks", [])) for r in results)
    unparsed = [error for r in results for error in r.get("parsing_errors", [])]
    for check in failed:
        print(f"FAILED {check['check_id']} {check['resource']} ({check['file_path']}): {check['check_name']}")
    for check in skipped:
        print(f"skipped {check['check_id']} {check['resource']}: {check['check_result'].get('suppress_comment')}")
    for error in unparsed:
        print(f"NOT PARSED {error}")
    print(
        f"checkov on infra/: {passed} passed, {len(failed)} failed, {len(skipped)} skipped, {len(unparsed)} not parsed"
    )
    return 1 if failed or unparsed else 0


if __name__ == "__main__":
    sys.exit(main())
