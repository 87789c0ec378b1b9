"""The doctor pipeline: nodes -> (read, parse, rules, signature) per node, in parallel -> fleet diff.

Streaming for fleets of 10^4 nodes: :func:`judge_node` is a top-level (picklable) function that reads,
parses and judges one node and returns a compact :class:`NodeResult`: worker-local integer ids of its
rule findings (as node-less templates) and of its devices' signatures; each distinct template, device
signature and node signature travels to the parent once per worker. Most nodes of a fleet are
identical: per-node noise (IRQs, MSI and BAR addresses, serials) is dropped before parsing
(:mod:`trainfleet.health.blockwalk`), so identical nodes give the same parsed block objects, and a worker
memoises a whole node's judgement on the identity of its parsed blocks plus its command line. A node like
the last one then costs a file read, one ``startswith`` per block (a few more, and a regex on the changed
lines, for a block with another serial number) and dict hits. The parent judges the first node itself
before forking, so the workers start with its blocks parsed; it keeps one interned signature per distinct
node and diffs those with node counts (:mod:`trainfleet.health.diff`).
"""

from __future__ import annotations

import dataclasses
import heapq
import multiprocessing
import os
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from trainfleet.health.blockwalk import BlockWalker, quiet_text
from trainfleet.health.bundle import NodeSource, iter_sources, load_node
from trainfleet.health.diff import diff_fleet
from trainfleet.health.lspci import parse_lspci
from trainfleet.health.model import Finding, LspciDump, NodeFacts, PciDevice
from trainfleet.health.rules import build_context, run_rules
from trainfleet.health.signature import DevSig, NodeSig, node_signature
from trainfleet.health.topology import build_topology

INLINE_MAX_NODES = 24  # below this, starting worker processes costs more than it saves
CHUNKSIZE = 64
_MEMO_MAX = 256
_FINDING_FIELDS = tuple(f.name for f in dataclasses.fields(Finding))


@dataclass(frozen=True, slots=True)
class NodeResult:
    """What a worker returns for one node: findings plus signature ids (new signatures ride along once)."""

    name: str
    finding_ids: tuple[int, ...]  # worker-local ids of finding templates (findings with node "")
    worker: int
    sig_id: int
    new_findings: tuple[tuple[int, Finding], ...] = ()
    new_devsigs: tuple[tuple[int, DevSig], ...] = ()
    new_sig: tuple[int, ...] | None = None


@dataclass(slots=True)
class DoctorResult:
    """The doctor's verdict on a set of nodes: rule findings then ranked ``diff-*`` findings."""

    nodes: int
    findings: list[Finding] = field(default_factory=list)
    node_names: list[str] = field(default_factory=list)
    distinct_signatures: int = 0

    @property
    def exit_code(self) -> int:
        """0 when no finding has severity ``error``, else 1."""
        return 1 if any(f.severity == "error" for f in self.findings) else 0


class _WorkerState:
    """Per-process memo tables (module global, so each worker keeps its own)."""

    def __init__(self) -> None:
        self.devsig_ids: dict[DevSig, int] = {}
        self.finding_ids: dict[Finding, int] = {}
        self.sig_ids: dict[tuple[int, ...], int] = {}
        self.memo: dict[tuple[object, ...], tuple[tuple[PciDevice, ...], tuple[int, ...], int]] = {}
        self.walker = BlockWalker()  # the byte-level path (quiet_parse_bytes)


_STATE = _WorkerState()


def _reset_state() -> None:
    """Fresh memo tables: ids must be new to the parent that reads them (new run, new worker process)."""
    global _STATE
    _STATE = _WorkerState()


def _fork_state() -> None:
    """A new worker's state: fresh ids and node memo (ids must be new to the parent), but the parse caches
    it inherited from the parent, which judged the first node before forking, kept."""
    global _STATE
    parent, _STATE = _STATE, _WorkerState()
    _STATE.walker = parent.walker


def quiet_parse_bytes(data: bytes) -> LspciDump:
    """``quiet_parse(data.decode("utf-8", errors="replace"))``, without decoding, splitting or hashing the
    blocks the last node already had (see :class:`BlockWalker`)."""
    if b"\r" not in data:
        walked = _STATE.walker.walk(data)
        if walked is not None and walked[0]:
            return _dump(*walked)
    return parse_lspci(quiet_text(data.decode("utf-8", errors="replace")))


def quiet_parse(text: str) -> LspciDump:
    """``parse_lspci(quiet_text(text))``, through the same block cache as :func:`quiet_parse_bytes`."""
    return quiet_parse_bytes(text.encode("utf-8"))


def _dump(devices: list[PciDevice], bdfs: list[str]) -> LspciDump:
    """The dump :func:`parse_lspci` would build from these blocks (same dump-level warnings)."""
    dump = LspciDump(devices=devices)
    denied = sum(d.access_denied for d in devices)
    if denied:
        dump.warnings.append(f"not run as root: capabilities hidden (<access denied>) on {denied} devices")
    if len(set(bdfs)) != len(bdfs):
        seen: set[str] = set()
        for bdf in bdfs:
            if bdf in seen:
                dump.warnings.append(f"device {bdf} printed more than once")
            seen.add(bdf)
    return dump


def _ids(items: Iterable[Any], table: dict[Any, int], new: list[tuple[int, Any]]) -> tuple[int, ...]:
    """Worker-local ids of ``items``; items never sent before are appended to ``new``."""
    out = []
    for item in items:
        i = table.get(item)
        if i is None:
            i = table[item] = len(table)
            new.append((i, item))
        out.append(i)
    return tuple(out)


