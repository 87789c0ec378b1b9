"""Daemon entry: ``python -m trainfleet.supervise --job JOB_ID`` supervises one pending job to its end.

``--resume-attempt N`` starts at attempt N (``trainfleet resume`` prepares the job first).

Started by ``trainfleet run --detach`` in its own session; SIGTERM/SIGINT/SIGHUP cancel the job cleanly.
Exit status: 0 when the job succeeded, 1 otherwise, 2 when the job cannot be supervised.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Supervise the job named by ``--job``; see module doc for exit statuses."""
    ap = argparse.ArgumentParser(prog="python -m trainfleet.supervise")
    ap.add_argument("--job", required=True, help="id of a pending job in the store")
    ap.add_argument("--resume-attempt", type=int, default=0, help="first attempt number (after a resume)")
    args = ap.parse_args(argv)

    from trainfleet import service
    from trainfleet.errors import TrainfleetError
    from trainfleet.spec import JobState
    from trainfleet.store import open_store

    try:
        with open_store() as store:
            record = store.get_job(args.job)
            if record.state is not JobState.PENDING:
                print(f"trainfleet supervisor: job {record.id} is {record.state}, not pending",
                      file=sys.stderr)
                return 2
            state = service.supervise(record.id, store, first_attempt=args.resume_attempt)
    except TrainfleetError as exc:
        print(f"trainfleet supervisor: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"trainfleet supervisor: job {args.job} {state}", file=sys.stderr)
    return 0 if state is JobState.SUCCEEDED else 1


if __name__ == "__main__":
    sys.exit(main())
