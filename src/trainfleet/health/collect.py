"""Collect one node's raw facts into a bundle directory ``OUT/<hostname>/`` that ``trainfleet doctor`` reads.

The bundle keeps raw text only (a better parser can re-read an old fleet): ``lspci.txt``
(``lspci -vvv -nn -D``), ``lspci-tv.txt``, ``cmdline.txt`` and, when the tool or sysfs tree exists,
``nvidia-smi-topo.txt``, ``nvidia-smi-q.txt``, ``ibv_devinfo.txt``, ``dmidecode.txt``, ``infiniband.txt``
and ``numa.txt``. ``manifest.json`` says for every file which command or path made it, how it went and
how long it took.

Promises: every command runs from an argv list (never a shell) with a timeout; a missing tool, a failing
tool or a timeout is recorded in the manifest and never stops the collection; every file is written
atomically (temporary file + rename), so a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from trainfleet import __version__
from trainfleet.errors import InputError

MANIFEST = "manifest.json"
STDERR_TAIL_CHARS = 2000
DEFAULT_TIMEOUT_S = 60.0
VERSION_TIMEOUT_S = 5.0
KILL_GRACE_S = 5.0  # how long to wait for a killed command to go away

# Status of one bundle file in the manifest.
OK = "ok"
MISSING_TOOL = "missing-tool"  # the command is not on PATH
FAILED = "failed"  # non-zero exit, or the command could not be started
TIMEOUT = "timeout"
ABSENT = "absent"  # a /proc or /sys source that this node does not have (no InfiniBand, no PCI sysfs)


@dataclass(frozen=True, slots=True)
class CommandSource:
    """A bundle file made by running ``argv``; ``version_argv`` prints the tool version (cheap, optional)."""

    file: str
    argv: tuple[str, ...]
    version_argv: tuple[str, ...] | None = None
    required: bool = False  # the doctor cannot judge a bundle without it


@dataclass(frozen=True, slots=True)
class SysfsSource:
    """A bundle file made by reading kernel files; ``read`` returns the text, or None when absent."""

    file: str
    paths: str  # what it reads, for the manifest
    read: Callable[[], str | None]


@dataclass(slots=True)
class FileRecord:
    """One manifest entry: how one bundle file was made."""

    file: str
    status: str
    command: list[str] | None = None
    source: str | None = None
    tool_version: str | None = None
    exit_code: int | None = None
    started_at: str = ""
    duration_s: float = 0.0
    bytes: int = 0
    stderr_tail: str = ""


@dataclass(slots=True)
class CollectResult:
    """What ``collect_bundle`` did: the bundle directory and one record per file it tried to make."""

    bundle_dir: Path
    hostname: str
    is_root: bool
    records: list[FileRecord] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def by_file(self) -> dict[str, FileRecord]:
        return {r.file: r for r in self.records}


def _read_proc_cmdline() -> str | None:
    try:
        return Path("/proc/cmdline").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _read_infiniband(root: str = "/sys/class/infiniband") -> str | None:
    """One line per port: ``mlx5_0 port 1 state=4: ACTIVE phys_state=5: LinkUp rate=400 Gb/sec (4X NDR)``."""
    ports = sorted(glob.glob(os.path.join(root, "*", "ports", "*")))
    if not ports:
        return None
    lines = []
    for port in ports:
        dev = Path(port).parent.parent.name
        parts = [f"{dev} port {Path(port).name}"]
        for attr in ("state", "phys_state", "rate", "link_layer"):
            try:
                value = Path(port, attr).read_text(encoding="utf-8", errors="replace").strip()
            except OSError:
                value = "?"
            parts.append(f"{attr}={value}")
        lines.append(" ".join(parts))
    return "\n".join(lines) + "\n"


def _read_numa(root: str = "/sys/bus/pci/devices") -> str | None:
    """One line per PCI function: ``0000:17:00.0 numa_node=0`` (``-1`` = the platform reports none)."""
    devices = sorted(glob.glob(os.path.join(root, "*")))
    if not devices:
        return None
    lines = []
    for dev in devices:
        try:
            value = Path(dev, "numa_node").read_text(encoding="utf-8").strip()
        except OSError:
            value = "?"
        lines.append(f"{Path(dev).name} numa_node={value}")
    return "\n".join(lines) + "\n"


COMMANDS: tuple[CommandSource, ...] = (
    # -nn: numeric ids next to names (new GPUs are unknown to old pci.ids); -D: always print the domain.
    CommandSource("lspci.txt", ("lspci", "-vvv", "-nn", "-D"), ("lspci", "--version"), required=True),
    CommandSource("lspci-tv.txt", ("lspci", "-tv"), ("lspci", "--version")),
    CommandSource("nvidia-smi-topo.txt", ("nvidia-smi", "topo", "-m"), ("nvidia-smi", "--version")),
    CommandSource("nvidia-smi-q.txt", ("nvidia-smi", "-q"), ("nvidia-smi", "--version")),
    CommandSource("ibv_devinfo.txt", ("ibv_devinfo", "-v"), ("ibv_devinfo", "--version")),
    CommandSource("dmidecode.txt", ("dmidecode", "-t", "bios", "-t", "system"), ("dmidecode", "--version")),
)

SYSFS: tuple[SysfsSource, ...] = (
    SysfsSource("cmdline.txt", "/proc/cmdline", _read_proc_cmdline),
    SysfsSource("infiniband.txt", "/sys/class/infiniband/*/ports/*/{state,phys_state,rate,link_layer}",
                _read_infiniband),
    SysfsSource("numa.txt", "/sys/bus/pci/devices/*/numa_node", _read_numa),
)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _tail(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")[-STDERR_TAIL_CHARS:]


@dataclass(slots=True)
class CommandOutcome:
    """The result of one command run: stdout bytes plus what the manifest records."""

    status: str
    stdout: bytes
    exit_code: int | None
    stderr_tail: str
    duration_s: float


def run_command(argv: list[str] | tuple[str, ...], timeout_s: float, env: dict[str, str] | None = None
                ) -> CommandOutcome:
    """Run ``argv`` (no shell) with a timeout; on timeout kill its whole process group. Never raises for
    a missing, failing or hanging tool: the outcome's ``status`` says what happened."""
    env = dict(os.environ if env is None else env)
    exe = shutil.which(argv[0], path=env.get("PATH", os.defpath))
    t0 = time.monotonic()
    if exe is None:
        return CommandOutcome(MISSING_TOOL, b"", None, f"{argv[0]}: not found on PATH", 0.0)
    try:
        proc = subprocess.Popen([exe, *argv[1:]], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env, start_new_session=True)
    except OSError as exc:
        return CommandOutcome(FAILED, b"", None, f"{argv[0]}: {exc.strerror or exc}", time.monotonic() - t0)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        try:
            out, err = proc.communicate(timeout=KILL_GRACE_S)
        except subprocess.TimeoutExpired:  # unkillable (D state: nvidia-smi on a wedged GPU): leave it
            out, err = b"", b"(did not exit after SIGKILL)"
        tail = _tail(err) + f"\n(killed after {timeout_s:g} s)"
        return CommandOutcome(TIMEOUT, out, proc.returncode, tail.lstrip("\n"), time.monotonic() - t0)
    status = OK if proc.returncode == 0 else FAILED
    return CommandOutcome(status, out, proc.returncode, _tail(err), time.monotonic() - t0)


