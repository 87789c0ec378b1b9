"""Atomic, self-checking checkpoints: write to a temp file, fsync, rename; keep the last few; verify on load.

A checkpoint is one file ``ckpt-<step:08d>.pt``: a header line ``TFCKPT1 <sha256 hex> <payload bytes>\\n``
followed by the ``torch.save`` payload. Because the checksum lives inside the same file that is renamed into
place, a reader never pairs a payload with the wrong checksum; a truncated or corrupted file (a node dying in
the middle of a copy, a bad disk) is detected and the previous checkpoint is used instead.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

MAGIC = b"TFCKPT1"
_NAME = re.compile(r"^ckpt-(\d{8})\.pt$")
_TMP = re.compile(r"^\.ckpt-\d{8}\.pt\.tmp\.\d+$")


class CheckpointCorrupt(Exception):
    """A checkpoint file is truncated, has a bad header, or its payload does not match its checksum."""


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint found on disk: its step and path."""

    step: int
    path: Path


def checkpoint_path(directory: Path, step: int) -> Path:
    """Final path of the checkpoint of ``step`` in ``directory``."""
    return directory / f"ckpt-{step:08d}.pt"


def list_checkpoints(directory: Path) -> list[Checkpoint]:
    """Checkpoints in ``directory`` (by name only, not verified), newest step first."""
    if not directory.is_dir():
        return []
    found = []
    for entry in directory.iterdir():
        m = _NAME.match(entry.name)
        if m:
            found.append(Checkpoint(int(m.group(1)), entry))
    return sorted(found, key=lambda c: c.step, reverse=True)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(directory: Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``state`` as the checkpoint of ``step`` atomically and delete all but the newest ``keep``.

    The file only ever appears under its final name complete and fsynced: it is written to a hidden temp
    file in the same directory, fsynced, renamed over the final name, and the directory is fsynced.
    """
    directory.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    header = b"%s %s %d\n" % (MAGIC, hashlib.sha256(payload).hexdigest().encode(), len(payload))
    final = checkpoint_path(directory, step)
    tmp = directory / f".{final.name}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(header)
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(directory)
    for old in list_checkpoints(directory)[keep:]:
        old.path.unlink(missing_ok=True)
    return final


def remove_stale_temp_files(directory: Path) -> list[Path]:
    """Delete temp files left by a writer that died mid-write; returns what was removed."""
    if not directory.is_dir():
        return []
    stale = [p for p in directory.iterdir() if _TMP.match(p.name)]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def read_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and verify one checkpoint; raises :class:`CheckpointCorrupt` if it is damaged in any way."""
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise CheckpointCorrupt(f"{path}: cannot read: {exc}") from exc
    header, sep, payload = blob.partition(b"\n")
    parts = header.split(b" ")
    if not sep or len(parts) != 3 or parts[0] != MAGIC or not parts[2].isdigit():
        raise CheckpointCorrupt(f"{path}: not a trainfleet checkpoint (bad header)")
    if len(payload) != int(parts[2]):
        raise CheckpointCorrupt(f"{path}: truncated ({len(payload)} of {int(parts[2])} payload bytes)")
    if hashlib.sha256(payload).hexdigest().encode() != parts[1]:
        raise CheckpointCorrupt(f"{path}: sha256 mismatch")
    try:
        return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as exc:  # a payload that hashes right but does not unpickle is still unusable
        raise CheckpointCorrupt(f"{path}: cannot load payload: {exc}") from exc


def find_latest_valid(
    directory: Path, on_skip: Callable[[Checkpoint, CheckpointCorrupt], None] | None = None
) -> tuple[Checkpoint, dict[str, Any]] | None:
    """The newest checkpoint in ``directory`` that verifies, with its state; ``None`` if there is none.

    Every damaged newer checkpoint is passed to ``on_skip`` before falling back to the previous one.
    """
    for ckpt in list_checkpoints(directory):
        try:
            return ckpt, read_checkpoint(ckpt.path)
        except CheckpointCorrupt as exc:
            if on_skip is not None:
                on_skip(ckpt, exc)
    return None
