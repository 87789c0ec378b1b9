"""Slurm hostlists (``node[1-3,7]``, ``gpu[01-16]``, ``rack[1-2]-n[1-4]``) expanded in pure Python."""

from __future__ import annotations

import itertools
import math
import re

from trainfleet.errors import InputError

MAX_HOSTS = 65536
"""Largest expansion accepted: bigger than any real allocation, small enough that hostile text stays cheap."""

_NAME_CHARS = re.compile(r"[A-Za-z0-9._\-]*")
_RANGE = re.compile(r"(\d+)(?:-(\d+))?")


def expand_hostlist(text: str) -> list[str]:
    """Expand a Slurm hostlist into host names, in Slurm's order, duplicates kept.

    ``"node[1-3,7],login"`` -> ``node1 node2 node3 node7 login``; a zero-padded lower bound keeps its width
    (``gpu[08-10]`` -> ``gpu08 gpu09 gpu10``); several bracket groups multiply (``r[1-2]-n[1-2]`` -> ``r1-n1
    r1-n2 r2-n1 r2-n2``). Empty text gives ``[]``. Raises ``InputError`` naming the hostlist when it is
    malformed or would expand to more than ``MAX_HOSTS`` names.
    """
    if not isinstance(text, str):
        raise InputError(f"hostlist must be text, got {type(text).__name__}")
    hosts: list[str] = []
    for item in _split_items(text.strip()):
        groups = _parse_item(item, text)
        if len(hosts) + math.prod(len(group) for group in groups) > MAX_HOSTS:
            raise InputError(f"hostlist {_shown(text)} expands to more than {MAX_HOSTS} hosts")
        hosts.extend("".join(parts) for parts in itertools.product(*groups))
    return hosts


def _split_items(text: str) -> list[str]:
    """Split at commas outside brackets; ``a,b[1,2],c`` -> ``a``, ``b[1,2]``, ``c``."""
    if not text:
        return []
    items, depth, start = [], 0, 0
    for index, char in enumerate(text):
        if char == "[":
            depth += 1
            if depth > 1:
                raise InputError(f"hostlist {_shown(text)}: nested '[' at position {index}")
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise InputError(f"hostlist {_shown(text)}: ']' without '[' at position {index}")
        elif char == "," and depth == 0:
            items.append(text[start:index])
            start = index + 1
    if depth:
        raise InputError(f"hostlist {_shown(text)}: '[' is never closed")
    items.append(text[start:])
    for item in items:
        if not item:
            raise InputError(f"hostlist {_shown(text)}: empty host name between commas")
    return items


def _parse_item(item: str, whole: str) -> list[list[str]]:
    """One comma-free item -> the choices for each of its segments (a literal is a one-choice segment)."""
    groups: list[list[str]] = []
    position = 0
    while position < len(item):
        if item[position] == "[":
            end = item.index("]", position)
            groups.append(_expand_ranges(item[position + 1 : end], whole))
            position = end + 1
        else:
            literal = _NAME_CHARS.match(item, position)
            assert literal is not None  # the pattern matches the empty string
            if literal.end() == position:
                raise InputError(f"hostlist {_shown(whole)}: character {item[position]!r} is not allowed")
            groups.append([literal.group()])
            position = literal.end()
    return groups


def _expand_ranges(body: str, whole: str) -> list[str]:
    """``1-3,07`` -> ``1 2 3 07``; a lower bound written with leading zeros fixes the width."""
    if not body:
        raise InputError(f"hostlist {_shown(whole)}: empty brackets")
    values: list[str] = []
    for part in body.split(","):
        match = _RANGE.fullmatch(part)
        if match is None:
            raise InputError(f"hostlist {_shown(whole)}: {part!r} is not a number or a range like 1-4")
        low_text, high_text = match.group(1), match.group(2)
        if high_text is None:
            values.append(low_text)
            continue
        low, high = int(low_text), int(high_text)
        if high < low:
            raise InputError(f"hostlist {_shown(whole)}: range {part!r} runs backwards")
        if len(values) + high - low + 1 > MAX_HOSTS:
            raise InputError(f"hostlist {_shown(whole)} expands to more than {MAX_HOSTS} hosts")
        width = len(low_text) if low_text.startswith("0") else 0
        values.extend(str(number).zfill(width) for number in range(low, high + 1))
    return values


def _shown(text: str) -> str:
    """The hostlist for an error message, cut short so garbage cannot flood the line."""
    return repr(text if len(text) <= 80 else text[:77] + "...")
