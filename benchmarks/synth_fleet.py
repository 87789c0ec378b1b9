"""Synthesise a fleet of HGX-like node bundles from REAL ``lspci -vvv`` device blocks, with known faults.

Where the blocks come from (see ../shared/fixtures/lspci/SOURCES.md):

* the platform -- host bridges, AMD Genoa root ports, PEX890xx switch ports, H100 SXM5 GPUs, the Micron 7450
  NVMe, the switch management endpoints, BMC/USB/SATA functions -- is the full dump
  ``linuxhw_17_hpe-cray-xd665-4xh100sxm5-2xcx5-pex890xx-acs-on_vvnn.txt`` (HPE Cray XD665, ``lspci -vvnn``);
* the RDMA NICs are the ConnectX-7 blocks of ``08_lenovo-sd665n-v3-4xh100sxm-cx7-4chip-mezz_vvv-cx7-only.txt``
  (03:00.0 on NUMA 0, a3:00.0 on NUMA 1), re-printed the way ``lspci -nn`` with the dump-17 pciutils prints
  them: ``[0200]`` class and ``[15b3:1021]`` ids on the header, ``[15b3:0055]`` on the subsystem, no ``(ok)``.

The node: 4 PEX890xx switches (2 per socket), each under its own root port with 4 downstream ports in use:
NIC, GPU, NIC, GPU (8 GPUs + 8 NICs per node), plus the original NVMe / management endpoints. Buses are
re-enumerated depth-first per root segment (as firmware does), so every header BDF and every bridge's
``Bus: primary/secondary/subordinate`` line form a valid tree. IOMMU groups are renumbered in print order.
The fleet baseline has ACS redirection off (dump 17 shipped with it on: that line is rewritten to the
all-minus form printed by four other functions of the same dump).

Per node, what legitimately differs: every NIC's VPD serial/UUID, and every Device Serial Number (dump 17
was published with them anonymised as ``...``; real ones are unique per chip: each H100, each switch chip
with all its ports, each card), so 46 of the ~180 blocks of a node are byte-unique to it; on 1 node in 5
the IRQ numbers (another boot order); on 1 node in 10 the 64-bit BAR addresses and bridge windows (another
BIOS allocation). Faults (one each, at nodes spread over the fleet) are listed in ``ground_truth.json``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIXTURE_DIRS = (REPO / "tests" / "fixtures" / "lspci", REPO / "tests" / "fixtures",
                REPO.parent / "shared" / "fixtures" / "lspci")
PLATFORM_DUMP = "linuxhw_17_hpe-cray-xd665-4xh100sxm5-2xcx5-pex890xx-acs-on_vvnn.txt"
CX7_DUMP = "08_lenovo-sd665n-v3-4xh100sxm-cx7-4chip-mezz_vvv-cx7-only.txt"

HEADER = re.compile(r"^(?:([0-9a-f]{4}):)?([0-9a-f]{2}):([0-9a-f]{2})\.([0-7]) ")
BUS_LINE = re.compile(r"Bus: primary=([0-9a-f]{2}), secondary=([0-9a-f]{2}), subordinate=([0-9a-f]{2})")
IRQ = re.compile(r"(routed to IRQ )(\d+)")
IOMMU = re.compile(r"(\tIOMMU group: )(\d+)")
BIG_ADDR = re.compile(r"(Memory at |memory behind bridge: |-)([0-9a-f]{11})\b")
DSN_ANON = "Device Serial Number ..."  # how hw-probe anonymised the serials of dump 17
ACS_ON = "SrcValid+ TransBlk- ReqRedir+ CmpltRedir+ UpstreamFwd+ EgressCtrl- DirectTrans-"
ACS_OFF = "SrcValid- TransBlk- ReqRedir- CmpltRedir- UpstreamFwd- EgressCtrl- DirectTrans-"
CMDLINE = ("BOOT_IMAGE=/vmlinuz-6.5.0-26-generic root=UUID=3b1f6c1e-7a52-4f0e-9d1c-2f3c1a7e9b10 ro "
           "amd_iommu=on iommu=pt pci=realloc=off hugepagesz=1G hugepages=64\n")


def find_fixture(name: str) -> Path:
    """The fixture file ``name``: the repo's copy when there is one, else the shared corpus."""
    for folder in FIXTURE_DIRS:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{name}: not in any of {', '.join(str(d) for d in FIXTURE_DIRS)}")


