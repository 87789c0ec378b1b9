"""Shared by the tests that build the namespaced testbed: what it leaves in the kernel; a 4-host fixture."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from trainfleet.testbed import netns


def leftovers() -> list[str]:
    """Anything with the testbed's names still in the kernel."""
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout.split()
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    found = [n for n in names if n.startswith("tfh")]
    for line in links.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith(("tfv", "tfbr", "tfx")):
            found.append(name)
    return found


@pytest.fixture
def testbed() -> Iterator[list[netns.Host]]:
    """Four fresh testbed hosts; afterwards nothing of the testbed is left."""
    netns.down()
    try:
        yield netns.up(4)
    finally:
        netns.down()
        assert leftovers() == []
