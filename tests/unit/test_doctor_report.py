"""Doctor report (headline, collapsed table, JSON, HTML) and node loading (bundles, fleets, lone files),
on fleets built from real dumps in tests/fixtures/lspci."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from trainfleet.errors import UnreadableInput
from trainfleet.health import doctor, report
from trainfleet.health.bundle import iter_sources, load_node
from trainfleet.health.doctor import DoctorResult, run_doctor
from trainfleet.health.lspci import parse_lspci
from trainfleet.health.model import Finding, Severity

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "lspci"
PLX = (FIX / "11_xeon-e5v4-4xtitanx-pascal-plx-pex8747_vvv-switch-dsp-and-gpu.txt").read_text()
CX5 = (FIX / "13_fdio-csit-cascadelake-cx5ex-mcx556a_vvvs-single-nic.txt").read_text()
ASPM_ON = "LnkCtl: ASPM L1 Enabled; Disabled- CommClk-"
ASPM_OFF = "LnkCtl: ASPM Disabled; Disabled- CommClk-"


def fleet(root: Path, n: int, faulty: dict[int, str]) -> Path:
    """``n`` bundles of dump 11 with ASPM disabled on the PLX port, except the ``faulty`` ones."""
    clean = PLX.replace(ASPM_ON, ASPM_OFF)
    for i in range(n):
        node = root / f"node{i:03d}"
        node.mkdir(parents=True)
        (node / "lspci.txt").write_text(faulty.get(i, clean))
        (node / "cmdline.txt").write_text("BOOT_IMAGE=/vmlinuz ro iommu=pt\n")
    return root


def test_fleet_headline_names_the_difference_and_the_norm(tmp_path: Path) -> None:
    result = run_doctor([str(fleet(tmp_path, 6, {2: PLX, 4: PLX}))])
    line = report.headline(result)
    assert line.startswith("2 of 6 nodes differ from the fleet: LnkCtl ASPM L1 Enabled on 0000:03:08.0 "
                           "(switch port above GPU 0000:04:00.0)")
    assert line.endswith("; 4 nodes have Disabled")


def test_two_worker_processes_give_the_same_verdict(tmp_path: Path) -> None:
    root = fleet(tmp_path, 40, {7: PLX})
    inline, pooled = run_doctor([str(root)], workers=1), run_doctor([str(root)], workers=2)
    key = [(f.node, f.device, f.check, f.value) for f in inline.findings]
    assert key == [(f.node, f.device, f.check, f.value) for f in pooled.findings]
    assert pooled.nodes == 40 and pooled.distinct_signatures == 2
    assert ("node007", "03:08.0", "diff-field", "L1 Enabled") in key


def test_single_node_headline_is_the_worst_finding() -> None:
    result = run_doctor([str(FIX / "13_fdio-csit-cascadelake-cx5ex-mcx556a_vvvs-single-nic.txt")])
    assert report.headline(result).startswith(
        "13_fdio-csit-cascadelake-cx5ex-mcx556a_vvvs-single-nic: warning: RDMA NIC 0000:5e:00.0 link runs at "
        "8GT/s of 16GT/s")
    assert result.exit_code == 0


def _finding(node: str, severity: Severity = Severity.ERROR, check: str = "acs-redirect") -> Finding:
    return Finding(node, "02:01.0", check, severity, "ACSCtl", "ReqRedir+", "ReqRedir-", "ACS redirect on X")


def test_identical_findings_collapse_across_nodes() -> None:
    result = DoctorResult(nodes=40, findings=[_finding(f"n{i:02d}") for i in range(37)]
                          + [_finding("n99", Severity.INFO, "aer-unsupported-request")])
    groups = report.group_findings(result.findings)
    assert [len(g.nodes) for g in groups] == [37, 1]
    assert groups[0].nodes_text.startswith("on 37 nodes: n00, n01")
    out = io.StringIO()
    report.render(result, Console(file=out, width=160))
    lines = out.getvalue().splitlines()
    assert lines[0] == "on 37 of 40 nodes: error: ACS redirect on X (+1 more finding)"
    assert "on 37 nodes: n00, n01" in out.getvalue() and "n05" not in out.getvalue()
    assert result.exit_code == 1


def test_clean_headline() -> None:
    assert report.headline(DoctorResult(nodes=3)) == "3 nodes checked: no findings"


def test_json_contract() -> None:
    result = DoctorResult(nodes=2, findings=[_finding("n1")])
    data = json.loads(json.dumps(report.to_json(result)))
    assert data["nodes"] == 2
    (item,) = data["findings"]
    assert set(item) >= {"node", "device", "check", "severity", "field", "value", "expected", "message"}
    assert item["severity"] == "error" and item["device"] == "02:01.0"


def test_html_is_self_contained_and_escaped(tmp_path: Path) -> None:
    bad = Finding("<n1>", "02:01.0", "acs-redirect", Severity.ERROR, "ACSCtl", "x", "y", "a <b> & c")
    page = tmp_path / "r.html"
    report.write_html(DoctorResult(nodes=1, findings=[bad]), page)
    body = page.read_text()
    assert body.startswith("<!DOCTYPE html>") and "<script" not in body and "http" not in body
    assert "a &lt;b&gt; &amp; c" in body and "&lt;n1&gt;" in body


def test_sources_of_each_path_kind(tmp_path: Path) -> None:
    fleet(tmp_path / "rack1", 2, {})
    (tmp_path / "rack1" / "loose-node.txt").write_text(CX5)
    (tmp_path / "rack1" / "README.md").write_text("not a capture")
    lone = FIX / "13_fdio-csit-cascadelake-cx5ex-mcx556a_vvvs-single-nic.txt"
    names = [s.name for s in iter_sources([str(tmp_path / "rack1"), str(lone)])]
    assert names == ["loose-node", "node000", "node001", lone.stem]
    (bundle,) = iter_sources([str(tmp_path / "rack1" / "node000")])
    facts = load_node(bundle, extras=True)
    assert facts.name == "node000" and facts.cmdline == "BOOT_IMAGE=/vmlinuz ro iommu=pt"
    assert len(facts.lspci.devices) == 3


def test_unreadable_paths_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(UnreadableInput, match=r"^/nonexistent/x: no such file or directory$"):
        list(iter_sources(["/nonexistent/x"]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UnreadableInput, match=r"empty: no node bundle"):
        run_doctor([str(tmp_path / "empty")])
    garbage = tmp_path / "garbage.txt"
    garbage.write_bytes(b"\x00\xff\xfe binary \x01\n")
    with pytest.raises(UnreadableInput, match=r"garbage.txt: holds no lspci device block"):
        run_doctor([str(garbage)])


@pytest.mark.parametrize("fixture", sorted(p.name for p in FIX.glob("*.txt")))
def test_fast_parse_matches_the_parser(fixture: str) -> None:
    """The doctor's per-block fast path gives what parse_lspci gives on the same quieted text."""
    text = (FIX / fixture).read_text(errors="replace")
    fast, slow = doctor.quiet_parse(text), parse_lspci(doctor.quiet_text(text))
    assert [repr(d) for d in fast.devices] == [repr(d) for d in slow.devices]
    assert (fast.warnings, fast.garbage_lines) == (slow.warnings, slow.garbage_lines)


def test_quiet_text_drops_only_per_node_noise() -> None:
    text = (FIX / "linuxhw_17_hpe-cray-xd665-4xh100sxm5-2xcx5-pex890xx-acs-on_vvnn.txt").read_text()
    quiet = doctor.quiet_text(text)
    assert "routed to IRQ" not in quiet and "[SN] Serial number" not in quiet
    assert "Address: 00000000fee00000" not in quiet
    assert "Region 2: Memory at 0 (64-bit, prefetchable) [size=128G]" in quiet
    assert "Prefetchable memory behind bridge: 0-0 [size=576G]" in quiet
    kept = ("ACSCtl:", "LnkSta:", "DevCtl:", "UESta:", "NUMA node:", "IOMMU group:")
    for marker in kept:
        assert quiet.count(marker) == text.count(marker)
