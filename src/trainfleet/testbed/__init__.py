"""A multi-host testbed on one machine: network namespaces on a bridge, with links that can be degraded."""

from trainfleet.testbed.netns import (
    BRIDGE,
    HOST_SIDE_ADDRESS,
    SUBNET,
    Host,
    HostStatus,
    degrade,
    down,
    exec_in,
    heal,
    host,
    hosts_up,
    in_host,
    loss,
    status,
    up,
)

__all__ = [
    "BRIDGE",
    "HOST_SIDE_ADDRESS",
    "SUBNET",
    "Host",
    "HostStatus",
    "degrade",
    "down",
    "exec_in",
    "heal",
    "host",
    "hosts_up",
    "in_host",
    "loss",
    "status",
    "up",
]