def split_blocks(text: str) -> list[str]:
    """Device blocks of an lspci dump, in print order, without trailing blank lines."""
    blocks, cur = [], []
    for line in text.splitlines():
        if HEADER.match(line):
            if cur:
                blocks.append("\n".join(cur).rstrip("\n"))
            cur = [line]
        elif cur and line[:1].isspace() and line.strip():  # drops stderr noise such as "lspci: Unable to ..."
            cur.append(line)
    if cur:
        blocks.append("\n".join(cur).rstrip("\n"))
    return blocks


def block_addr(block: str) -> tuple[int, int, int]:
    m = HEADER.match(block)
    assert m, block[:80]
    return int(m.group(2), 16), int(m.group(3), 16), int(m.group(4))


@dataclass
class Dev:
    """A device of the node template: its block text (header address is rewritten at enumeration)."""

    block: str
    dev: int
    fn: int
    role: str = ""  # "gpu3", "nic5", "dsp-gpu3", ... for the positions faults are planted on
    children: list[Dev] | None = None  # bridges: devices on the secondary bus
    bus: int = -1  # assigned by enumerate_buses
    secondary: int = -1
    subordinate: int = -1

    @property
    def bdf(self) -> str:
        return f"0000:{self.bus:02x}:{self.dev:02x}.{self.fn}"


def _tree(blocks: list[str]) -> list[tuple[int, list[Dev]]]:
    """Root segments [(root bus, top-level devices)] of a dump, bridges holding their secondary bus."""
    by_bus: dict[int, list[tuple[int, int, str]]] = {}
    secondaries: dict[tuple[int, int, int], int] = {}
    for b in blocks:
        bus, dev, fn = block_addr(b)
        by_bus.setdefault(bus, []).append((dev, fn, b))
        m = BUS_LINE.search(b)
        if m:
            secondaries[(bus, dev, fn)] = int(m.group(2), 16)
    child_buses = set(secondaries.values())

    def build(bus: int) -> list[Dev]:
        out = []
        for dev, fn, b in sorted(by_bus.get(bus, [])):
            sec = secondaries.get((bus, dev, fn))
            out.append(Dev(b, dev, fn, children=None if sec is None else build(sec)))
        return out

    return [(bus, build(bus)) for bus in sorted(by_bus) if bus not in child_buses]


def _to_nn(block: str) -> str:
    """Re-print a ConnectX-7 block of a plain ``-vvv`` dump as ``-vvv -nn`` with newer pciutils prints it."""
    lines = block.splitlines()
    lines[0] = lines[0].replace("Ethernet controller:", "Ethernet controller [0200]:") + " [15b3:1021]"
    out = [lines[0]]
    for line in lines[1:]:
        line = line.replace("Subsystem: Mellanox Technologies Device 0055",
                            "Subsystem: Mellanox Technologies Device [15b3:0055]")
        if "LnkSta:" in line:
            line = line.replace(" (ok)", "")
        out.append(line)
    return "\n".join(out)


def _shift_addresses(block: str, offset: int) -> str:
    """Move 64-bit BAR addresses / bridge windows (11 hex digits) by ``offset``: another BIOS allocation."""
    return BIG_ADDR.sub(lambda m: f"{m.group(1)}{int(m.group(2), 16) + offset:011x}", block)


def _set_port(block: str, dev: int) -> str:
    return re.sub(r"(LnkCap:\tPort #)\d+", lambda m: f"{m.group(1)}{dev}", block, count=1)


