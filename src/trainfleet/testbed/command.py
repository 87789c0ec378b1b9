"""The ``scripts/testbed`` command line: ``up K``, ``down``, ``degrade HOST RATE``, ``loss HOST PCT``,
``heal``, ``status``. Errors print one line on stderr and exit with the error's code."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from trainfleet.errors import TrainfleetError
from trainfleet.testbed import netns


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="testbed", description="namespaced hosts on one machine")
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="create hosts tfh1..tfhK on bridge tfbr0 (idempotent)")
    p_up.add_argument("k", type=int, help="number of hosts")
    sub.add_parser("down", help="remove every testbed host and the bridge")
    p_deg = sub.add_parser("degrade", help="limit a host's link with tc tbf, both directions")
    p_deg.add_argument("host", help="tfhN or N")
    p_deg.add_argument("rate_mbit", type=float, help="rate in Mbit/s")
    p_loss = sub.add_parser("loss", help="drop a percentage of a host's packets (nftables)")
    p_loss.add_argument("host", help="tfhN or N")
    p_loss.add_argument("pct", type=float, help="percent of packets dropped, in and out")
    p_heal = sub.add_parser("heal", help="remove shaping and loss (one host, or all)")
    p_heal.add_argument("host", nargs="?", help="tfhN or N; all hosts when left out")
    sub.add_parser("status", help="show hosts, addresses, shaping and loss")
    return parser


def _print_status() -> None:
    rows = netns.status()
    if not rows:
        print("no testbed hosts")
        return
    print(f"{'host':<7} {'address':<14} {'ns':<3} {'link':<5} {'egress':<10} {'ingress':<10} loss")
    for r in rows:
        loss = f"{r.loss_pct:g}%" if r.loss_pct is not None else "-"
        print(
            f"{r.host.name:<7} {r.host.address:<14} {'yes' if r.namespace else 'NO':<3} "
            f"{('up' if r.link_up else 'DOWN') if r.address_ok else 'NOIP':<5} "
            f"{r.egress_rate or '-':<10} {r.ingress_rate or '-':<10} {loss}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Run one testbed command; return the process exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "up":
            hosts = netns.up(args.k)
            print(f"up: {len(hosts)} hosts on {netns.BRIDGE} ({netns.SUBNET})")
        elif args.command == "down":
            print(f"down: removed {netns.down()} hosts")
        elif args.command == "degrade":
            netns.degrade(args.host, args.rate_mbit)
            print(f"degraded {netns.host(args.host).name} to {args.rate_mbit:g} Mbit/s")
        elif args.command == "loss":
            netns.loss(args.host, args.pct)
            print(f"{netns.host(args.host).name} drops {args.pct:g}% of packets")
        elif args.command == "heal":
            netns.heal(args.host)
            print("healed")
        else:
            _print_status()
    except TrainfleetError as exc:
        print(f"testbed: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
