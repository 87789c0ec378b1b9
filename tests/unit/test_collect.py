"""``health.collect``: real commands (lspci, sleep) and real files; nothing is mocked."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from trainfleet.errors import InputError
from trainfleet.health.collect import (
    ABSENT,
    FAILED,
    MISSING_TOOL,
    OK,
    TIMEOUT,
    CommandSource,
    SysfsSource,
    _read_infiniband,
    collect_bundle,
    run_command,
    safe_node_name,
    write_atomic,
)


def test_real_collect_writes_bundle_and_manifest(tmp_path: Path) -> None:
    result = collect_bundle(tmp_path, hostname="node-a", timeout_s=30)
    bundle = tmp_path / "node-a"
    assert result.bundle_dir == bundle
    lspci = (bundle / "lspci.txt").read_text()
    # -D prints the domain, -nn prints [vendor:device] ids next to the names.
    first = lspci.splitlines()[0]
    assert first.startswith("0000:00:")
    assert "[" in first and ":" in first.split("[")[-1]
    assert (bundle / "lspci-tv.txt").read_text().startswith("-[0000:00]-")
    assert (bundle / "cmdline.txt").read_text() == Path("/proc/cmdline").read_text()
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["hostname"] == "node-a"
    assert manifest["is_root"] == (os.geteuid() == 0)
    assert manifest["trainfleet_version"]
    files = {f["file"]: f for f in manifest["files"]}
    rec = files["lspci.txt"]
    assert rec["status"] == OK and rec["exit_code"] == 0
    assert rec["command"] == ["lspci", "-vvv", "-nn", "-D"]
    assert rec["tool_version"].startswith("lspci version")
    assert rec["bytes"] == len(lspci.encode())
    assert rec["started_at"].endswith("+00:00") and rec["duration_s"] >= 0
    # Every file the manifest calls ok exists with that many bytes; nothing else was left behind.
    written = {p.name for p in bundle.iterdir()}
    for name, f in files.items():
        if f["status"] == OK:
            assert (bundle / name).stat().st_size == f["bytes"]
        elif f["status"] in (MISSING_TOOL, ABSENT):
            assert name not in written
    assert not [n for n in written if n.startswith(".")]  # no temporary files


def test_missing_tool_is_recorded_not_fatal(tmp_path: Path) -> None:
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    result = collect_bundle(tmp_path / "out", hostname="n1", env={"PATH": str(empty_bin)})
    recs = result.by_file()
    assert recs["lspci.txt"].status == MISSING_TOOL
    assert recs["nvidia-smi-q.txt"].status == MISSING_TOOL
    assert recs["lspci.txt"].stderr_tail == "lspci: not found on PATH"
    assert not (result.bundle_dir / "lspci.txt").exists()
    assert any("lspci.txt" in w and "cannot judge" in w for w in result.warnings)
    assert recs["cmdline.txt"].status == OK  # /proc is read without tools


def test_not_root_warns_about_access_denied(tmp_path: Path) -> None:
    result = collect_bundle(tmp_path, hostname="n2", is_root=False, commands=(), sysfs=())
    assert len(result.warnings) == 1
    assert "<access denied>" in result.warnings[0] and "sudo" in result.warnings[0]
    assert json.loads((result.bundle_dir / "manifest.json").read_text())["is_root"] is False
    assert not collect_bundle(tmp_path, hostname="n3", is_root=True, commands=(), sysfs=()).warnings


def test_timeout_kills_the_command() -> None:
    outcome = run_command(["sleep", "30"], timeout_s=0.3)
    assert outcome.status == TIMEOUT
    assert outcome.duration_s < 5
    assert "killed after 0.3 s" in outcome.stderr_tail


def test_failing_command_keeps_exit_code_and_stderr() -> None:
    outcome = run_command(["lspci", "-s", "zz:zz.9"], timeout_s=10)
    assert outcome.status == FAILED
    assert outcome.exit_code == 1
    assert "Invalid bus number" in outcome.stderr_tail


def test_failed_and_timed_out_commands_in_manifest(tmp_path: Path) -> None:
    cmds = (
        CommandSource("slow.txt", ("sleep", "30")),
        CommandSource("fails.txt", ("ls", str(tmp_path / "does-not-exist"))),
    )
    result = collect_bundle(tmp_path, hostname="n4", timeout_s=0.3, commands=cmds, sysfs=())
    recs = result.by_file()
    assert recs["slow.txt"].status == TIMEOUT
    assert recs["fails.txt"].status == FAILED and recs["fails.txt"].exit_code != 0
    assert "does-not-exist" in recs["fails.txt"].stderr_tail


def test_absent_sysfs_source_is_recorded(tmp_path: Path) -> None:
    src = SysfsSource("infiniband.txt", "/nowhere", lambda: _read_infiniband(str(tmp_path / "nowhere")))
    result = collect_bundle(tmp_path / "out", hostname="n5", commands=(), sysfs=(src,))
    assert result.by_file()["infiniband.txt"].status == ABSENT
    assert not (result.bundle_dir / "infiniband.txt").exists()


def test_infiniband_port_lines_from_a_sysfs_tree(tmp_path: Path) -> None:
    port = tmp_path / "mlx5_0" / "ports" / "1"
    port.mkdir(parents=True)
    (port / "state").write_text("4: ACTIVE\n")
    (port / "phys_state").write_text("5: LinkUp\n")
    (port / "rate").write_text("400 Gb/sec (4X NDR)\n")
    text = _read_infiniband(str(tmp_path))
    expected = "mlx5_0 port 1 state=4: ACTIVE phys_state=5: LinkUp rate=400 Gb/sec (4X NDR) link_layer=?\n"
    assert text == expected


def test_unwritable_out_dir_raises_input_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(InputError, match="cannot write the bundle directory"):
        collect_bundle(blocker, hostname="n6", commands=(), sysfs=())


def test_write_atomic_replaces_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    write_atomic(target, b"old")
    write_atomic(target, b"new content")
    assert target.read_bytes() == b"new content"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_safe_node_name() -> None:
    assert safe_node_name("gpu-001.cluster") == "gpu-001.cluster"
    assert safe_node_name("../etc") == "_etc"
    assert safe_node_name("  ") == "unknown-host"