def build_template() -> tuple[list[Dev], dict[str, Dev]]:
    """The node template: devices in lspci print order (bdf assigned) and the role -> device map."""
    platform = split_blocks(find_fixture(PLATFORM_DUMP).read_text())
    cx7 = {block_addr(b)[0]: _to_nn(b) for b in split_blocks(find_fixture(CX7_DUMP).read_text())}
    platform = [b.replace(ACS_ON, ACS_OFF) for b in platform]
    segments = _tree(platform)
    roles: dict[str, Dev] = {}
    switch = 0
    for _root, top in segments:
        for rp in top:
            for usp in rp.children or []:
                if "[1000:c030]" not in usp.block.splitlines()[0] or "Upstream Port" not in usp.block:
                    continue
                old = usp.children or []
                dsp_tpl = next(d for d in old if d.children and "[10de:2330]" in d.children[0].block)
                gpu_tpl = dsp_tpl.children[0].block  # type: ignore[index]
                numa = 0 if "NUMA node: 0" in gpu_tpl else 1
                nic_tpl = cx7[0x03] if numa == 0 else cx7[0xA3]
                keep = [d for d in old if d.children and any(
                    k in d.children[0].block for k in ("Non-Volatile memory", "management endpoint"))]
                new: list[Dev] = []
                for slot in range(4):
                    idx = switch * 2 + slot // 2
                    second = slot // 2 == 1
                    kind = "nic" if slot % 2 == 0 else "gpu"
                    end_tpl = nic_tpl if kind == "nic" else gpu_tpl
                    if second:  # the second card of a kind on this switch sits 256 GiB higher
                        end_tpl = _shift_addresses(end_tpl, 0x4000000000)
                    end = Dev(end_tpl, 0, 0, role=f"{kind}{idx}")
                    dsp = Dev(_set_port(dsp_tpl.block, slot), slot, 0, role=f"dsp-{kind}{idx}",
                              children=[end])
                    roles[end.role], roles[dsp.role] = end, dsp
                    new.append(dsp)
                for n, d in enumerate(keep):
                    d.dev = 4 + n if d.dev != 0x1F else 0x1F
                    new.append(d)
                usp.children = new
                usp.role = f"usp{switch}"
                rp.role = f"rp{switch}"
                roles[usp.role], roles[rp.role] = usp, rp
                switch += 1
    if switch != 4:
        raise RuntimeError(f"{PLATFORM_DUMP}: expected 4 PEX890xx switches, found {switch}")
    ordered: list[Dev] = []
    for root, top in segments:
        nxt = root + 1

        def visit(d: Dev, bus: int) -> None:
            nonlocal nxt
            d.bus = bus
            ordered.append(d)
            if d.children is not None:
                d.secondary = nxt
                nxt += 1
                for c in d.children:
                    visit(c, d.secondary)
                d.subordinate = nxt - 1

        for d in top:
            visit(d, root)
    ordered.sort(key=lambda d: (d.bus, d.dev, d.fn))
    for group, d in enumerate(ordered):
        head, _, rest = d.block.partition("\n")
        m = HEADER.match(head)
        assert m
        head = d.bdf + " " + head[m.end():]
        rest = IOMMU.sub(lambda mm, g=group: f"{mm.group(1)}{g}", rest)
        if d.children is not None:
            rest = BUS_LINE.sub(f"Bus: primary={d.bus:02x}, secondary={d.secondary:02x}, "
                                f"subordinate={d.subordinate:02x}", rest)
        d.block = head + "\n" + rest
    return ordered, roles


@dataclass(frozen=True)
class Fault:
    """One planted fault: at ``node``, on ``device``; ``related`` devices may carry the finding instead."""

    node: str
    kind: str
    device: str
    related: tuple[str, ...]
    detail: str
    keywords: tuple[str, ...]  # a finding names the fault when its check/field/value/message has one


# What a finding about each fault must mention (lower case), so a finding on the right device for another
# reason does not count.
KEYWORDS = {
    "acs-redirect": ("acs", "reqredir", "srcvalid"),
    "link-width-x8": ("width", "x8"),
    "nic-maxreadreq-128": ("maxreadreq", "max-read-req", "read request"),
    "nic-relaxed-ordering-off": ("rlxdord", "relaxed"),
    "gpu-missing": ("missing", "absent", "fell off"),
    "aer-uncorrectable": ("uesta", "cmpltto", "uncorrectable"),
}


