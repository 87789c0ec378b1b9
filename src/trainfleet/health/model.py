"""Typed records for node facts: what the lspci parser returns and the rules and the diff read.

Everything here is a plain dataclass, built by pure parsers (``health.lspci``) from raw text and never
mutated by the judges. Fields that lspci did not print (old pciutils, ``<access denied>``, a truncated
dump) are ``None``; consumers must treat ``None`` as "unknown", never as "off".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


class PortType(StrEnum):
    """PCI Express device/port type from the ``Express (v2) <type>`` capability line."""

    ROOT_PORT = "Root Port"
    UPSTREAM = "Upstream Port"
    DOWNSTREAM = "Downstream Port"
    ENDPOINT = "Endpoint"
    LEGACY = "Legacy Endpoint"
    RC_ENDPOINT = "Root Complex Integrated Endpoint"
    RC_EVENT = "Root Complex Event Collector"
    PCIE_TO_PCI = "PCI-Express to PCI/PCI-X Bridge"
    PCI_TO_PCIE = "PCI/PCI-X to PCI-Express Bridge"
    UNKNOWN = "Unknown"


class DeviceKind(StrEnum):
    """What a device is for the rules: derived from class code, vendor and names."""

    GPU = "gpu"
    RDMA_NIC = "rdma_nic"  # Mellanox/NVIDIA ConnectX/BlueField, Broadcom/Intel RDMA-capable NICs, EFA...
    NIC = "nic"
    NVME = "nvme"
    SWITCH_UPSTREAM = "switch_upstream"
    SWITCH_DOWNSTREAM = "switch_downstream"
    ROOT_PORT = "root_port"
    BRIDGE = "bridge"  # other bridges (host bridge, PCI bridge of unknown role)
    NVSWITCH = "nvswitch"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class Link:
    """One of LnkCap / LnkSta (or LnkCap2/LnkCtl2 target speed)."""

    speed_gts: float | None = None  # GT/s, e.g. 32.0; None when "unknown" or not printed
    width: int | None = None  # lanes, e.g. 16
    speed_downgraded: bool = False  # "(downgraded)" after the speed in LnkSta
    width_downgraded: bool = False
    raw: str = ""  # the evidence line, as printed (tabs stripped)


@dataclass(slots=True)
class ExpressCap:
    """The fields of the PCI Express capability that matter for RDMA / GPUDirect."""

    port_type: PortType = PortType.UNKNOWN
    slot: bool = False  # "Express (v2) Root Port (Slot+)"
    # DevCap / DevCtl
    max_payload_cap: int | None = None  # bytes, DevCap
    max_payload: int | None = None  # bytes, DevCtl
    max_read_req: int | None = None  # bytes, DevCtl
    relaxed_ordering: bool | None = None  # DevCtl RlxdOrd+
    ext_tag: bool | None = None  # DevCtl ExtTag+
    no_snoop: bool | None = None  # DevCtl NoSnoop+
    devctl_raw: str = ""  # evidence: the DevCtl lines joined with " "
    # DevSta
    devsta_errors: tuple[str, ...] = ()  # flags set in DevSta, e.g. ("CorrErr", "UnsupReq")
    # Link
    lnk_cap: Link | None = None
    lnk_sta: Link | None = None
    target_speed_gts: float | None = None  # LnkCtl2 "Target Link Speed"
    aspm_cap: str | None = None  # LnkCap "ASPM L1" / "ASPM not supported" -> "L1" / "not supported"
    aspm_ctl: str | None = None  # LnkCtl "ASPM Disabled" / "ASPM L1 Enabled" -> "Disabled" / "L1 Enabled"
    lnkctl_raw: str = ""
    # DevCap2 / DevCtl2
    ten_bit_tag_comp: bool | None = None
    ten_bit_tag_req_cap: bool | None = None  # DevCap2 10BitTagReq+
    ten_bit_tag_req_en: bool | None = None  # DevCtl2 10BitTagReq+
    ltr_cap: bool | None = None
    ltr_en: bool | None = None
    atomic_ops_cap: str | None = None  # raw "32bit+ 64bit+ 128bitCAS+"
    atomic_ops_req_en: bool | None = None  # DevCtl2 AtomicOpsCtl: ReqEn+
    ari_fwd: bool | None = None  # DevCtl2 ARIFwd+
    ari_fwd_cap: bool | None = None  # DevCap2 ARIFwd+ (the port can forward ARI)
    lnk_cap2_speeds: str | None = None  # LnkCap2 "Supported Link Speeds: 2.5-32GT/s" -> "2.5-32GT/s"


@dataclass(slots=True)
class AcsCap:
    """Access Control Services flag sets, e.g. {"SrcValid": True, "ReqRedir": False}."""

    cap: dict[str, bool] = field(default_factory=dict)
    ctl: dict[str, bool] = field(default_factory=dict)
    ctl_raw: str = ""  # evidence: "ACSCtl:\tSrcValid+ TransBlk- ReqRedir+ ..."


@dataclass(slots=True)
class AerCap:
    """Advanced Error Reporting status and masks: flag name -> set."""

    ue_sta: dict[str, bool] = field(default_factory=dict)
    ue_msk: dict[str, bool] = field(default_factory=dict)
    ue_svrt: dict[str, bool] = field(default_factory=dict)
    ce_sta: dict[str, bool] = field(default_factory=dict)
    ce_msk: dict[str, bool] = field(default_factory=dict)
    ue_sta_raw: str = ""
    ce_sta_raw: str = ""


@dataclass(slots=True)
class AtsCap:
    enabled: bool | None = None  # ATSCtl Enable+
    raw: str = ""


@dataclass(slots=True)
class SriovCap:
    initial_vfs: int | None = None
    total_vfs: int | None = None
    num_vfs: int | None = None
    enabled: bool | None = None  # IOVCtl Enable+


@dataclass(frozen=True, slots=True)
class Region:
    """A BAR line: ``Region 0: Memory at 38044000000 (64-bit, prefetchable) [size=32M]``."""

    index: int
    kind: str  # "Memory" | "I/O ports"
    address: str | None  # hex string; None when "<unassigned>" / "<ignored>"
    size_bytes: int | None
    bits: int | None = None  # 32 / 64
    prefetchable: bool = False
    disabled: bool = False


@dataclass(slots=True)
class BusRange:
    """``Bus: primary=00, secondary=01, subordinate=05`` of a bridge (values are bus numbers)."""

    primary: int
    secondary: int
    subordinate: int


@dataclass(slots=True)
class PciDevice:
    """One device block of ``lspci -vvv`` output."""

    address: str  # as printed by lspci: "03:00.0" or "0000:03:00.0"
    domain: int  # 0 when lspci printed no domain
    bus: int
    dev: int
    fn: int
    class_name: str = ""  # "Ethernet controller"
    class_id: str | None = None  # "0200" when -nn
    vendor_device: str = ""  # rest of the header line: "Mellanox Technologies MT2910 Family [ConnectX-7]"
    vendor_id: str | None = None  # "15b3" when -nn
    device_id: str | None = None  # "1021" when -nn
    rev: str | None = None
    subsystem: str | None = None
    subsystem_ids: str | None = None  # "15b3:0055" when -nn
    driver: str | None = None  # "Kernel driver in use"
    modules: tuple[str, ...] = ()  # "Kernel modules"
    numa_node: int | None = None
    iommu_group: int | None = None
    bus_range: BusRange | None = None  # bridges only
    regions: list[Region] = field(default_factory=list)
    express: ExpressCap | None = None
    acs: AcsCap | None = None
    aer: AerCap | None = None
    ats: AtsCap | None = None
    sriov: SriovCap | None = None
    resizable_bar: list[str] = field(default_factory=list)  # raw "BAR 1: current size: 64GB, ..." lines
    capabilities: list[str] = field(default_factory=list)  # every "Capabilities: [xx] Name" title, in order
    access_denied: bool = False  # "Capabilities: <access denied>"
    unknown_lines: list[str] = field(default_factory=list)  # lines the parser kept but did not understand
    warnings: list[str] = field(default_factory=list)  # per-device parse problems
    raw: str = ""  # the whole device block, as it came (for evidence and re-parsing)
    kind: DeviceKind = DeviceKind.OTHER
    physical_slot: str | None = None  # "Physical Slot: 2-1"

    @property
    def is_virtual_function(self) -> bool:
        """An SR-IOV VF: its link fields are not real (lspci prints Speed unknown / Width x0)."""
        return "Virtual Function" in self.vendor_device

    @property
    def bdf(self) -> str:
        """Canonical address with domain: ``0000:03:00.0``."""
        return f"{self.domain:04x}:{self.bus:02x}:{self.dev:02x}.{self.fn}"

    @property
    def is_bridge(self) -> bool:
        return self.bus_range is not None or "bridge" in self.class_name.lower()


@dataclass(slots=True)
class LspciDump:
    """A parsed ``lspci -vvv`` capture: devices in the order printed, plus dump-level warnings."""

    devices: list[PciDevice] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # e.g. "not run as root: capabilities hidden"
    garbage_lines: list[str] = field(default_factory=list)  # lines outside any device block

    def by_bdf(self) -> dict[str, PciDevice]:
        return {d.bdf: d for d in self.devices}


@dataclass(slots=True)
class NodeFacts:
    """All facts about one node that the judges read. Built from a bundle (or a lone lspci file)."""

    name: str
    lspci: LspciDump
    cmdline: str | None = None  # /proc/cmdline
    source: str = ""  # path it came from
    extra: dict[str, str] = field(default_factory=dict)  # other raw files of the bundle, by file name


@dataclass(frozen=True, slots=True)
class Finding:
    """One judgement about one device (or the node as a whole) of one node.

    ``check`` is the rule id (``acs-redirect``, ``link-width``...); fleet-diff findings use ``diff-*``.
    ``device`` is the PCI address as lspci printed it ("" for node-level findings).
    """

    node: str
    device: str
    check: str
    severity: Severity
    field: str
    value: str
    expected: str
    message: str
    evidence: str = ""  # the raw line that shows it
    hint: str = ""  # how to fix it
    known_bad: bool = True  # diff: the differing field is known to break RDMA/NCCL

    def to_json(self) -> dict[str, str]:
        return {
            "node": self.node,
            "device": self.device,
            "check": self.check,
            "severity": str(self.severity),
            "field": self.field,
            "value": self.value,
            "expected": self.expected,
            "message": self.message,
            "evidence": self.evidence,
            "hint": self.hint,
        }
