"""Find and load node captures: what ``trainfleet doctor PATH...`` accepts.

A PATH is one of:

- a node bundle ``DIR/<host>/`` as written by ``trainfleet collect``: ``lspci.txt`` and, optionally,
  ``cmdline.txt``, ``lspci-tv.txt``, ``manifest.json`` and other raw files (node name = directory name);
- a directory of bundles (nested directories are walked; loose lspci text files in it count as nodes);
- a single lspci text file (node name = file stem).

Enumeration is lazy (a 12,500-node fleet is never listed in memory twice) and loading reads only what the
judges need unless ``extras=True``. A path that does not exist, cannot be read, or holds no capture at all
raises :class:`trainfleet.errors.UnreadableInput` naming it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import chain

from trainfleet.errors import UnreadableInput
from trainfleet.health.lspci import parse_lspci
from trainfleet.health.model import LspciDump, NodeFacts

LSPCI_FILE = "lspci.txt"
CMDLINE_FILE = "cmdline.txt"
_TEXT_SUFFIXES = (".txt", ".lspci", ".log")
_EXTRA_MAX_BYTES = 4 << 20


@dataclass(frozen=True, slots=True)
class NodeSource:
    """Where one node's capture lives: ``lspci`` is the lspci text file, ``bundle`` its directory (or "")."""

    name: str
    lspci: str
    bundle: str = ""
    explicit: bool = False  # named on the command line itself (then an empty capture is an input error)


def read_bytes(path: str) -> bytes:
    """The file's bytes; UnreadableInput when it cannot be read."""
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise UnreadableInput(exc.strerror or "cannot be read", path=path) from None


def read_text(path: str) -> str:
    """The file as text (undecodable bytes replaced); UnreadableInput when it cannot be read."""
    return read_bytes(path).decode("utf-8", errors="replace")


def _walk(directory: str) -> Iterator[NodeSource]:
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError as exc:
        raise UnreadableInput(exc.strerror or "cannot be listed", path=directory) from None
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            lspci = os.path.join(entry.path, LSPCI_FILE)
            if os.path.isfile(lspci):
                yield NodeSource(entry.name, lspci, entry.path)
            else:
                yield from _walk(entry.path)
        elif entry.is_file() and entry.name.endswith(_TEXT_SUFFIXES):
            yield NodeSource(os.path.splitext(entry.name)[0], entry.path)


def _sources_of(path: str) -> Iterator[NodeSource]:
    if not os.path.exists(path):
        raise UnreadableInput("no such file or directory", path=path)
    if not os.access(path, os.R_OK):
        raise UnreadableInput("permission denied", path=path)
    if os.path.isfile(path):
        return iter([NodeSource(os.path.splitext(os.path.basename(path))[0], path, explicit=True)])
    lspci = os.path.join(path, LSPCI_FILE)
    if os.path.isfile(lspci):
        name = os.path.basename(os.path.normpath(path))
        return iter([NodeSource(name, lspci, path, explicit=True)])
    nodes = _walk(path)
    first = next(nodes, None)
    if first is None:
        raise UnreadableInput(f"no node bundle ({LSPCI_FILE}) or lspci text file in it", path=path)
    return chain([first], nodes)


def iter_sources(paths: Iterable[str]) -> Iterator[NodeSource]:
    """Every node under ``paths``, in order. Each path is checked before any node is yielded, so a bad path
    fails fast; the walk itself stays lazy."""
    return chain.from_iterable([_sources_of(os.fspath(p)) for p in paths])


def load_node(source: NodeSource, *, extras: bool = False,
              parse_bytes: Callable[[bytes], LspciDump] | None = None) -> NodeFacts:
    """Read and parse one node. ``extras`` also keeps the bundle's other small text files by name;
    ``parse_bytes`` replaces :func:`parse_lspci` and gets the lspci file's raw bytes (the doctor's drops
    per-node noise first and decodes only what it needs)."""
    raw = read_bytes(source.lspci)
    dump = parse_lspci(raw.decode("utf-8", errors="replace")) if parse_bytes is None else parse_bytes(raw)
    cmdline: str | None = None
    extra: dict[str, str] = {}
    if source.bundle:
        cmd_path = os.path.join(source.bundle, CMDLINE_FILE)
        if os.path.isfile(cmd_path):
            cmdline = read_text(cmd_path).strip()
        if extras:
            for entry in sorted(os.scandir(source.bundle), key=lambda e: e.name):
                skip = entry.name in (LSPCI_FILE, CMDLINE_FILE)
                if entry.is_file() and not skip and entry.stat().st_size <= _EXTRA_MAX_BYTES:
                    extra[entry.name] = read_text(entry.path)
    if source.explicit and not dump.devices:
        raise UnreadableInput("holds no lspci device block (is it lspci -vvv output?)", path=source.lspci)
    return NodeFacts(name=source.name, lspci=dump, cmdline=cmdline, source=source.bundle or source.lspci,
                     extra=extra)


def load_nodes(path: str, *, extras: bool = False) -> list[NodeFacts]:
    """All nodes under one path, loaded (convenience for small fleets and tests)."""
    return [load_node(s, extras=extras) for s in iter_sources([path])]
