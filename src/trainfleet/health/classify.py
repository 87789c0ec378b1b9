"""What a PCI device is for the rules (GPU, RDMA NIC, switch port...), from class, vendor and names.

Works on what ``lspci`` printed with or without ``-nn``: numeric ids are used when present, the
printed names otherwise. Pure and cheap: called once per parsed device block (and memoised with it).
"""

from __future__ import annotations

import re

from trainfleet.health.model import DeviceKind, PciDevice, PortType

# Vendor ids (PCI-SIG) and the names lspci prints for them.
_NVIDIA, _AMD_ATI, _AMD, _INTEL, _HABANA = "10de", "1002", "1022", "8086", "1da3"
_MELLANOX, _BROADCOM, _AMAZON = "15b3", "14e4", "1d0f"

_GPU_CLASSES = ("0300", "0302", "0380", "1200")  # VGA, 3D, display, processing accelerator
_GPU_CLASS_NAMES = (
    "vga compatible controller", "3d controller", "display controller", "processing accelerators",
)
_NET_CLASSES = ("0200", "0207", "0280")  # Ethernet, InfiniBand, other network
_NET_CLASS_NAMES = ("ethernet controller", "infiniband controller", "network controller")
_GPU_VENDOR_NAMES = re.compile(
    r"^(?:NVIDIA Corporation|Advanced Micro Devices, Inc\. \[AMD/ATI\]|Intel Corporation|Habana Labs)"
)
_RDMA_NAMES = re.compile(
    r"Mellanox|ConnectX|BlueField|NetXtreme-E|BCM57[45]\d\d|BCM576\d\d|\bRDMA\b|E810|E830|X722"
    r"|Elastic Fabric Adapter|\bEFA\b|Omni-Path",
)
_NVSWITCH_NAME = re.compile(r"NVSwitch", re.IGNORECASE)

_PORT_KINDS = {
    PortType.ROOT_PORT: DeviceKind.ROOT_PORT,
    PortType.UPSTREAM: DeviceKind.SWITCH_UPSTREAM,
    PortType.DOWNSTREAM: DeviceKind.SWITCH_DOWNSTREAM,
}


def _is_class(dev: PciDevice, ids: tuple[str, ...], names: tuple[str, ...]) -> bool:
    if dev.class_id:
        return dev.class_id.lower() in ids
    return dev.class_name.lower() in names


def _vendor_is(dev: PciDevice, ids: tuple[str, ...]) -> bool | None:
    """True/False when lspci printed a vendor id, None when it did not (decide by name)."""
    return None if dev.vendor_id is None else dev.vendor_id.lower() in ids


def classify(dev: PciDevice) -> DeviceKind:
    """The role of ``dev``; switch and root ports are recognised from the Express port type."""
    name = dev.vendor_device
    if dev.express is not None and dev.express.port_type in _PORT_KINDS:
        return _PORT_KINDS[dev.express.port_type]
    cls = dev.class_name.lower()
    if (dev.class_id or "").startswith("06") or "bridge" in cls:
        nvidia = _vendor_is(dev, (_NVIDIA,))
        if (nvidia or (nvidia is None and name.startswith("NVIDIA"))) and _NVSWITCH_NAME.search(name):
            return DeviceKind.NVSWITCH
        return DeviceKind.BRIDGE
    if _is_class(dev, _GPU_CLASSES, _GPU_CLASS_NAMES):
        gpu_vendor = _vendor_is(dev, (_NVIDIA, _AMD_ATI, _AMD, _INTEL, _HABANA))
        if gpu_vendor or (gpu_vendor is None and _GPU_VENDOR_NAMES.match(name)):
            return DeviceKind.GPU
        return DeviceKind.OTHER  # BMC / emulated VGA (ASPEED, Matrox, Cirrus Logic)
    if _is_class(dev, _NET_CLASSES, _NET_CLASS_NAMES):
        rdma_driver = dev.driver in ("irdma", "efa")
        if _vendor_is(dev, (_MELLANOX, _AMAZON)) or _RDMA_NAMES.search(name) or rdma_driver:
            return DeviceKind.RDMA_NIC
        return DeviceKind.NIC
    if _is_class(dev, ("0108",), ("non-volatile memory controller",)):
        return DeviceKind.NVME
    return DeviceKind.OTHER
