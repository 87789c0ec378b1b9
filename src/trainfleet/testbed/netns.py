"""K "hosts" on one machine: network namespaces ``tfh1..tfhK`` joined by veth pairs to a bridge ``tfbr0``.

Host ``tfhN`` owns ``eth0`` at ``10.231.0.N/24`` inside its namespace; its peer ``tfvN`` sits on the bridge in
the root namespace. The bridge holds one host-side address, ``10.231.0.254/24`` (``HOST_SIDE_ADDRESS``), so
a supervisor in the root namespace can listen where the hosts' agents reach it; the bridge has no uplink
and the namespaces have no default route, so testbed traffic cannot leave the machine. Links can be
degraded with ``tc tbf`` (both directions: the host's ``eth0`` egress and the bridge port ``tfvN`` egress,
which is the host's ingress) and made lossy with an nftables ``numgen random`` drop rule inside the host
(the kernel here has no ``netem``).

Every command is an argv list run with :mod:`subprocess`; no shell is involved. Every operation is
idempotent: ``up`` repairs whatever a partial earlier setup left, and ``down`` removes everything it finds
with the testbed's names, tolerating missing pieces. All of it needs root (``CAP_NET_ADMIN``).
"""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from trainfleet.errors import InputError, NetworkSetupError

BRIDGE = "tfbr0"
HOST_PREFIX = "tfh"
PORT_PREFIX = "tfv"
HOST_IFNAME = "eth0"
SUBNET = ipaddress.IPv4Network("10.231.0.0/24")
HOST_SIDE_ADDRESS = str(SUBNET.broadcast_address - 1)  # 10.231.0.254 on the bridge, in the root namespace
MAX_HOSTS = 200
CHAOS_TABLE = "tfchaos"
_HOST_RE = re.compile(rf"^(?:{HOST_PREFIX})?([0-9]+)$")
_CMD_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class Host:
    """One namespaced host: its namespace name, index, address and bridge-side port."""

    name: str
    index: int
    address: str
    port: str


@dataclass(frozen=True)
class HostStatus:
    """What the kernel reports for one host: present pieces, shaping and loss currently in force."""

    host: Host
    namespace: bool
    link_up: bool
    address_ok: bool
    egress_rate: str | None
    ingress_rate: str | None
    loss_pct: float | None


def host(ref: str | int) -> Host:
    """Resolve ``3``, ``"3"`` or ``"tfh3"`` to its :class:`Host`; anything else is an :class:`InputError`."""
    match = _HOST_RE.match(str(ref).strip())
    index = int(match.group(1)) if match else 0
    if not 1 <= index <= MAX_HOSTS:
        raise InputError(f"host {ref!r}: expected {HOST_PREFIX}1..{HOST_PREFIX}{MAX_HOSTS} or a number")
    return Host(
        name=f"{HOST_PREFIX}{index}",
        index=index,
        address=str(SUBNET.network_address + index),
        port=f"{PORT_PREFIX}{index}",
    )


