"""Where the supervisor of a Slurm job listens (``slurm.address``): env override, own name, loopback."""

from __future__ import annotations

import socket

import pytest

from trainfleet.backends.local import LocalBackend
from trainfleet.backends.slurm.address import SUPERVISOR_HOST_ENV, resolve_ipv4, supervisor_host
from trainfleet.backends.slurm.backend import SlurmBackend
from trainfleet.errors import InputError

HOSTS = {  # what a resolver answers on three kinds of machine
    "gpu-login-1": ["10.1.2.3"],
    "debian-box": ["127.0.1.1"],  # Debian's /etc/hosts line for its own name
    "debian-box.lab": ["127.0.1.1", "192.168.7.20"],
    "ctl.cluster": ["10.9.0.5"],
}


def table(name: str) -> list[str]:
    return HOSTS.get(name, [])


def test_the_environment_variable_wins_as_an_address_or_a_resolved_name() -> None:
    chosen = supervisor_host({SUPERVISOR_HOST_ENV: "10.0.0.7"}, hostnames=("gpu-login-1",), resolve=table)
    assert chosen == "10.0.0.7"
    assert supervisor_host({SUPERVISOR_HOST_ENV: " ctl.cluster "}, hostnames=(), resolve=table) == "10.9.0.5"


def test_an_unresolvable_override_is_one_clear_error() -> None:
    with pytest.raises(InputError, match=f"{SUPERVISOR_HOST_ENV}='nowhere.invalid': not an IPv4 address"):
        supervisor_host({SUPERVISOR_HOST_ENV: "nowhere.invalid"}, hostnames=(), resolve=table)


def test_this_hosts_name_gives_its_first_non_loopback_address() -> None:
    assert supervisor_host({}, hostnames=("gpu-login-1",), resolve=table) == "10.1.2.3"
    # the short name resolves to loopback only, the FQDN also to the LAN address: the LAN address it is
    assert supervisor_host({}, hostnames=("debian-box", "debian-box.lab"), resolve=table) == "192.168.7.20"


def test_loopback_only_when_nothing_else_is_known() -> None:
    assert supervisor_host({}, hostnames=("debian-box",), resolve=table) == "127.0.0.1"
    assert supervisor_host({}, hostnames=("unknown-name",), resolve=table) == "127.0.0.1"
    assert supervisor_host({SUPERVISOR_HOST_ENV: ""}, hostnames=("debian-box",), resolve=table) == "127.0.0.1"


def test_the_real_resolver_on_this_machine() -> None:
    assert resolve_ipv4("localhost")[:1] == ["127.0.0.1"]
    assert resolve_ipv4("no-such-host.invalid") == []
    own = resolve_ipv4(socket.gethostname())
    expected = next((a for a in own if not a.startswith("127.")), "127.0.0.1")
    assert supervisor_host({}) == expected


def test_backends_say_where_their_supervisor_listens(monkeypatch: pytest.MonkeyPatch) -> None:
    assert LocalBackend.supervisor_host == "127.0.0.1"
    monkeypatch.setenv(SUPERVISOR_HOST_ENV, "10.20.30.40")
    backend = SlurmBackend()  # no store: no node history, so no Slurm command runs here
    assert backend.supervisor_host == "10.20.30.40" and backend.places_nodes
