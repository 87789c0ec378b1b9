"""``trainfleet resume JOB``: continue a job whose supervisor died (or that failed) from its checkpoint."""

from __future__ import annotations

import sys

import typer

from trainfleet.cli import app


@app.command("resume")
def resume_cmd(
    job: str = typer.Argument(..., metavar="JOB", help="Job id or a unique prefix (>= 4 chars)."),
) -> None:
    """Close the attempt a dead supervisor left open, then run the next attempt under a new supervisor.

    The next attempt resumes from the job's latest complete checkpoint (the training script chooses it).
    """
    from trainfleet import service
    from trainfleet.store import open_store

    with open_store() as store:
        job_id = store.get_job(job).id
        attempt = service.resume(job_id, store)
    print(f"job {job_id}: attempt {attempt} starting under a new supervisor; "
          f"follow it with: trainfleet logs {job_id} --follow", file=sys.stderr)
    typer.echo(job_id)
