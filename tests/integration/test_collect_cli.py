"""``trainfleet collect`` end to end: the real console script, real lspci, a real unprivileged user."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest

from trainfleet.cli import main as cli_main

TRAINFLEET = str(Path(sys.executable).with_name("trainfleet"))


def _run(args: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TRAINFLEET, *args], capture_output=True, text=True, timeout=60, **kw)  # type: ignore[call-overload]


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A directory under /tmp that an unprivileged user can reach (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="tf-collect-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_collect_cli_writes_bundle(tmp_path: Path) -> None:
    proc = _run(["collect", "--out", str(tmp_path)])
    assert proc.returncode == 0, proc.stderr
    bundle = tmp_path / socket.gethostname()
    assert f"wrote {bundle}" in proc.stdout
    manifest = json.loads((bundle / "manifest.json").read_text())
    files = {f["file"]: f for f in manifest["files"]}
    assert files["lspci.txt"]["status"] == "ok"
    assert (bundle / "lspci.txt").stat().st_size == files["lspci.txt"]["bytes"] > 0
    assert files["lspci-tv.txt"]["status"] == "ok"
    assert files["cmdline.txt"]["status"] == "ok"


def test_collect_cli_without_tools_on_path(tmp_path: Path) -> None:
    """PATH holds only lspci: every other tool is recorded as missing and the run still exits 0."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "lspci").symlink_to(shutil.which("lspci") or "/usr/bin/lspci")
    proc = _run(["collect", "--out", str(tmp_path / "out")], env={**os.environ, "PATH": str(bin_dir)})
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "out" / socket.gethostname() / "manifest.json").read_text())
    status = {f["file"]: f["status"] for f in manifest["files"]}
    assert status["lspci.txt"] == "ok"
    for name in ("nvidia-smi-topo.txt", "nvidia-smi-q.txt", "ibv_devinfo.txt", "dmidecode.txt"):
        assert status[name] == "missing-tool"
    assert "nvidia-smi-q.txt (missing-tool)" in proc.stdout


def test_collect_cli_out_not_writable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = _run(["collect", "--out", str(blocker)])
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot write the bundle directory" in lines[0] and str(blocker) in lines[0]


def _run_as_nobody(args: list[str], workdir: Path) -> tuple[int, str, str]:
    """Fork, drop to the nobody user, run the CLI entry point in the child; return (code, stdout, stderr).

    A fork (not an exec) because the venv's interpreter lives under /root, which nobody cannot enter;
    so everything the child runs must be imported before the fork: one warm-up run as root does that
    (typer imports its coercion modules lazily, on first parse).
    """
    nobody = pwd.getpwnam("nobody")
    saved_argv = sys.argv
    try:
        sys.argv = [TRAINFLEET, "collect", "--out", str(workdir / "warm-up")]
        try:
            cli_main()
        except SystemExit as exc:  # main() may end with sys.exit(0)
            assert exc.code in (0, None)
    finally:
        sys.argv = saved_argv
    out_file, err_file = workdir / "stdout", workdir / "stderr"
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        code = 70
        try:
            with open(out_file, "w") as out_fh, open(err_file, "w") as err_fh:
                os.dup2(out_fh.fileno(), 1)
                os.dup2(err_fh.fileno(), 2)
                sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
                sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
                os.setgroups([])
                os.setgid(nobody.pw_gid)
                os.setuid(nobody.pw_uid)
                os.chdir(workdir)
                sys.argv = [TRAINFLEET, *args]
                try:
                    cli_main()
                    code = 0
                except SystemExit as exc:
                    code = exc.code if isinstance(exc.code, int) else 1
                except BaseException:
                    traceback.print_exc()
                sys.stdout.flush()
                sys.stderr.flush()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out_file.read_text(), err_file.read_text()


def test_collect_cli_as_nobody_warns_and_lspci_hides_capabilities(shared_tmp: Path) -> None:
    """Needs root (as CI and `make test` run) to switch to nobody; root is what collect itself asks for."""
    assert os.geteuid() == 0, "run the tests as root: this test drops to the nobody user"
    out = shared_tmp / "out"
    out.mkdir()
    out.chmod(0o777)
    (shared_tmp / "run").mkdir(mode=0o777)
    (shared_tmp / "run").chmod(0o777)
    code, stdout, stderr = _run_as_nobody(["collect", "--out", str(out)], shared_tmp / "run")
    assert code == 0, stderr
    assert "not running as root" in stderr and "<access denied>" in stderr and "sudo" in stderr
    bundle = out / socket.gethostname()
    assert f"wrote {bundle}" in stdout
    assert "<access denied>" in (bundle / "lspci.txt").read_text()
    assert json.loads((bundle / "manifest.json").read_text())["is_root"] is False
    # The same user cannot write into a root-owned 0755 directory: one line, exit 2.
    code, _, stderr = _run_as_nobody(["collect", "--out", str(shared_tmp)], shared_tmp / "run")
    assert code == 2
    assert stderr.count("\n") == 1 and "Permission denied" in stderr
