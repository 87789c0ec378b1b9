"""IOMMU mode from the kernel command line (facts §2.2).

A translating IOMMU collapses GPUDirect RDMA / P2P bandwidth (CUDA: bare-metal peer copies are not
supported with a translated IOMMU) and makes the kernel turn ACS on. Good: IOMMU off, or on with
``iommu=pt`` (AMD MI300X guide keeps it on with ``iommu=pt``). The command line is the evidence; when the
bundle has no ``cmdline.txt`` this rule says nothing. With no IOMMU token at all the mode is the kernel's
build default: reported only when lspci shows ``IOMMU group:`` lines (the IOMMU is active).
"""

from __future__ import annotations

from collections.abc import Iterator

from trainfleet.health.model import DeviceKind, Finding, Severity
from trainfleet.health.rules.context import RuleContext

_OFF = {"intel_iommu=off", "amd_iommu=off", "iommu=off"}
_PT = {"iommu=pt", "iommu.passthrough=1", "iommu.passthrough=on", "iommu.passthrough=y"}
_ON = {"intel_iommu=on", "amd_iommu=on", "iommu=force", "iommu=nopt", "iommu.passthrough=0",
       "iommu.passthrough=off", "iommu.passthrough=n"}


def iommu_tokens(cmdline: str) -> list[str]:
    """The IOMMU-related tokens of a kernel command line, in order."""
    return [t for t in cmdline.split() if t.split("=", 1)[0] in ("intel_iommu", "amd_iommu", "iommu",
                                                                 "iommu.passthrough")]


def iommu_mode(cmdline: str | None) -> str:
    """``unknown`` (no cmdline), ``off``, ``passthrough``, ``translated`` or ``default`` (no IOMMU token)."""
    if cmdline is None:
        return "unknown"
    tokens = iommu_tokens(cmdline)
    # intel_iommu=on may carry options: intel_iommu=on,sm_on
    norm = {t.split(",", 1)[0] for t in tokens}
    if norm & _OFF:
        return "off"
    if norm & {"iommu=nopt", "iommu.passthrough=0", "iommu.passthrough=off", "iommu.passthrough=n"}:
        return "translated"
    if norm & _PT:
        return "passthrough"
    if norm & _ON:
        return "translated"
    return "default"


def check_iommu(ctx: RuleContext) -> Iterator[Finding]:
    """``iommu-translated``: IOMMU on without passthrough on a node with GPUs or RDMA NICs."""
    cmdline = ctx.node.cmdline
    mode = iommu_mode(cmdline)
    if mode not in ("translated", "default") or cmdline is None:
        return
    has_gpu = any(True for _ in ctx.of_kind(DeviceKind.GPU))
    if not has_gpu and not any(True for _ in ctx.of_kind(DeviceKind.RDMA_NIC)):
        return
    hint = ("add iommu=pt to the kernel command line (keep amd_iommu/intel_iommu on where needed, e.g. "
            "x2APIC on >255 threads), or disable the IOMMU in the BIOS on bare metal")
    tokens = " ".join(iommu_tokens(cmdline))
    if mode == "translated":
        yield ctx.finding(
            None, "iommu-translated", Severity.ERROR if has_gpu else Severity.WARNING, "cmdline IOMMU",
            tokens, "iommu=pt (or IOMMU off)",
            f"IOMMU in translated mode ({tokens}): GPUDirect RDMA and GPU P2P bandwidth collapse and the "
            "kernel enables ACS",
            f"/proc/cmdline: {cmdline.strip()}", hint,
        )
        return
    grouped = [d for d in ctx.devices if d.iommu_group is not None]
    if grouped:
        yield ctx.finding(
            None, "iommu-translated", Severity.WARNING, "cmdline IOMMU", "(no iommu option)",
            "iommu=pt (or IOMMU off)",
            f"the IOMMU is active ({len(grouped)} devices in IOMMU groups) and the command line has no "
            "iommu=pt: the default domain is the kernel's build default, often translated",
            f"/proc/cmdline: {cmdline.strip()}", hint,
        )
