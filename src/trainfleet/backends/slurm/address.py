"""Where the supervisor of a Slurm job listens: an address the agents on the allocated nodes can reach.

The agents run on other hosts, so loopback only works when every node is this machine (the dev cluster).
The choice, first that applies:

1. ``$TRAINFLEET_SUPERVISOR_HOST`` (an IP address or a name; a name is resolved here, so a typo fails now
   with one clear line rather than later on every node);
2. the first non-loopback IPv4 address this host's name (``gethostname()``, then its FQDN) resolves to;
3. ``127.0.0.1``: the name resolves only to loopback (e.g. Debian's ``127.0.1.1 host`` line, or a
   single-machine cluster), so no other address is known; on a real cluster set the variable then.

The supervisor binds exactly that address (not ``0.0.0.0``): it accepts cancel requests, so it listens only
where the agents need it.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Callable, Mapping

from trainfleet.errors import InputError

SUPERVISOR_HOST_ENV = "TRAINFLEET_SUPERVISOR_HOST"
LOOPBACK = "127.0.0.1"

Resolver = Callable[[str], list[str]]


def resolve_ipv4(name: str) -> list[str]:
    """IPv4 addresses ``name`` resolves to here, in resolver order, without duplicates ([] when none)."""
    try:
        infos = socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OSError):
        return []
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def supervisor_host(environ: Mapping[str, str] | None = None, *, hostnames: tuple[str, ...] | None = None,
                    resolve: Resolver = resolve_ipv4) -> str:
    """The address the supervisor of a Slurm job binds and advertises (see module doc).

    Raises ``InputError`` when ``$TRAINFLEET_SUPERVISOR_HOST`` is set to a name that does not resolve.
    """
    env = os.environ if environ is None else environ
    wanted = env.get(SUPERVISOR_HOST_ENV, "").strip()
    if wanted:
        if _is_ip(wanted):
            return wanted
        found = resolve(wanted)
        if not found:
            raise InputError(f"{SUPERVISOR_HOST_ENV}={wanted!r}: not an IPv4 address and the name does not "
                             "resolve on this host")
        return found[0]
    names = hostnames if hostnames is not None else _own_names()
    for name in names:
        for address in resolve(name):
            if not ipaddress.ip_address(address).is_loopback:
                return address
    return LOOPBACK


def _own_names() -> tuple[str, ...]:
    name = socket.gethostname()
    fqdn = socket.getfqdn(name)
    return (name, fqdn) if fqdn and fqdn != name else (name,)


def _is_ip(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).version == 4
    except ValueError:
        return False