@dataclass
class Fleet:
    """A generated fleet on disk: where, how many nodes, the planted faults and the role map."""

    root: Path
    nodes: int
    faults: list[Fault] = field(default_factory=list)
    bytes_written: int = 0


def _node_name(i: int) -> str:
    return f"node{i:05d}"


def _serial(node: int, nic: int) -> tuple[str, str]:
    h = hashlib.blake2b(f"{node}/{nic}".encode(), digest_size=16).hexdigest()
    return "MT" + str(2300 + node % 52).zfill(4) + h[:5].upper(), h


def _plan_faults(nodes: int) -> dict[int, list[tuple[str, str]]]:
    """node index -> [(fault kind, role)]: six faults spread over the fleet (shared nodes on tiny fleets)."""
    kinds = [("acs-redirect", "dsp-gpu2"), ("link-width-x8", "gpu5"), ("nic-maxreadreq-128", "nic1"),
             ("nic-relaxed-ordering-off", "nic6"), ("gpu-missing", "gpu3"), ("aer-uncorrectable", "nic4")]
    plan: dict[int, list[tuple[str, str]]] = {}
    for k, kind in enumerate(kinds):
        idx = (k * nodes // len(kinds) + nodes // (2 * len(kinds)) + 7) % nodes
        plan.setdefault(idx, []).append(kind)
    return plan


def _apply_fault(kind: str, role: str, blocks: dict[str, str]) -> tuple[str, str]:
    """Edit ``blocks`` (role -> text) for one fault; returns (related role, detail)."""
    if kind == "acs-redirect":
        blocks[role] = blocks[role].replace(f"ACSCtl:\t{ACS_OFF}", f"ACSCtl:\t{ACS_ON}")
        detail = "ACSCtl SrcValid+ ReqRedir+ CmpltRedir+ UpstreamFwd+ on a switch port above a GPU"
        return role.removeprefix("dsp-"), detail
    full = "LnkSta:\tSpeed 32GT/s, Width x16"
    if kind == "link-width-x8":
        blocks[role] = blocks[role].replace(full, "LnkSta:\tSpeed 32GT/s, Width x8 (downgraded)")
        dsp = "dsp-" + role  # the port at the other end of the same link trained to the same width
        blocks[dsp] = blocks[dsp].replace(full, "LnkSta:\tSpeed 32GT/s, Width x8")
        return dsp, "GPU link trained at x8 of x16"
    if kind == "nic-maxreadreq-128":
        blocks[role] = blocks[role].replace("MaxReadReq 512 bytes", "MaxReadReq 128 bytes", 1)
        return "dsp-" + role, "NIC DevCtl MaxReadReq 128 bytes (fleet: 512)"
    if kind == "nic-relaxed-ordering-off":
        blocks[role] = blocks[role].replace("\t\t\tRlxdOrd+ ExtTag+", "\t\t\tRlxdOrd- ExtTag+", 1)
        return "dsp-" + role, "NIC DevCtl RlxdOrd- (fleet: RlxdOrd+)"
    if kind == "gpu-missing":
        blocks[role] = ""
        dsp = "dsp-" + role  # the slot's link is down once the GPU has fallen off the bus
        down = blocks[dsp].replace(full, "LnkSta:\tSpeed 2.5GT/s, Width x0")
        blocks[dsp] = down.replace("DLActive+", "DLActive-")
        return dsp, "GPU absent from lspci (fell off the bus)"
    if kind == "aer-uncorrectable":
        blocks[role] = blocks[role].replace("UESta:\tDLP- SDES- TLP- FCP- CmpltTO-",
                                            "UESta:\tDLP- SDES- TLP- FCP- CmpltTO+", 1)
        return "dsp-" + role, "NIC AER UESta CmpltTO+ (completion timeout)"
    raise ValueError(kind)


def _dsn_key(block: str) -> str:
    """Which chip a Device Serial Number belongs to: all functions of one PEX890xx switch share one (with the
    switch's management endpoint); every other card has its own, shared by its functions (same bus)."""
    head = block.split("\n", 1)[0]
    bus = int(head[5:7], 16)
    if "[1000:c030]" in head or "[1000:00b2]" in head:
        return f"pex{bus & 0xE0:02x}"  # one switch per 0x20-bus root segment in this platform
    return f"bus{bus:02x}"


def _dsn(node: int, key: str) -> str:
    return "-".join(f"{b:02x}" for b in hashlib.blake2b(f"{node}/{key}".encode(), digest_size=8).digest())


def node_texts(nodes: int, faults_out: list[Fault]) -> Iterator[tuple[str, str]]:
    """Yield (node name, lspci text) one node at a time; appends the planted faults to ``faults_out``."""
    ordered, roles = build_template()
    role_of = {id(d): d.role for d in ordered if d.role}
    base = [(d.block, role_of.get(id(d), "")) for d in ordered]
    dsn_keys = [(j, _dsn_key(b)) for j, (b, _) in enumerate(base) if DSN_ANON in b]
    plan = _plan_faults(nodes)
    nic_roles = [r for r in roles if r.startswith("nic")]
    for i in range(nodes):
        name = _node_name(i)
        blocks = {r: b for b, r in base if r}
        for nic in nic_roles:
            sn, uuid = _serial(i, int(nic[3:]))
            blocks[nic] = (blocks[nic].replace("X1LM37Z004B", sn)
                           .replace("225918281035ee118000a088c227c450", uuid))
        for kind, role in plan.get(i, []):
            related, detail = _apply_fault(kind, role, blocks)
            faults_out.append(Fault(name, kind, roles[role].bdf, (roles[related].bdf,), detail,
                                    KEYWORDS[kind]))
        parts = [blocks[r] if r else b for b, r in base]
        for j, key in dsn_keys:  # real DSNs differ per device; dump 17 was published anonymised ("...")
            parts[j] = parts[j].replace(DSN_ANON, f"Device Serial Number {_dsn(i, key)}")
        text = "\n\n".join(p for p in parts if p) + "\n\n"
        if i % 5 == 3:  # another boot order: interrupt numbers differ
            text = IRQ.sub(lambda m: f"{m.group(1)}{int(m.group(2)) + 17}", text)
        if i % 10 == 6:  # another BIOS allocation: 64-bit windows 64 GiB higher
            text = _shift_addresses(text, 0x1000000000)
        yield name, text


def write_fleet(root: Path, nodes: int) -> Fleet:
    """Write ``nodes`` bundles ``root/<node>/{lspci.txt,cmdline.txt}`` one at a time, plus ground_truth.json
    beside the fleet directory (``root.parent``), and return what was planted."""
    root.mkdir(parents=True, exist_ok=True)
    fleet = Fleet(root=root, nodes=nodes)
    for name, text in node_texts(nodes, fleet.faults):
        node_dir = root / name
        node_dir.mkdir(exist_ok=True)
        data = text.encode()
        (node_dir / "lspci.txt").write_bytes(data)
        (node_dir / "cmdline.txt").write_text(CMDLINE)
        fleet.bytes_written += len(data) + len(CMDLINE)
    truth = [{"node": f.node, "kind": f.kind, "device": f.device, "related": list(f.related),
              "detail": f.detail, "keywords": list(f.keywords)} for f in fleet.faults]
    (root.parent / "ground_truth.json").write_text(json.dumps(truth, indent=2) + "\n")
    return fleet


if __name__ == "__main__":  # quick look: python benchmarks/synth_fleet.py N DIR
    import sys

    n, out = int(sys.argv[1]), Path(sys.argv[2])
    f = write_fleet(out / "fleet", n)
    print(f"{n} nodes, {f.bytes_written / 1e6:.1f} MB, {len(f.faults)} faults -> {out / 'ground_truth.json'}")
