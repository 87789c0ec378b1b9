"""The probe program, started once per rank by torchrun (or any launcher that sets the torchrun env:
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``).

    python -m trainfleet.health.probes.worker collectives --sizes 1K..64M --ops all_reduce,all_gather
    python -m trainfleet.health.probes.worker pairs --size 8M
    python -m trainfleet.health.probes.worker compute --matrix 2048

It prints one JSON line per measurement (see :mod:`trainfleet.health.probes.records`). Ranks use NCCL on
CUDA devices and gloo on CPUs. Every timed iteration starts after a barrier, its buffer is refilled untimed
before it, and the result of the last one is checked. A rank's node name is ``TRAINFLEET_NODE_NAME`` (set by
the launcher or the testbed; namespaces share a hostname) or else the hostname.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from trainfleet.errors import TrainfleetError
from trainfleet.health.probes.busbw import Collective, algbw, busbw, parse_size, parse_sizes
from trainfleet.health.probes.records import CollectiveRecord, ComputeRecord, PairRecord, record_to_json
from trainfleet.health.probes.schedule import partner_map, round_robin

_NAME_BYTES = 64


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="probe-worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations first")
    parser.add_argument("--iters", type=int, default=5, help="timed iterations (median reported)")
    parser.add_argument("--timeout-s", type=float, default=60.0, help="process-group timeout")
    sub = parser.add_subparsers(dest="mode", required=True)
    coll = sub.add_parser("collectives", help="all-reduce / all-gather / reduce-scatter over sizes")
    coll.add_argument("--sizes", default="1K..64M", help='e.g. "1K..1G" (binary units) or "1M,64M"')
    coll.add_argument("--factor", type=int, default=4, help="step between sizes of a range")
    coll.add_argument("--ops", default="all_reduce,all_gather,reduce_scatter")
    pairs = sub.add_parser("pairs", help="send/recv between tournament-scheduled pairs")
    pairs.add_argument("--size", default="8M", help="bytes per transfer")
    comp = sub.add_parser("compute", help="matmul throughput per rank")
    comp.add_argument("--matrix", type=int, default=0, help="matrix side (default 2048 on CPU, 8192 on CUDA)")
    return parser


def _gather(dist: Any) -> Callable[..., Any]:
    # torch 2.13 renamed all_gather_into_tensor / reduce_scatter_tensor to *_single; older ones lack those.
    return getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def _scatter(dist: Any) -> Callable[..., Any]:
    return getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


class _Ranks:
    """The process group plus what each rank needs to time and check its work."""

    def __init__(self, torch: Any, dist: Any, device: str, timeout_s: float) -> None:
        self.torch, self.dist = torch, dist
        self.rank = int(os.environ.get("RANK", "0"))
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.cuda = device == "cuda"
        if self.cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        self.device = torch.device("cuda") if self.cuda else torch.device("cpu")
        self.backend = "nccl" if self.cuda else "gloo"
        dist.init_process_group(
            self.backend, rank=self.rank, world_size=self.world, timeout=timedelta(seconds=timeout_s)
        )
        self.wrong = 0
        self.nodes = self._gather_names(os.environ.get("TRAINFLEET_NODE_NAME") or socket.gethostname())

    def _gather_names(self, name: str) -> list[str]:
        raw = name.encode()[:_NAME_BYTES].ljust(_NAME_BYTES, b"\0")
        mine = self.torch.tensor(list(raw), dtype=self.torch.uint8, device=self.device)
        out = self.torch.empty(self.world * _NAME_BYTES, dtype=self.torch.uint8, device=self.device)
        _gather(self.dist)(out, mine)
        rows = out.view(self.world, _NAME_BYTES).cpu().tolist()
        return [bytes(r).rstrip(b"\0").decode(errors="replace") for r in rows]

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def timed(self, prepare: Callable[[], Any], run: Callable[[], Any], warmup: int, iters: int) -> float:
        """Median seconds of ``run`` over ``iters`` timed iterations, each after ``prepare`` and a barrier."""
        times = []
        for i in range(warmup + iters):
            prepare()
            self.sync()
            self.dist.barrier()
            start = time.perf_counter()
            run()
            self.sync()
            if i >= warmup:
                times.append(time.perf_counter() - start)
        return statistics.median(times)

    def emit(self, kind: str, record: Any) -> None:
        """Print one record as a JSON line; remember a failed correctness check for the exit code."""
        self.wrong += 0 if record.ok else 1
        print(record_to_json(kind, record), flush=True)

    def slowest(self, seconds: float) -> float:
        t = self.torch.tensor([seconds], dtype=self.torch.float64, device=self.device)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX)
        return float(t.item())

    def all_true(self, ok: bool) -> bool:
        t = self.torch.tensor([0 if ok else 1], dtype=self.torch.int32, device=self.device)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX)
        return int(t.item()) == 0


_MEASURED_OPS = (Collective.ALL_REDUCE, Collective.ALL_GATHER, Collective.REDUCE_SCATTER)


def _collective_case(r: _Ranks, op: Collective, count: int) -> tuple[Callable[[], Any], ...]:
    """(prepare, run, check) for one op on ``count`` float32 elements; the check returns a bool tensor.

    Inputs are small integers (1..3 per rank), so float32 sums stay exact at any fleet size.
    """
    torch, dist, n = r.torch, r.dist, r.world
    weight = 1 + r.rank % 3
    total = sum(1 + k % 3 for k in range(n))
    weights = torch.tensor([1 + k % 3 for k in range(n)], dtype=torch.float32, device=r.device)
    buf = torch.empty(count, dtype=torch.float32, device=r.device)
    part = torch.empty(count // n, dtype=torch.float32, device=r.device)
    if op is Collective.ALL_REDUCE:
        return (lambda: buf.fill_(weight), lambda: dist.all_reduce(buf), lambda: torch.all(buf == total))
    if op is Collective.ALL_GATHER:
        return (
            lambda: part.fill_(weight),
            lambda: _gather(dist)(buf, part),
            lambda: torch.all(buf.view(n, -1) == weights[:, None]),
        )
    # reduce-scatter: chunk k of rank j holds weight_j * (1 + k % 2), so rank k receives (1 + k % 2) * total
    chunk_w = torch.tensor([1 + k % 2 for k in range(n)], dtype=torch.float32, device=r.device)
    return (
        lambda: buf.view(n, -1).copy_((chunk_w * weight)[:, None].expand(n, count // n)),
        lambda: _scatter(dist)(part, buf),
        lambda: torch.all(part == (1 + r.rank % 2) * total),
    )


def run_collectives(
    r: _Ranks, sizes: Sequence[int], ops: Sequence[Collective], warmup: int, iters: int
) -> None:
    """Time each op at each size; rank 0 prints one record per (op, size) with the slowest rank's time."""
    n = r.world
    for op in ops:
        for size in sizes:
            count = size // 4 // n * n  # float32 elements, divisible by the rank count
            if count == 0:
                continue
            prepare, run, check = _collective_case(r, op, count)
            seconds = r.slowest(r.timed(prepare, run, warmup, iters))
            ok = r.all_true(bool(check()))
            nbytes = count * 4
            if r.rank == 0:
                r.emit(
                    "collective",
                    CollectiveRecord(
                        op=op.value,
                        bytes=nbytes,
                        world=n,
                        time_s=seconds,
                        algbw_gbps=algbw(nbytes, seconds),
                        busbw_gbps=busbw(op, nbytes, seconds, n),
                        ok=ok,
                        iters=iters,
                        backend=r.backend,
                        nodes=tuple(r.nodes),
                    ),
                )


