"""Decode the indented part of one ``lspci -vvv`` device block: items, capabilities and their registers.

:mod:`trainfleet.health.lspci` cuts a capture into device blocks and reads each header and top-level line;
this module groups a block's lines by indentation (tabs, 8 spaces or doc-indented text all work) and decodes
the capabilities that matter for RDMA / GPUDirect: PCI Express (DevCap/DevCtl/LnkCap/LnkSta/...), ACS, AER,
ATS, SR-IOV and Resizable BAR. Capability titles it does not know, and registers it does not expect inside
the ones it decodes, are kept in ``PciDevice.unknown_lines``. Pure functions; nothing here raises on text.
"""

from __future__ import annotations

import re

from trainfleet.health.model import AcsCap, AerCap, AtsCap, ExpressCap, Link, PciDevice, PortType, SriovCap

__all__ = ["Item", "flags", "group_lines", "indent", "parse_capability", "squash"]

_FLAG = re.compile(r"(?:(?<=[\s,:])|^)([^\s,:+]+?)([+-])(?=[\s,]|$)")
_MPS = re.compile(r"MaxPayload (\d+) bytes")
_MRRS = re.compile(r"MaxReadReq (\d+) bytes")
_SPEED = re.compile(r"Speed (?:([\d.]+)GT/s|unknown)(?: \((\w+)\))?")
_WIDTH = re.compile(r"Width x(\d+)(?: \((\w+)\))?")
_ASPM_CAP = re.compile(r"ASPM (not supported|L0s L1|L0s|L1|unknown)")
_ASPM_CTL = re.compile(r"ASPM ([^;,]+)")
_TARGET = re.compile(r"Target Link Speed: ([\d.]+)GT/s")
_SUPPORTED = re.compile(r"Supported Link Speeds: (\S+?),?(?:\s|$)")
_ATOMIC_CAP = re.compile(r"AtomicOpsCap: (.*?)\s*$")
_EXPRESS = re.compile(r"^Express (?:\(v\d+\) )?(.*?)(?: \((Slot[+-])\))?(?:, (?:MSI|IRQ) .*)?$")
_VFS = re.compile(r"Initial VFs: (\d+), Total VFs: (\d+), Number of VFs: (\d+)")
_CAP_TITLE = re.compile(r"^Capabilities: \[[0-9a-fA-F]+(?: v\d+)?\] (.*)$")

_PORT_TYPES = {p.value: p for p in PortType}
_DEVSTA_ALIASES = {"UncorrErr": "NonFatalErr", "UnsuppReq": "UnsupReq"}  # old pciutils spellings
_DEVSTA_IGNORED = ("AuxPwr", "TransPend")

# Capability titles that are understood (those not listed land in ``unknown_lines``, body included).
_KNOWN_CAPS = (
    "Express", "Access Control Services", "Advanced Error Reporting", "Address Translation Service",
    "Single Root I/O Virtualization", "Physical Resizable BAR", "Resizable BAR", "Virtual Resizable BAR",
    "Power Management", "MSI", "MSI-X", "Vital Product Data", "Vendor Specific", "Secondary PCI Express",
    "Latency Tolerance Reporting", "L1 PM Substates", "Power Budgeting", "Virtual Channel",
    "Alternative Routing-ID Interpretation", "Device Serial Number", "Downstream Port Containment",
    "Data Link Feature", "Physical Layer", "Lane Margining", "Subsystem", "HyperTransport",
    "Precision Time Measurement", "Process Address Space ID", "Page Request Interface",
    "Transaction Processing Hints", "Root Complex", "Multicast", "Designated Vendor-Specific",
    "Data Object Exchange", "Secure device", "Null", "Debug port", "PCI Advanced Features",
    "Enhanced Allocation", "Extended Capability ID", "Readiness Time Reporting", "SATA HBA",
    "Integrity and Data Encryption", "Native PCIe Enclosure Management", "Slot ID", "CompactPCI", "PCI-X",
    "AGP",
)
_EXPRESS_REGS = frozenset((
    "DevCap", "DevCtl", "DevSta", "LnkCap", "LnkCtl", "LnkSta", "SltCap", "SltCtl", "SltSta", "RootCap",
    "RootCtl", "RootSta", "DevCap2", "DevCtl2", "DevSta2", "LnkCap2", "LnkCtl2", "LnkSta2", "SltCap2",
    "SltCtl2", "SltSta2",
))
_AER_REGS = frozenset((
    "UESta", "UEMsk", "UESvrt", "CESta", "CEMsk", "AERCap", "HeaderLog", "RootCmd", "RootSta", "ErrorSrc",
))