def tool_version(argv: tuple[str, ...] | None, env: dict[str, str] | None = None) -> str | None:
    """First non-empty line the tool prints for its version flag, or None."""
    if argv is None:
        return None
    outcome = run_command(argv, VERSION_TIMEOUT_S, env)
    if outcome.status != OK:
        return None
    text = outcome.stdout.decode("utf-8", errors="replace") or outcome.stderr_tail
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return None


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same directory and ``os.replace``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def safe_node_name(hostname: str) -> str:
    """The bundle directory name for a host: the hostname, with path separators and leading dots removed."""
    name = hostname.strip().replace("/", "_").replace("\\", "_").lstrip(".")
    return name or "unknown-host"


def prepare_bundle_dir(out_dir: Path, node: str) -> Path:
    """Create ``out_dir/node`` and prove it writable; else raise ``InputError`` (exit 2) naming the path."""
    bundle = out_dir / node
    try:
        bundle.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=bundle, prefix=".write-test.", delete=True)  # noqa: SIM115
        probe.close()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise InputError(f"cannot write the bundle directory: {reason}", path=str(bundle)) from exc
    return bundle


def collect_bundle(out_dir: Path, *, hostname: str | None = None, is_root: bool | None = None,
                   timeout_s: float = DEFAULT_TIMEOUT_S, env: dict[str, str] | None = None,
                   commands: tuple[CommandSource, ...] = COMMANDS,
                   sysfs: tuple[SysfsSource, ...] = SYSFS) -> CollectResult:
    """Collect this node's facts into ``out_dir/<hostname>/`` and write ``manifest.json`` last.

    ``is_root`` defaults to ``os.geteuid() == 0``; when False the result carries the warning that lspci hides
    capabilities. Raises ``InputError`` only when the bundle directory cannot be written.
    """
    host = hostname or socket.gethostname()
    root = (os.geteuid() == 0) if is_root is None else is_root
    bundle = prepare_bundle_dir(out_dir, safe_node_name(host))
    result = CollectResult(bundle_dir=bundle, hostname=host, is_root=root)
    if not root:
        result.warnings.append(
            "not running as root: lspci shows PCIe capabilities (ACS, AER, link control, MaxReadReq) as "
            "'<access denied>' and dmidecode reads nothing; rerun with sudo for a bundle the doctor can judge"
        )
    t_start = time.monotonic()
    started = _now_iso()
    versions: dict[tuple[str, ...], str | None] = {}
    for cmd in commands:
        rec = FileRecord(file=cmd.file, status=OK, command=list(cmd.argv), started_at=_now_iso())
        outcome = run_command(cmd.argv, timeout_s, env)
        rec.status, rec.exit_code = outcome.status, outcome.exit_code
        rec.duration_s, rec.stderr_tail = round(outcome.duration_s, 3), outcome.stderr_tail
        if outcome.status != MISSING_TOOL and cmd.version_argv is not None:
            if cmd.version_argv not in versions:
                versions[cmd.version_argv] = tool_version(cmd.version_argv, env)
            rec.tool_version = versions[cmd.version_argv]
        if outcome.stdout or outcome.status == OK:
            write_atomic(bundle / cmd.file, outcome.stdout)
            rec.bytes = len(outcome.stdout)
        if outcome.status != OK and cmd.required:
            last = (outcome.stderr_tail.strip().splitlines() or [""])[-1]
            result.warnings.append(f"{cmd.file}: '{' '.join(cmd.argv)}' {outcome.status} ({last}); "
                                   "the doctor cannot judge this node without it")
        result.records.append(rec)
    for src in sysfs:
        rec = FileRecord(file=src.file, status=OK, source=src.paths, started_at=_now_iso())
        t0 = time.monotonic()
        text = src.read()
        rec.duration_s = round(time.monotonic() - t0, 3)
        if text is None:
            rec.status = ABSENT
        else:
            data = text.encode("utf-8")
            write_atomic(bundle / src.file, data)
            rec.bytes = len(data)
        result.records.append(rec)
    manifest = {
        "trainfleet_version": __version__,
        "hostname": host,
        "is_root": root,
        "euid": os.geteuid(),
        "started_at": started,
        "duration_s": round(time.monotonic() - t_start, 3),
        "warnings": result.warnings,
        "files": [asdict(r) for r in result.records],
    }
    write_atomic(bundle / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode("utf-8"))
    return result