def run_pairs(r: _Ranks, size: int, warmup: int, iters: int) -> None:
    """Per tournament round, each scheduled pair sends ``size`` bytes each way; the receiver times and prints.

    A transfer's time runs from the receiver's 4-byte "go" to the payload's arrival, so it includes one small
    message's latency; at megabyte sizes that is noise.
    """
    torch, dist = r.torch, r.dist
    payload = torch.empty(max(1, size // 4), dtype=torch.float32, device=r.device)
    go = torch.zeros(1, dtype=torch.float32, device=r.device)
    for number, pairs in enumerate(round_robin(list(range(r.world))), start=1):
        dist.barrier()
        partner = partner_map(pairs).get(r.rank)
        if partner is None:
            continue
        low, high = min(r.rank, partner), max(r.rank, partner)
        for src, dst in ((low, high), (high, low)):
            times = []
            for i in range(warmup + iters):
                if r.rank == src:
                    payload.fill_(src + 1)
                    r.sync()
                    dist.recv(go, dst)
                    dist.send(payload, dst)
                    continue
                payload.zero_()
                r.sync()
                start = time.perf_counter()
                dist.send(go, src)
                dist.recv(payload, src)
                r.sync()
                if i >= warmup:
                    times.append(time.perf_counter() - start)
            if r.rank == dst:
                seconds = statistics.median(times)
                r.emit(
                    "pair",
                    PairRecord(
                        round=number,
                        src=r.nodes[src],
                        dst=r.nodes[dst],
                        src_rank=src,
                        dst_rank=dst,
                        bytes=payload.numel() * 4,
                        time_s=seconds,
                        bw_gbps=algbw(payload.numel() * 4, seconds),
                        ok=bool(torch.all(payload == src + 1)),
                        iters=iters,
                    ),
                )
    dist.barrier()


def run_compute(r: _Ranks, n: int, warmup: int, iters: int) -> None:
    """Each rank times an ``n x n`` matmul (bf16 on CUDA, float32 on CPU) and prints its throughput."""
    torch = r.torch
    n = n or (8192 if r.cuda else 2048)
    dtype = torch.bfloat16 if r.cuda else torch.float32
    gen = torch.Generator(device="cpu").manual_seed(1234 + r.rank)
    a = torch.randn(n, n, generator=gen).to(device=r.device, dtype=dtype)
    b = torch.randn(n, n, generator=gen).to(device=r.device, dtype=dtype)
    out = torch.empty(n, n, device=r.device, dtype=dtype)
    times = []
    for i in range(warmup + iters):
        r.sync()
        start = time.perf_counter()
        torch.matmul(a, b, out=out)
        r.sync()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    exact = a[:8].double() @ b[:, :8].double()
    scale = float(exact.abs().max()) or 1.0
    ok = float((out[:8, :8].double() - exact).abs().max()) <= (0.05 if r.cuda else 1e-3) * scale
    r.emit(
        "compute",
        ComputeRecord(
            node=r.nodes[r.rank],
            rank=r.rank,
            device=str(r.device),
            dtype=str(dtype).removeprefix("torch."),
            n=n,
            time_s=seconds,
            tflops=2 * n**3 / seconds / 1e12,
            ok=ok,
        ),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run one probe mode on this rank; return the exit code: 0, 2 for bad arguments or missing torch,
    3 when a result this rank printed failed its correctness check."""
    args = _parser().parse_args(argv)
    try:
        import torch
        import torch.distributed as dist
    except ImportError:
        print("probe worker: PyTorch is not installed (pip install 'trainfleet[torch]')", file=sys.stderr)
        return 2
    try:
        if args.warmup < 0 or args.iters < 1:
            raise TrainfleetError("--warmup must be >= 0 and --iters >= 1")
        device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
        if args.mode == "collectives":
            sizes = parse_sizes(args.sizes, factor=args.factor, field="--sizes")
            ops = [Collective(op.strip()) for op in args.ops.split(",") if op.strip() in _MEASURED_OPS]
            if len(ops) != len([op for op in args.ops.split(",") if op.strip()]) or not ops:
                raise TrainfleetError(f"--ops {args.ops!r}: use all_reduce, all_gather, reduce_scatter")
        elif args.mode == "pairs":
            size = parse_size(args.size, field="--size")
    except TrainfleetError as exc:
        print(f"probe worker: {exc}", file=sys.stderr)
        return 2
    ranks = _Ranks(torch, dist, device, args.timeout_s)
    try:
        if args.mode == "collectives":
            run_collectives(ranks, sizes, ops, args.warmup, args.iters)
        elif args.mode == "pairs":
            run_pairs(ranks, size, args.warmup, args.iters)
        else:
            run_compute(ranks, args.matrix, args.warmup, args.iters)
    finally:
        dist.destroy_process_group()
    if ranks.wrong:
        print(f"probe worker: {ranks.wrong} result(s) failed the correctness check", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
