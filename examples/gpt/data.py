"""The demo's corpus: English documentation and source code that ship with Python itself.

No downloads. The text is the Python documentation bundled in the standard library (``pydoc_data/topics.py``,
the pages ``help()`` shows), followed by a fixed list of standard-library modules, read from
``sysconfig.get_paths()["stdlib"]``. The file list and its order are fixed, the text is mapped onto a fixed
96-character vocabulary (newline and printable ASCII) and cut to a fixed size, so every rank and every restart
sees the same bytes on the same Python installation.
"""

from __future__ import annotations

import ast
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch

#: The vocabulary: newline plus printable ASCII. Token id = index in this string.
VOCAB = "\n" + "".join(chr(c) for c in range(32, 127))
VOCAB_SIZE = len(VOCAB)

#: Standard-library modules appended after the documentation, in this order, until the corpus is full.
STDLIB_SOURCES = (
    "textwrap.py",
    "difflib.py",
    "argparse.py",
    "dataclasses.py",
    "functools.py",
    "heapq.py",
    "bisect.py",
    "fractions.py",
    "statistics.py",
    "shlex.py",
    "string.py",
    "calendar.py",
)

_TYPOGRAPHY = str.maketrans(
    {"‘": "'", "’": "'", "“": '"', "”": '"', "…": "...", "—": "--", "–": "-", "\t": "    "}
)
_KEEP = frozenset(VOCAB)


def _stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _documentation_text(stdlib: Path) -> str:
    """The pydoc topic pages, read from the source file (no import), in sorted topic order."""
    path = stdlib / "pydoc_data" / "topics.py"
    if not path.is_file():
        return ""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "topics" for t in node.targets
        ):
            topics = ast.literal_eval(node.value)
            return "".join(topics[key] for key in sorted(topics))
    return ""


def normalize(text: str) -> str:
    """Map ``text`` onto :data:`VOCAB`: typographic quotes and dashes become ASCII, other characters go."""
    text = text.translate(_TYPOGRAPHY)
    return "".join(ch for ch in text if ch in _KEEP)


def build_corpus(n_chars: int = 600_000, stdlib: Path | None = None) -> str:
    """Return exactly ``n_chars`` characters of corpus text (fewer only if the installation holds less)."""
    root = stdlib if stdlib is not None else _stdlib_dir()
    parts = [normalize(_documentation_text(root))]
    have = len(parts[0])
    for name in STDLIB_SOURCES:
        if have >= n_chars:
            break
        path = root / name
        if path.is_file():
            text = normalize(path.read_text(encoding="utf-8", errors="replace"))
            parts.append(text)
            have += len(text)
    corpus = "".join(parts)[:n_chars]
    if len(corpus) < 10_000:
        raise RuntimeError(f"standard library at {root} holds too little text for the demo corpus")
    return corpus


def encode(text: str) -> torch.Tensor:
    """Token ids (uint8) of ``text``, which must already be normalized."""
    return torch.frombuffer(bytearray(text.translate(_ENCODE), "latin-1"), dtype=torch.uint8).clone()


def decode(ids: torch.Tensor | list[int]) -> str:
    """Text of token ids."""
    return "".join(VOCAB[int(i)] for i in ids)


_ENCODE = {ord(ch): i for i, ch in enumerate(VOCAB)}


@dataclass(frozen=True)
class Splits:
    """Token ids of the training and validation parts of the corpus (the last 10% is validation)."""

    train: torch.Tensor
    val: torch.Tensor


def load_splits(n_chars: int = 600_000) -> Splits:
    """Build the corpus and split it 90/10 into training and validation token ids."""
    ids = encode(build_corpus(n_chars))
    cut = int(len(ids) * 0.9)
    return Splits(train=ids[:cut], val=ids[cut:])


def get_batch(
    ids: torch.Tensor, batch_size: int, block_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (input, target) windows of ``block_size`` tokens; targets are the inputs shifted by one."""
    starts = torch.randint(len(ids) - block_size - 1, (batch_size,), generator=generator)
    x = torch.stack([ids[s : s + block_size] for s in starts.tolist()]).long()
    y = torch.stack([ids[s + 1 : s + 1 + block_size] for s in starts.tolist()]).long()
    return x, y
