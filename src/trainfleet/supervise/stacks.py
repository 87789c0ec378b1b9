"""Reading stack dumps back: parse py-spy and faulthandler text, and find the odd rank out.

In a hang every healthy rank usually waits in the same collective, so their innermost frames agree; the
rank that caused it is elsewhere (computing, stuck in I/O, or stopped). ``odd_ranks`` returns the ranks
whose innermost frame differs from the one a strict majority shares. With no majority (two ranks, say) it
falls back to the ranks whose process was stopped (state ``T``), then to the ranks that are not inside a
collective while the others are (a frame of ``torch.distributed`` or autograd's backward, where DDP's
all-reduce runs, or a function named like a collective).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

_PYSPY_THREAD = re.compile(r'^Thread (?:0x)?([0-9a-fA-F]+) \((\w+)\)(?:: "(.*)")?')
_PYSPY_FRAME = re.compile(r"^\s+(.+?) \((.+?):(\d+)\)\s*$")
_FH_THREAD = re.compile(r"^(Current thread|Thread) 0x[0-9a-fA-F]+")
_FH_FRAME = re.compile(r'^\s+File "(.+)", line (\d+) in (.+)$')
_COLLECTIVE_FUNC = re.compile(
    r"all_?reduce|all_?gather|barrier|broadcast|reduce_scatter|collective|all_to_all", re.IGNORECASE)
_COLLECTIVE_FILE = ("torch/distributed/", "torch/autograd/", "torch/nn/parallel/")
_HEADER = re.compile(r"^# rank (\d+) pid (\d+) node (\d+) state (\S+) tool (\S+)")


@dataclass(frozen=True)
class Frame:
    """One Python frame: function, file, line."""

    func: str
    file: str
    line: int

    def short(self) -> str:
        """``func (file.py:line)``."""
        return f"{self.func} ({Path(self.file).name}:{self.line})"


@dataclass(frozen=True)
class RankStack:
    """One rank's dump: where it ran, its process state, and its main thread's frames (innermost first)."""

    rank: int
    pid: int
    node: int
    state: str
    tool: str
    frames: tuple[Frame, ...]
    text: str
    path: str

    @property
    def in_collective(self) -> bool:
        """True when some frame is a collective (see module doc): the rank waits for the others."""
        return any(_COLLECTIVE_FUNC.search(f.func) or any(m in f.file for m in _COLLECTIVE_FILE)
                   for f in self.frames)

    @property
    def signature(self) -> str:
        """The innermost frame without its line number: what the rank was doing."""
        if not self.frames:
            return "(no frames)"
        top = self.frames[0]
        return f"{top.func} ({Path(top.file).name})"


def main_thread_frames(text: str, pid: int | None = None) -> list[Frame]:
    """The frames (innermost first) of the main thread in a py-spy or faulthandler dump."""
    blocks: list[tuple[str, list[Frame]]] = []
    for line in text.splitlines():
        m = _PYSPY_THREAD.match(line)
        f = _FH_THREAD.match(line)
        if m or f:
            label = line
            if m and pid is not None and m.group(1).isdigit() and int(m.group(1)) == pid:
                label = "MAIN " + line
            blocks.append((label, []))
            continue
        if not blocks:
            continue
        pm = _PYSPY_FRAME.match(line)
        if pm:
            blocks[-1][1].append(Frame(pm.group(1), pm.group(2), int(pm.group(3))))
            continue
        fm = _FH_FRAME.match(line)
        if fm:
            blocks[-1][1].append(Frame(fm.group(3), fm.group(1), int(fm.group(2))))
    if not blocks:
        return []
    for prefer in ("MAIN ", "Current thread", ""):
        for label, frames in blocks:
            if (label.startswith(prefer) or (prefer == "" and '"MainThread"' in label)) and frames:
                return frames
    return next((frames for _, frames in blocks if frames), [])


def load_dump(path: str | Path) -> RankStack | None:
    """Read one ``rank-R.txt`` written by the agent; None when it is missing or has no header."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return None
    head, _, body = text.partition("\n")
    m = _HEADER.match(head)
    if not m:
        return None
    rank, pid, node = int(m.group(1)), int(m.group(2)), int(m.group(3))
    frames = tuple(main_thread_frames(body, pid))
    return RankStack(rank, pid, node, m.group(4), m.group(5), frames, body, str(path))


def odd_ranks(stacks: dict[int, RankStack]) -> list[int]:
    """Ranks not doing what a strict majority does; else the stopped ones (see module doc)."""
    if not stacks:
        return []
    counts = Counter(s.signature for s in stacks.values())
    common, n = counts.most_common(1)[0]
    if len(stacks) > 2 and n * 2 > len(stacks) and n < len(stacks):
        return sorted(r for r, s in stacks.items() if s.signature != common)
    stopped = sorted(r for r, s in stacks.items() if s.state == "T")
    if stopped:
        return stopped
    outside = sorted(r for r, s in stacks.items() if not s.in_collective)
    return outside if 0 < len(outside) < len(stacks) else []


def blame_hang(files: dict[int, str], silent: list[int]) -> tuple[int, str, dict[int, RankStack], list[int]]:
    """Which rank to blame for a hang: ``(rank, why, stacks read, odd ranks)``.

    ``files`` are the dumps (rank -> path); ``silent`` the ranks past their hang timeout, longest silent
    first. An odd rank out (preferring a silent one) is blamed, else the longest silent rank.
    """
    stacks = {rank: s for rank, path in files.items() if (s := load_dump(path)) is not None}
    odd = odd_ranks(stacks)
    if not odd:
        return silent[0], "silent longest", stacks, odd
    rank = next((r for r in odd if r in silent), odd[0])
    stopped = stacks[rank].state == "T"
    why = "its process is stopped" if stopped else f"its stack differs: {stacks[rank].signature}"
    return rank, why, stacks, odd