def _judge_fresh(node: NodeFacts) -> tuple[tuple[int, ...], list[tuple[int, Finding]], tuple[int, ...],
                                           list[tuple[int, DevSig]]]:
    topo = build_topology(node.lspci)
    templates = (dataclasses.replace(f, node="") for f in run_rules(node, topo))
    new_findings: list[tuple[int, Finding]] = []
    finding_ids = _ids(templates, _STATE.finding_ids, new_findings)
    new_devsigs: list[tuple[int, DevSig]] = []
    devsig_ids = _ids(node_signature(build_context(node, topo)), _STATE.devsig_ids, new_devsigs)
    return finding_ids, new_findings, devsig_ids, new_devsigs


def judge_node(source: NodeSource) -> NodeResult:
    """Read, parse and judge one node (rules + signature). Raises UnreadableInput for an unreadable file."""
    node = load_node(source, parse_bytes=quiet_parse_bytes)
    devices = tuple(node.lspci.devices)
    # Identical blocks parse to one shared object (parser memo); the memo entry keeps ``devices`` alive,
    # so the ids in its key cannot be reused while it exists.
    key = (tuple(map(id, devices)), node.cmdline, tuple(node.lspci.warnings) if not devices else ())
    hit = _STATE.memo.get(key)
    if hit is not None:
        _, finding_ids, sig_id = hit
        return NodeResult(node.name, finding_ids, os.getpid(), sig_id)
    finding_ids, new_findings, ids, new_devsigs = _judge_fresh(node)
    sig_id = _STATE.sig_ids.get(ids)
    new_sig = None
    if sig_id is None:
        sig_id = _STATE.sig_ids[ids] = len(_STATE.sig_ids)
        new_sig = ids
    if len(_STATE.memo) >= _MEMO_MAX:
        _STATE.memo.clear()
    _STATE.memo[key] = (devices, finding_ids, sig_id)
    return NodeResult(node.name, finding_ids, os.getpid(), sig_id, tuple(new_findings), tuple(new_devsigs),
                      new_sig)


def _results(sources: Iterable[NodeSource], workers: int) -> Iterator[NodeResult]:
    if workers <= 1:
        yield from map(judge_node, sources)
        return
    rest = iter(sources)
    first = next(rest, None)
    if first is None:
        return
    yield judge_node(first)  # here, so that the workers start with its blocks parsed
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(workers, initializer=_fork_state) as pool:
        yield from pool.imap(judge_node, rest, chunksize=CHUNKSIZE)


def _peek(sources: Iterator[NodeSource], n: int) -> tuple[list[NodeSource], Iterator[NodeSource]]:
    head: list[NodeSource] = []
    for s in sources:
        head.append(s)
        if len(head) > n:
            break
    return head, sources


def run_doctor(paths: Sequence[str], *, workers: int | None = None) -> DoctorResult:
    """Judge every node under ``paths`` and diff the fleet. Raises UnreadableInput for a bad path."""
    sources = iter_sources(paths)  # checks every path now
    _reset_state()
    head, rest = _peek(sources, INLINE_MAX_NODES)
    if workers is None:
        workers = 1 if len(head) <= INLINE_MAX_NODES else min(2, os.cpu_count() or 1)
    stream: Iterable[NodeSource] = head if len(head) <= INLINE_MAX_NODES else _chain(head, rest)

    templates: dict[tuple[int, int], tuple[Any, ...]] = {}  # (worker, id) -> a finding's fields but node
    devsigs: dict[tuple[int, int], DevSig] = {}
    interned_dev: dict[DevSig, DevSig] = {}
    nodes_by_sig: dict[tuple[int, int], list[int]] = defaultdict(list)  # (worker, sig id) -> node indexes
    sigs: dict[tuple[int, int], NodeSig] = {}
    result = DoctorResult(nodes=0)
    findings, node_names = result.findings, result.node_names
    for index, res in enumerate(_results(stream, workers)):
        worker = res.worker
        for i, finding in res.new_findings:
            templates[(worker, i)] = tuple(getattr(finding, name) for name in _FINDING_FIELDS[1:])
        for i, dev in res.new_devsigs:
            devsigs[(worker, i)] = interned_dev.setdefault(dev, dev)
        if res.new_sig is not None:
            sigs[(worker, res.sig_id)] = tuple(devsigs[(worker, i)] for i in res.new_sig)
        nodes_by_sig[(worker, res.sig_id)].append(index)  # not keyed on the signature: hashing it is slow
        for i in res.finding_ids:
            findings.append(Finding(res.name, *templates[(worker, i)]))  # node is Finding's first field
        node_names.append(res.name)
    result.nodes = len(node_names)
    merged: dict[NodeSig, list[list[int]]] = defaultdict(list)  # a signature two workers both saw: once
    for key, indexes in nodes_by_sig.items():
        merged[sigs[key]].append(indexes)
    members = {sig: [node_names[i] for i in heapq.merge(*lists)] for sig, lists in merged.items()}
    result.distinct_signatures = len(members)
    result.findings.extend(diff_fleet(list(members.items())))
    return result


def _chain(head: list[NodeSource], rest: Iterator[NodeSource]) -> Iterator[NodeSource]:
    yield from head
    yield from rest
