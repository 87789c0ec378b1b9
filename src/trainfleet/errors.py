"""The one exception tree of trainfleet.

    TrainfleetError                 base: everything trainfleet raises on purpose
    ├── UsageError                  bad command-line use (exit code 2)
    ├── InputError                  a file or value the user gave cannot be used (exit code 2)
    │   ├── SpecError               a job spec failed validation; carries the field path
    │   └── UnreadableInput         a path that cannot be read or parsed at all
    ├── JobNotFound                 no job with that id in the store (exit code 2)
    │   └── AmbiguousJobId          a job id prefix matches several jobs
    ├── BackendError                the engine (local processes, Slurm) refused or failed
    │   ├── NetworkSetupError       a testbed command (ip, tc, nft) failed; carries argv and stderr
    │   └── EngineOutputError       an engine command's output (squeue, sinfo, sbatch) cannot be parsed
    └── StoreError                  the job database could not be read or written

Every error carries the data it is about (path, field, job id) and renders as one line via ``str()``.
The CLI turns any ``TrainfleetError`` into that line on stderr and its ``exit_code``.
"""

from __future__ import annotations


class TrainfleetError(Exception):
    """Base class; ``exit_code`` is what the CLI exits with."""

    exit_code: int = 1


class UsageError(TrainfleetError):
    exit_code = 2


class InputError(TrainfleetError):
    """A user-supplied file or value cannot be used."""

    exit_code = 2

    def __init__(self, message: str, *, path: str | None = None) -> None:
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


class SpecError(InputError):
    """A job spec is invalid; ``field`` is the dotted path of the offending field."""

    def __init__(self, message: str, *, path: str | None = None, field: str | None = None) -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message, path=path)


class UnreadableInput(InputError):
    """A path does not exist, is not readable, or holds nothing we can parse."""


class JobNotFound(TrainfleetError):
    exit_code = 2

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"no such job: {job_id}")


class AmbiguousJobId(JobNotFound):
    """A job id prefix matches more than one job; ``matches`` holds (some of) their ids."""

    def __init__(self, job_id: str, matches: list[str]) -> None:
        self.matches = matches
        TrainfleetError.__init__(self, f"ambiguous job id {job_id}: matches {', '.join(matches)}")
        self.job_id = job_id


class BackendError(TrainfleetError):
    """The execution engine failed to do what was asked."""


class NetworkSetupError(BackendError):
    """A command that builds or shapes the namespaced testbed (ip, tc, nft) failed."""

    def __init__(self, message: str, *, argv: list[str] | None = None, stderr: str = "") -> None:
        self.argv = argv or []
        self.stderr = stderr.strip()
        lines = self.stderr.splitlines()
        last = next((ln for ln in lines if "Error" in ln), lines[-1] if lines else "")
        detail = f" ({' '.join(self.argv)}: {last})" if self.argv and last else ""
        super().__init__(message + detail)


class EngineOutputError(BackendError):
    """Output of an engine command (``squeue --json``, ``sinfo --json``, ``sbatch``) cannot be understood.

    ``source`` names the command or file the text came from, ``field`` the JSON path (``jobs[2].job_state``).
    """

    def __init__(self, message: str, *, source: str | None = None, field: str | None = None) -> None:
        self.source = source
        self.field = field
        where = ": ".join(part for part in (source, field) if part)
        super().__init__(f"{where}: {message}" if where else message)


class StoreError(TrainfleetError):
    """The job database failed."""
