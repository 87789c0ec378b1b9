"""The testbed's pure parts: host names and addresses, the argv it builds, input checks before any command."""

from __future__ import annotations

import pytest

from trainfleet.errors import InputError
from trainfleet.testbed import netns
from trainfleet.testbed.command import main
from trainfleet.testbed.torchrun import torchrun_argv


def test_hosts_resolve_from_names_and_numbers() -> None:
    assert netns.host(3) == netns.host("3") == netns.host("tfh3")
    h = netns.host("tfh12")
    assert (h.name, h.address, h.port) == ("tfh12", "10.231.0.12", "tfv12")
    assert netns.SUBNET.is_private


@pytest.mark.parametrize("ref", ["0", "tfh0", "tfh201", "h3", "tfh3; rm -rf /", ""])
def test_bad_host_is_one_clear_error(ref: str) -> None:
    with pytest.raises(InputError, match=r"expected tfh1\.\.tfh200"):
        netns.host(ref)


def test_values_are_checked_before_anything_runs() -> None:
    with pytest.raises(InputError, match="host count 0"):
        netns.up(0)
    with pytest.raises(InputError, match="rate 0 Mbit/s"):
        netns.degrade("tfh1", 0)
    with pytest.raises(InputError, match="loss 150%"):
        netns.loss("tfh1", 150)


def test_commands_are_argv_lists_inside_the_namespace() -> None:
    assert netns.in_host("tfh2", ["ping", "-c", "1", "10.231.0.1"]) == [
        "ip", "netns", "exec", "tfh2", "ping", "-c", "1", "10.231.0.1",
    ]  # fmt: skip
    hosts = [netns.host(i) for i in range(1, 5)]
    argv = torchrun_argv(hosts, 2, ["trainfleet.health.probes.worker", "pairs"], master_port=29471)
    assert argv[:4] == ["ip", "netns", "exec", "tfh3"]
    assert "GLOO_SOCKET_IFNAME=eth0" in argv and "TRAINFLEET_NODE_NAME=tfh3" in argv
    at = argv.index("--node-rank")
    assert argv[at + 1] == "2"
    assert argv[argv.index("--master-addr") + 1] == "10.231.0.1"
    assert argv[argv.index("--nnodes") + 1] == "4"
    assert argv[-3:] == ["-m", "trainfleet.health.probes.worker", "pairs"]


def test_cli_prints_one_line_for_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["degrade", "nothost", "100"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("testbed: host 'nothost'") and err.count("\n") == 1
