"""Fleet diff: find the nodes whose PCIe settings differ from the majority of their peers.

Input: the distinct node signatures (:mod:`trainfleet.health.signature`) with the nodes that have each —
most of a fleet is identical, so a 12,500-node fleet is a handful of signatures. Nodes are grouped into
*families* of the same platform: same bridges (root ports, switch ports) at the same addresses, so a node
whose GPU fell off the bus stays in its family and the missing GPU is reported; a family that lost a whole
switch joins the family it overlaps by >= 80 %. Inside a family, for each (device position, field), the
strict-majority value is the norm and every node with another value gets a ``diff-field`` finding; a
device most nodes have and some lack gives ``diff-missing-device``; the reverse ``diff-extra-device``;
another model in the same slot ``diff-model``. Ties (no strict majority) are not reported: there is no
norm to name. Fields known to break RDMA/NCCL (``signature.KNOWN_BAD``) are flagged ``known_bad``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

from trainfleet.health.model import DeviceKind, Finding, Severity
from trainfleet.health.rules.context import kind_name
from trainfleet.health.signature import FIELD_RANK, KNOWN_BAD, NODE_POSITION, DevSig, NodeSig

Group = tuple[NodeSig, Sequence[str]]  # a distinct signature and the nodes that have it
MERGE_OVERLAP = 0.8
_VITAL = {str(DeviceKind.GPU), str(DeviceKind.RDMA_NIC), str(DeviceKind.NVSWITCH)}
_HINT = ("compare this node with a good one (trainfleet doctor GOOD BAD) and set the BIOS / firmware / "
         "kernel option that makes it match the fleet")


def _bridge_shape(sig: NodeSig) -> frozenset[tuple[str, str]]:
    kinds = {str(DeviceKind.ROOT_PORT), str(DeviceKind.SWITCH_UPSTREAM), str(DeviceKind.SWITCH_DOWNSTREAM),
             str(DeviceKind.BRIDGE)}
    shape = frozenset((d.bdf, d.model) for d in sig if d.kind in kinds)
    return shape or frozenset((d.bdf, d.model) for d in sig)


def _full_shape(sig: NodeSig) -> frozenset[tuple[str, str]]:
    return frozenset((d.bdf, d.model) for d in sig)


def families(groups: Sequence[Group]) -> list[list[Group]]:
    """Group signatures by platform (bridge layout), merging near-identical layouts; biggest family first."""
    by_shape: dict[frozenset[tuple[str, str]], list[Group]] = defaultdict(list)
    for g in groups:
        by_shape[_bridge_shape(g[0])].append(g)
    fams = sorted(by_shape.values(), key=lambda f: -sum(len(g[1]) for g in f))
    merged: list[list[Group]] = []
    refs: list[frozenset[tuple[str, str]]] = []
    for fam in fams:
        shape = _full_shape(max(fam, key=lambda g: len(g[1]))[0])
        for ref, target in zip(refs, merged, strict=True):
            union = len(shape | ref)
            if union and len(shape & ref) / union >= MERGE_OVERLAP:
                target.extend(fam)
                break
        else:
            merged.append(list(fam))
            refs.append(shape)
    return merged


def reduce_flags(value: str, expected: str) -> tuple[str, str]:
    """For flag lists (``SrcValid+ TransBlk- ...``) keep only the flags that differ."""
    a, b = value.split(), expected.split()
    if len(a) != len(b) or not a or not all(t[-1:] in "+-" and len(t) > 1 for t in a + b):
        return value, expected
    if [t[:-1] for t in a] != [t[:-1] for t in b]:
        return value, expected
    pairs = [(x, y) for x, y in zip(a, b, strict=True) if x != y]
    return " ".join(p[0] for p in pairs), " ".join(p[1] for p in pairs)


def _where(rep: DevSig) -> str:
    if rep.bdf == NODE_POSITION:
        return "the node"
    return f"{rep.bdf} ({rep.role})" if rep.role else rep.bdf


def _finding(node: str, rep: DevSig, check: str, severity: Severity, field: str, value: str, expected: str,
             message: str, known: bool, evidence: str = "") -> Finding:
    return Finding(node=node, device=rep.address, check=check, severity=severity, field=field, value=value,
                   expected=expected, message=message, evidence=evidence, hint=_HINT, known_bad=known)


def _flat(lists: list[Sequence[str]]) -> list[str]:
    return [n for names in lists for n in names]


def _diff_position(members: dict[DevSig | None, list[Sequence[str]]], total: int) -> list[Finding]:
    """Findings for one device position in one family; ``members`` maps each distinct device signature
    found there (None: the device is absent) to the node-name lists that have it."""
    out: list[Finding] = []
    count = {d: sum(len(n) for n in lists) for d, lists in members.items()}
    have = [d for d in members if d is not None]
    n_have = sum(count[d] for d in have)
    models: Counter[str] = Counter()
    for d in have:
        models[d.model] += count[d]
    model, n_model = models.most_common(1)[0]
    rep = max((d for d in have if d.model == model), key=lambda d: count[d])
    vital = rep.kind in _VITAL
    if rep.bdf != NODE_POSITION and 2 * n_have > total and None in members:
        msg = (f"{kind_name(rep.kind)} {rep.bdf} ({rep.model}) is missing; {n_have} of {total} nodes have it"
               + (" — fell off the bus?" if vital else ""))
        out += [_finding(n, rep, "diff-missing-device", Severity.ERROR if vital else Severity.WARNING,
                         "device", "absent", rep.model, msg, True) for n in _flat(members[None])]
    elif rep.bdf != NODE_POSITION and 2 * n_have < total:
        msg = (f"extra {kind_name(rep.kind)} {rep.bdf} ({rep.model}) that {total - n_have} of {total} "
               "nodes lack")
        out += [_finding(n, d, "diff-extra-device", Severity.INFO, "device", d.model, "absent", msg, False)
                for d in have for n in _flat(members[d])]
    if 2 * n_model > n_have:
        for d in have:
            if d.model != model:
                msg = f"{_where(rep)} is a {d.model}; {n_model} nodes have a {model}"
                out += [_finding(n, d, "diff-model", Severity.WARNING, "model", d.model, model, msg, False)
                        for n in _flat(members[d])]
    same = [d for d in have if d.model == model]
    values: dict[str, Counter[str]] = defaultdict(Counter)
    for d in same:
        for field, value in d.fields:
            values[field][value] += count[d]
    for field, counter in values.items():
        if len(counter) < 2:
            continue
        norm, n_norm = counter.most_common(1)[0]
        if 2 * n_norm <= sum(counter.values()):
            continue  # no strict majority: no norm to compare with
        known = field in KNOWN_BAD
        why = f", {KNOWN_BAD[field]}" if known else ""
        for d in same:
            value = dict(d.fields).get(field)
            if value is None or value == norm:
                continue
            shown, expected = reduce_flags(value, norm)
            msg = f"{field} {shown} on {_where(d)}{why}; {n_norm} nodes have {expected}"
            out += [_finding(n, d, "diff-field", Severity.WARNING if known else Severity.INFO, field, shown,
                             expected, msg, known, f"{field}: {value}") for n in _flat(members[d])]
    return out


def diff_fleet(groups: Sequence[Group]) -> list[Finding]:
    """Every ``diff-*`` finding of the fleet given as (signature, node names) groups, ranked: known-bad
    fields first (in ``KNOWN_BAD`` order), then by severity, then unknown fields."""
    out: list[Finding] = []
    for fam in families(groups):
        total = sum(len(names) for _, names in fam)
        if total < 3 or len(fam) < 2:
            continue  # a lone node or an identical family has nothing to differ from
        all_pos = {d.bdf for sig, _ in fam for d in sig}
        positions: dict[str, dict[DevSig | None, list[Sequence[str]]]] = {p: {} for p in all_pos}
        for sig, names in fam:
            by_pos = {d.bdf: d for d in sig}
            for pos in all_pos:
                positions[pos].setdefault(by_pos.get(pos), []).append(names)
        for pos in sorted(positions):
            out.extend(_diff_position(positions[pos], total))
    return sorted(out, key=rank_key)


_SEVERITY_ORDER = {Severity.ERROR: 0, Severity.WARNING: 1, Severity.INFO: 2}


def rank_key(f: Finding) -> tuple[int, int, int, str, str]:
    """Sort key: known-bad before unknown, worse severity first, then the field's known-bad rank."""
    field_rank = -1 if f.check == "diff-missing-device" else FIELD_RANK.get(f.field, len(FIELD_RANK))
    return (0 if f.known_bad else 1, _SEVERITY_ORDER[f.severity], field_rank, f.device, f.node)