def _run(argv: Sequence[str], *, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(
            list(argv), input=stdin, capture_output=True, text=True, timeout=_CMD_TIMEOUT_S, check=False
        )
    except FileNotFoundError as exc:
        raise NetworkSetupError(f"{argv[0]} not found; install iproute2 and nftables") from exc
    except subprocess.TimeoutExpired as exc:
        raise NetworkSetupError(f"timed out after {_CMD_TIMEOUT_S:.0f} s", argv=list(argv)) from exc
    if check and proc.returncode != 0:
        stderr = proc.stderr or f"exit status {proc.returncode}"
        raise NetworkSetupError("testbed command failed", argv=list(argv), stderr=stderr)
    return proc


def _require_root() -> None:
    if os.geteuid() != 0:
        raise NetworkSetupError("the namespaced testbed needs root (CAP_NET_ADMIN)")


def _namespaces() -> set[str]:
    out = _run(["ip", "netns", "list"]).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _root_links() -> set[str]:
    out = _run(["ip", "-o", "link", "show"]).stdout
    names = set()
    for line in out.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.add(parts[1].strip().split("@")[0])
    return names


def _testbed_hosts(namespaces: set[str], links: set[str]) -> list[Host]:
    found = {n for n in namespaces if _HOST_RE.match(n) and n.startswith(HOST_PREFIX)}
    found |= {HOST_PREFIX + n[len(PORT_PREFIX) :] for n in links if re.fullmatch(rf"{PORT_PREFIX}[0-9]+", n)}
    hosts = []
    for name in found:
        try:
            hosts.append(host(name))
        except InputError:
            continue
    return sorted(hosts, key=lambda h: h.index)


def in_host(ref: str | int | Host, argv: Sequence[str]) -> list[str]:
    """Return the argv that runs ``argv`` inside the host's namespace (``ip netns exec tfhN ...``)."""
    h = ref if isinstance(ref, Host) else host(ref)
    return ["ip", "netns", "exec", h.name, *argv]


def exec_in(
    ref: str | int | Host, argv: Sequence[str], *, timeout_s: float = 60.0
) -> subprocess.CompletedProcess:
    """Run ``argv`` inside the host's namespace and return the finished process (output captured as text)."""
    return subprocess.run(in_host(ref, argv), capture_output=True, text=True, timeout=timeout_s, check=False)


def up(k: int) -> list[Host]:
    """Make the testbed exactly hosts ``tfh1..tfhK`` on ``tfbr0``; repair partial state; return the hosts."""
    if not 1 <= k <= MAX_HOSTS:
        raise InputError(f"host count {k}: expected 1..{MAX_HOSTS}")
    _require_root()
    namespaces, links = _namespaces(), _root_links()
    for extra in (h for h in _testbed_hosts(namespaces, links) if h.index > k):
        _remove_host(extra, namespaces, links)
    if BRIDGE not in links:
        _run(["ip", "link", "add", BRIDGE, "type", "bridge"])
    _run(["ip", "addr", "replace", f"{HOST_SIDE_ADDRESS}/{SUBNET.prefixlen}", "dev", BRIDGE])
    _run(["ip", "link", "set", BRIDGE, "up"])
    hosts = [host(i) for i in range(1, k + 1)]
    for h in hosts:
        _ensure_host(h, namespaces, links)
    return hosts


def _ensure_host(h: Host, namespaces: set[str], links: set[str]) -> None:
    if h.name not in namespaces:
        _run(["ip", "netns", "add", h.name])
    inner = _run(["ip", "-n", h.name, "link", "show", HOST_IFNAME], check=False).returncode == 0
    if h.port in links and not inner:
        _run(["ip", "link", "del", h.port], check=False)  # half-made pair from an interrupted setup
    if not inner or h.port not in links:
        if inner:
            _run(["ip", "-n", h.name, "link", "del", HOST_IFNAME], check=False)
        _run(["ip", "link", "add", h.port, "type", "veth", "peer", "name", HOST_IFNAME, "netns", h.name])
    _run(["ip", "link", "set", h.port, "master", BRIDGE])
    _run(["ip", "link", "set", h.port, "up"])
    _run(["ip", "-n", h.name, "addr", "replace", f"{h.address}/{SUBNET.prefixlen}", "dev", HOST_IFNAME])
    _run(["ip", "-n", h.name, "link", "set", HOST_IFNAME, "up"])
    _run(["ip", "-n", h.name, "link", "set", "lo", "up"])


def _remove_host(h: Host, namespaces: set[str], links: set[str]) -> None:
    if h.name in namespaces:
        _kill_namespace_processes(h)
        _run(["ip", "netns", "del", h.name], check=False)
    if h.port in links or h.port in _root_links():
        # A process that outlived the kill can pin the namespace and so the pair; deleting our end frees both.
        _run(["ip", "link", "del", h.port], check=False)


def _kill_namespace_processes(h: Host) -> None:
    out = _run(["ip", "netns", "pids", h.name], check=False).stdout
    for pid in (int(p) for p in out.split() if p.isdigit()):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue


def down() -> int:
    """Remove every testbed host, port and the bridge, killing processes left inside; return hosts removed."""
    _require_root()
    namespaces, links = _namespaces(), _root_links()
    hosts = _testbed_hosts(namespaces, links)
    for h in hosts:
        _remove_host(h, namespaces, links)
    if BRIDGE in _root_links():
        _run(["ip", "link", "del", BRIDGE])
    return len(hosts)


def hosts_up() -> list[Host]:
    """The testbed hosts whose namespace exists now, in index order."""
    return _testbed_hosts(_namespaces(), set())


def _burst_bytes(rate_mbit: float) -> int:
    # tbf needs a bucket of at least rate/HZ; 10 ms worth of traffic (>= 32 KiB) keeps the shaped rate close
    # to the configured one at both 10 Mbit and 10 Gbit.
    return max(32 * 1024, int(rate_mbit * 1e6 / 8 * 0.010))


def degrade(ref: str | int | Host, rate_mbit: float) -> None:
    """Limit the host's link to ``rate_mbit`` both ways with ``tc tbf``, replacing earlier shaping."""
    h = ref if isinstance(ref, Host) else host(ref)
    if not 0.01 <= rate_mbit <= 100_000:
        raise InputError(f"rate {rate_mbit!r} Mbit/s: expected 0.01..100000")
    _require_root()
    rate = f"{rate_mbit:g}mbit"
    tbf = ["tbf", "rate", rate, "burst", str(_burst_bytes(rate_mbit)), "latency", "400ms"]
    _run(["ip", "netns", "exec", h.name, "tc", "qdisc", "replace", "dev", HOST_IFNAME, "root", *tbf])
    _run(["tc", "qdisc", "replace", "dev", h.port, "root", *tbf])


def loss(ref: str | int | Host, pct: float) -> None:
    """Drop ``pct`` percent of the host's packets at random, in and out, with one nftables table."""
    h = ref if isinstance(ref, Host) else host(ref)
    if not 0 < pct <= 100:
        raise InputError(f"loss {pct!r}%: expected more than 0 and at most 100")
    _require_root()
    per_10k = round(pct * 100)
    rule = "drop" if per_10k >= 10000 else f"numgen random mod 10000 < {per_10k} drop"
    hook = "filter hook {} priority 0; policy accept"
    script = (  # "add" then "delete" makes the replacement work whether or not the table exists
        f"add table inet {CHAOS_TABLE}\n"
        f"delete table inet {CHAOS_TABLE}\n"
        f"table inet {CHAOS_TABLE} {{\n"
        f'  chain out {{ type {hook.format("output")}; oifname "{HOST_IFNAME}" {rule}; }}\n'
        f'  chain in {{ type {hook.format("input")}; iifname "{HOST_IFNAME}" {rule}; }}\n'
        "}\n"
    )
    _run(["ip", "netns", "exec", h.name, "nft", "-f", "-"], stdin=script)


def heal(ref: str | int | Host | None = None) -> None:
    """Remove shaping and loss from one host, or from every testbed host when ``ref`` is None."""
    _require_root()
    targets = [ref if isinstance(ref, Host) else host(ref)] if ref is not None else hosts_up()
    for h in targets:
        _run(["ip", "netns", "exec", h.name, "tc", "qdisc", "del", "dev", HOST_IFNAME, "root"], check=False)
        _run(["tc", "qdisc", "del", "dev", h.port, "root"], check=False)
        _run(["ip", "netns", "exec", h.name, "nft", "delete", "table", "inet", CHAOS_TABLE], check=False)


def _tbf_rate(qdisc_text: str) -> str | None:
    match = re.search(r"qdisc tbf .*?rate (\S+)", qdisc_text)
    return match.group(1) if match else None


def _output(argv: Sequence[str]) -> str:
    proc = _run(argv, check=False)
    return proc.stdout if proc.returncode == 0 else ""


def status() -> list[HostStatus]:
    """Report each testbed host found: namespace, link, address, tbf rates and nftables loss in force."""
    _require_root()
    namespaces, links = _namespaces(), _root_links()
    report = []
    for h in _testbed_hosts(namespaces, links):
        present = h.name in namespaces
        inside = ["ip", "netns", "exec", h.name]
        addr = _output(["ip", "-n", h.name, "-o", "addr", "show", "dev", HOST_IFNAME]) if present else ""
        state = _output(["ip", "-n", h.name, "link", "show", HOST_IFNAME]) if present else ""
        egress = _output([*inside, "tc", "qdisc", "show", "dev", HOST_IFNAME]) if present else ""
        ingress = _output(["tc", "qdisc", "show", "dev", h.port]) if h.port in links else ""
        rules = _output([*inside, "nft", "list", "table", "inet", CHAOS_TABLE]) if present else ""
        found = re.search(r"mod 10000 < (\d+)", rules) or re.search(r"\"eth0\" (drop)", rules)
        report.append(
            HostStatus(
                host=h,
                namespace=present,
                link_up="state UP" in state or ",UP" in state,
                address_ok=f"inet {h.address}/" in addr,
                egress_rate=_tbf_rate(egress),
                ingress_rate=_tbf_rate(ingress),
                loss_pct=(100.0 if found.group(1) == "drop" else int(found.group(1)) / 100)
                if found
                else None,
            )
        )
    return report
