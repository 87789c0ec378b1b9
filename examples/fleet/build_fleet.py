"""Rebuild the sample fleet in this directory from the real dump it is made of (see README.md).

Run from the repository root: ``.venv/bin/python examples/fleet/build_fleet.py``. Deterministic: the
output only depends on the fixture file.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIXTURE = (HERE.parents[1] / "tests/fixtures/lspci"
           / "linuxhw_17_hpe-cray-xd665-4xh100sxm5-2xcx5-pex890xx-acs-on_vvnn.txt")
NODES = 8
FAULTY = "gpu-node-05"
FAULT_PORT = "02:01.0"  # PEX890xx downstream port directly above the H100 at 04:00.0
ACS_ON = "ACSCtl:\tSrcValid+ TransBlk- ReqRedir+ CmpltRedir+ UpstreamFwd+ EgressCtrl- DirectTrans-"
ACS_OFF = "ACSCtl:\tSrcValid- TransBlk- ReqRedir- CmpltRedir- UpstreamFwd- EgressCtrl- DirectTrans-"
CMDLINE = "BOOT_IMAGE=/boot/vmlinuz-6.5.0-26-generic root=/dev/mapper/vg0-root ro amd_iommu=on iommu=pt\n"
IRQ = re.compile(r"routed to IRQ (\d+)")


def _plant(text: str) -> str:
    """Turn ACS redirect back on for the one downstream port FAULT_PORT."""
    start = text.index(f"\n{FAULT_PORT} ") + 1
    end = text.index("\n\n", start)
    block = text[start:end]
    assert ACS_OFF in block
    return text[:start] + block.replace(ACS_OFF, ACS_ON) + text[end:]


def main() -> None:
    original = FIXTURE.read_text()
    clean = original.replace(ACS_ON, ACS_OFF)  # the fleet after the documented fix (setpci ... =0000)
    for old in HERE.glob("gpu-node-*"):
        shutil.rmtree(old)
    for i in range(1, NODES + 1):
        name = f"gpu-node-{i:02d}"
        # Per-node noise the doctor must ignore: interrupt numbers differ from node to node.
        text = IRQ.sub(lambda m, i=i: f"routed to IRQ {int(m[1]) + 3 * (i - 1)}", clean)
        if name == FAULTY:
            text = _plant(text)
        node = HERE / name
        node.mkdir()
        (node / "lspci.txt").write_text(text)
        (node / "cmdline.txt").write_text(CMDLINE)


if __name__ == "__main__":
    main()
