"""Compliance export: ``python -m kubepim.export --since 2026-11-01 --until 2026-12-01``.

Prints, as CSV (default) or JSON, every grant whose access overlapped the range: who held which
role where and when, who approved it and why, read from the cluster's AccessRequests. With
``--reviews``: every subject of every access review run started in the range, with its use,
each reviewer's decision and the outcome (docs/reviews.md).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from kubepim.api.accessreview import EligibilityReviewRun
from kubepim.api.request import AccessRequest
from kubepim.domain.report import COLUMNS, REVIEW_COLUMNS, grants, review_rows, spreadsheet_safe
from kubepim.k8s.client import Kube


def _moment(text: str) -> datetime.datetime:
    try:
        value = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a date or time like 2026-11-01 or 2026-11-01T08:00:00Z") from error
    return value if value.tzinfo else value.replace(tzinfo=datetime.UTC)


def main(argv: list[str] | None = None) -> int:
    """Print the report; exit 2 on bad arguments."""
    parser = argparse.ArgumentParser(prog="python -m kubepim.export", description=__doc__)
    now = datetime.datetime.now(datetime.UTC)
    parser.add_argument("--since", type=_moment, default=now - datetime.timedelta(days=30),
                        help="start of the range (default: 30 days ago)")
    parser.add_argument("--until", type=_moment, default=now, help="end (default: now)")
    parser.add_argument("--format", choices=("csv", "json"), default="csv")
    parser.add_argument("--reviews", action="store_true",
                        help="export access review runs (EligibilityReviewRuns) instead")
    parser.add_argument("--kubeconfig", type=Path, default=None,
                        help="kubeconfig (default: $KUBECONFIG, ~/.kube/config or in-cluster)")
    args = parser.parse_args(argv)
    if args.since >= args.until:
        parser.error("--since must be before --until")

    if args.reviews:
        runs = {}
        for item in asyncio.run(_list(args.kubeconfig, "eligibilityreviewruns")):
            try:
                runs[item["metadata"]["name"]] = EligibilityReviewRun.model_validate(item)
            except ValidationError:
                print(f"skipped malformed EligibilityReviewRun {item['metadata']['name']}",
                      file=sys.stderr)
        _write(review_rows(runs, args.since, args.until), REVIEW_COLUMNS, args.format)
        return 0
    requests = {}
    for item in asyncio.run(_list(args.kubeconfig, "accessrequests")):
        try:
            requests[item["metadata"]["name"]] = AccessRequest.model_validate(item)
        except ValidationError:
            print(f"skipped malformed AccessRequest {item['metadata']['name']}", file=sys.stderr)
    _write([r.as_dict() for r in grants(requests, args.since, args.until, now)], COLUMNS,
           args.format)
    return 0


def _write(rows: list[dict[str, object]], columns: tuple[str, ...], form: str) -> None:
    if form == "json":
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        writer = csv.DictWriter(sys.stdout, fieldnames=columns)
        writer.writeheader()
        writer.writerows(spreadsheet_safe(row) for row in rows)


async def _list(kubeconfig: Path | None, plural: str) -> list[dict[str, Any]]:
    kube = Kube.connect(kubeconfig)
    try:
        return await kube.list_custom(plural)
    finally:
        await kube.close()


if __name__ == "__main__":
    sys.exit(main())
