"""The probe worker under a real torchrun on this machine (gloo over loopback): every collective at every
size comes back correct with nccl-tests bandwidths, pairs cover the tournament, compute checks its matmul."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainfleet.health.probes import worker
from trainfleet.health.probes.busbw import bus_factor
from trainfleet.health.probes.records import CollectiveRecord, ComputeRecord, PairRecord, parse_probe_output

pytestmark = pytest.mark.slow
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))


def torchrun(nproc: int, port: int, *args: str) -> list:
    argv = [TORCHRUN, "--nproc-per-node", str(nproc), "--master-port", str(port), "--max-restarts", "0"]
    argv += [
        "-m",
        "trainfleet.health.probes.worker",
        "--warmup",
        "1",
        "--iters",
        "2",
        "--timeout-s",
        "30",
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRAINFLEET_NODE_NAME": "local"}
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=90, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return parse_probe_output(proc.stdout, source="worker stdout")


@pytest.mark.timeout(120)
def test_collectives_sweep_is_correct_and_uses_nccl_tests_factors() -> None:
    records = torchrun(3, 29531, "collectives", "--sizes", "4K..1M", "--factor", "16")
    assert all(isinstance(r, CollectiveRecord) for r in records)
    seen = {(r.op, r.bytes) for r in records}
    # 3 ranks: buffers are rounded down to a multiple of 3 float32 elements
    sizes = [s // 4 // 3 * 3 * 4 for s in (4096, 65536, 1 << 20)]
    assert seen == {(op, s) for op in ("all_reduce", "all_gather", "reduce_scatter") for s in sizes}
    for r in records:
        assert r.ok and r.world == 3 and r.backend == "gloo" and r.nodes == ("local",) * 3
        assert r.algbw_gbps == pytest.approx(r.bytes / r.time_s / 1e9)
        assert r.busbw_gbps == pytest.approx(r.algbw_gbps * bus_factor(r.op, 3))


@pytest.mark.timeout(120)
def test_pairs_on_three_ranks_give_byes_and_every_direction_once() -> None:
    records = torchrun(3, 29532, "pairs", "--size", "1M")
    assert all(isinstance(r, PairRecord) and r.ok for r in records)
    directions = sorted((r.src_rank, r.dst_rank) for r in records)
    assert directions == [(a, b) for a in range(3) for b in range(3) if a != b]
    assert sorted({r.round for r in records}) == [1, 2, 3]


@pytest.mark.timeout(120)
def test_compute_reports_a_checked_matmul_per_rank() -> None:
    records = torchrun(1, 29533, "compute", "--matrix", "256")
    assert len(records) == 1 and isinstance(records[0], ComputeRecord)
    r = records[0]
    assert r.ok and r.device == "cpu" and r.dtype == "float32" and r.n == 256
    assert r.tflops == pytest.approx(2 * 256**3 / r.time_s / 1e12)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["collectives", "--ops", "all_reduce,broadcast"], "--ops 'all_reduce,broadcast': use all_reduce"),
        (["collectives", "--sizes", "1M..1K"], "--sizes: range '1M..1K' runs backwards"),
        (["pairs", "--size", "lots"], "--size: cannot read 'lots' as a size"),
        (["--iters", "0", "compute"], "--iters >= 1"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert worker.main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