def flags(text: str) -> dict[str, bool]:
    """``"SrcValid+ TransBlk- ReqRedir+"`` -> ``{"SrcValid": True, "TransBlk": False, "ReqRedir": True}``."""
    return {m[1]: m[2] == "+" for m in _FLAG.finditer(text)}


def indent(line: str) -> int:
    """Width of the leading whitespace, tabs counted to the next multiple of 8 (as a terminal shows them)."""
    body = line.lstrip(" \t")
    lead = line[: len(line) - len(body)]
    return len(lead.expandtabs(8)) if "\t" in lead else len(lead)


def squash(text: str) -> str:
    """Whitespace runs (tabs too) collapsed to one space, so evidence compares equal across formats."""
    return " ".join(text.split())


class Item:
    """A top-level line of a block and, for capabilities, its registers ``[name, value, first_line]``."""

    __slots__ = ("regs", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.regs: list[list[str]] = []


def group_lines(lines: list[str]) -> list[Item]:
    """Group the detail lines of a block by indentation: top-level items, registers, continuations."""
    items: list[Item] = []
    base = body = -1
    for line in lines:
        text = line.strip()
        if not text:
            continue
        ind = indent(line)
        if base < 0 or ind <= base or not items:
            base = ind if base < 0 or not items else min(base, ind)
            items.append(Item(text))
            body = -1
            continue
        item = items[-1]
        if body < 0 or ind <= body or not item.regs:
            body = ind if body < 0 else min(body, ind)
            name, _, value = text.partition(":")
            item.regs.append([name.strip(), value.strip(), text])
        else:
            item.regs[-1][1] += " " + text
    return items


def _link(value: str, first_line: str, dev: PciDevice) -> Link:
    speed = _SPEED.search(value)
    width = _WIDTH.search(value)
    if speed is None and width is None:
        dev.warnings.append(f"cannot read link speed/width: {squash(first_line)!r}")
    return Link(
        speed_gts=float(speed[1]) if speed and speed[1] else None,
        width=int(width[1]) if width else None,
        speed_downgraded=bool(speed and speed[2] == "downgraded"),
        width_downgraded=bool(width and width[2] == "downgraded"),
        raw=squash(first_line),
    )


def _parse_express(title: str, item: Item, dev: PciDevice) -> ExpressCap:
    m = _EXPRESS.match(title)
    kind = m[1] if m else ""
    port = _PORT_TYPES.get(kind, PortType.UNKNOWN)
    if port is PortType.UNKNOWN:
        dev.warnings.append(f"unknown Express port type: {title!r}")
    cap = ExpressCap(port_type=port, slot=bool(m and m[2] == "Slot+"))
    for name, value, first in item.regs:
        if name == "DevCap":
            mps = _MPS.search(value)
            cap.max_payload_cap = int(mps[1]) if mps else None
        elif name == "DevCtl":
            mps, mrrs, fl = _MPS.search(value), _MRRS.search(value), flags(value)
            cap.max_payload = int(mps[1]) if mps else None
            cap.max_read_req = int(mrrs[1]) if mrrs else None
            cap.relaxed_ordering, cap.ext_tag = fl.get("RlxdOrd"), fl.get("ExtTag")
            cap.no_snoop = fl.get("NoSnoop")
            cap.devctl_raw = squash(f"DevCtl: {value}")
            if mps is None or mrrs is None:
                dev.warnings.append("DevCtl without MaxPayload/MaxReadReq (truncated?)")
        elif name == "DevSta":
            fl = flags(value)
            cap.devsta_errors = tuple(
                _DEVSTA_ALIASES.get(k, k) for k, on in fl.items() if on and k not in _DEVSTA_IGNORED
            )
        elif name == "LnkCap":
            cap.lnk_cap = _link(value, first, dev)
            aspm = _ASPM_CAP.search(value)
            cap.aspm_cap = aspm[1] if aspm else None
        elif name == "LnkSta":
            cap.lnk_sta = _link(value, first, dev)
        elif name == "LnkCtl":
            aspm = _ASPM_CTL.search(value)
            cap.aspm_ctl = aspm[1].strip() if aspm else None
            cap.lnkctl_raw = squash(f"LnkCtl: {value}")
        elif name == "LnkCtl2":
            target = _TARGET.search(value)
            cap.target_speed_gts = float(target[1]) if target else None
        elif name == "LnkCap2":
            sup = _SUPPORTED.search(value)
            cap.lnk_cap2_speeds = sup[1] if sup else None
        elif name == "DevCap2":
            fl = flags(value)
            cap.ten_bit_tag_comp, cap.ten_bit_tag_req_cap = fl.get("10BitTagComp"), fl.get("10BitTagReq")
            cap.ltr_cap, cap.ari_fwd_cap = fl.get("LTR"), fl.get("ARIFwd")
            atomic = _ATOMIC_CAP.search(value)
            cap.atomic_ops_cap = atomic[1] if atomic else None
        elif name == "DevCtl2":
            fl = flags(value)
            cap.ltr_en, cap.ten_bit_tag_req_en = fl.get("LTR"), fl.get("10BitTagReq")
            cap.atomic_ops_req_en, cap.ari_fwd = fl.get("ReqEn"), fl.get("ARIFwd")
        elif name not in _EXPRESS_REGS:
            dev.unknown_lines.append(first)
    if item.regs and cap.lnk_sta is None and cap.max_payload is None:  # lspci -v prints no registers at all
        dev.warnings.append("Express capability without DevCtl/LnkSta lines (truncated dump?)")
    return cap


def _parse_acs(item: Item) -> AcsCap:
    acs = AcsCap()
    for name, value, _ in item.regs:
        if name == "ACSCap":
            acs.cap = flags(value)
        elif name == "ACSCtl":
            acs.ctl, acs.ctl_raw = flags(value), squash(f"ACSCtl: {value}")
    return acs


def _parse_aer(item: Item, dev: PciDevice) -> AerCap:
    aer = AerCap()
    for name, value, first in item.regs:
        if name == "UESta":
            aer.ue_sta, aer.ue_sta_raw = flags(value), squash(f"UESta: {value}")
        elif name == "UEMsk":
            aer.ue_msk = flags(value)
        elif name == "UESvrt":
            aer.ue_svrt = flags(value)
        elif name == "CESta":
            aer.ce_sta, aer.ce_sta_raw = flags(value), squash(f"CESta: {value}")
        elif name == "CEMsk":
            aer.ce_msk = flags(value)
        elif name not in _AER_REGS:
            dev.unknown_lines.append(first)
    return aer


def parse_capability(item: Item, dev: PciDevice) -> None:
    """Decode one ``Capabilities:`` item into the matching field of ``dev`` (which the caller is building)."""
    m = _CAP_TITLE.match(item.text)
    if m is None:  # "Capabilities: <access denied>" or something unexpected
        if "<access denied>" in item.text:
            dev.access_denied = True
        else:
            dev.unknown_lines.append(item.text)
        return
    title = m[1]
    dev.capabilities.append(title)
    if title.startswith("Express"):
        dev.express = _parse_express(title, item, dev)
    elif title.startswith("Access Control Services"):
        dev.acs = _parse_acs(item)
    elif title.startswith("Advanced Error Reporting"):
        dev.aer = _parse_aer(item, dev)
    elif title.startswith("Address Translation Service"):
        ctl = next((v for n, v, _ in item.regs if n == "ATSCtl"), None)
        dev.ats = AtsCap(enabled=flags(ctl).get("Enable") if ctl else None,
                         raw=squash(f"ATSCtl: {ctl}") if ctl else "")
    elif title.startswith("Single Root I/O Virtualization"):
        body = " ".join(f"{n}: {v}" for n, v, _ in item.regs)
        vfs = _VFS.search(body)
        ctl = next((v for n, v, _ in item.regs if n == "IOVCtl"), "")
        dev.sriov = SriovCap(*(int(x) for x in vfs.groups()) if vfs else (None, None, None),
                             enabled=flags(ctl).get("Enable"))
    elif title.startswith(("Physical Resizable BAR", "Resizable BAR")):
        dev.resizable_bar.extend(squash(first) for n, _, first in item.regs if n.startswith("BAR "))
    elif not title.startswith(_KNOWN_CAPS) and not title.startswith("#"):
        dev.unknown_lines.append(item.text)
        dev.unknown_lines.extend(first for _, _, first in item.regs)
    elif title.startswith("#"):  # old pciutils: capability it could not name ("#19")
        dev.unknown_lines.append(item.text)
