"""Train the demo GPT with DDP: runs unchanged under ``torchrun``, under ``trainfleet run``, or alone.

Distributed settings come from the standard environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT); without them the script trains in one process. gloo on CPU, NCCL when CUDA is present.
Rank 0 checkpoints every ``--ckpt-every`` steps into ``--ckpt-dir`` or ``$TRAINFLEET_CHECKPOINT_DIR``
and a restarted job resumes from the newest checkpoint that verifies. Progress goes to
``trainfleet.report`` every step (a no-op outside trainfleet or where trainfleet is not installed).

Preemption / time-limit notice: the checkpoint signal (``$TRAINFLEET_CHECKPOINT_SIGNAL``, SIGUSR2 by default;
trainfleet's agent sends it when Slurm warns that the job will be stopped) makes the ranks save a checkpoint
at the end of the current step. Any rank may get it first: every step the ranks agree on it (one tiny
all-reduce), so all of them act at the same step and rank 0 saves.

    OMP_NUM_THREADS=1 torchrun --nproc-per-node 2 examples/gpt/train.py --steps 400
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from checkpoint import (
    CheckpointCorrupt,
    checkpoint_path,
    find_latest_valid,
    read_checkpoint,
    remove_stale_temp_files,
    save_checkpoint,
)
from data import VOCAB_SIZE, get_batch, load_splits
from model import GPT, GPTConfig
from torch.nn.parallel import DistributedDataParallel as DDP

EXIT_INJECTED_CRASH = 13


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--steps", type=int, default=400, help="optimizer steps in total (a resumed run continues)"
    )
    p.add_argument("--batch-size", type=int, default=16, help="sequences per rank per step")
    p.add_argument("--block-size", type=int, default=128, help="context length in characters")
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=128)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (warmup, then cosine to lr/10)")
    p.add_argument("--warmup-steps", type=int, default=None, help="default: steps/10, at most 100")
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--corpus-chars", type=int, default=600_000, help="size of the corpus slice")
    p.add_argument(
        "--ckpt-dir", default=None, help="default: $TRAINFLEET_CHECKPOINT_DIR; none: no checkpoints"
    )
    p.add_argument("--ckpt-every", type=int, default=50, help="checkpoint every K steps (0: only at the end)")
    p.add_argument("--ckpt-keep", type=int, default=2, help="checkpoints kept on disk")
    p.add_argument(
        "--eval-every", type=int, default=100, help="validation loss every N steps (0: only at the end)"
    )
    p.add_argument("--eval-batches", type=int, default=8)
    p.add_argument("--log-every", type=int, default=20, help="print a progress line every N steps")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--pg-timeout-s", type=float, default=60.0, help="rendezvous and collective timeout")
    p.add_argument(
        "--sample-chars", type=int, default=0, help="print this many generated characters at the end"
    )
    # Fault injection for resilience tests: a rank matches when R is -1 or its rank; an attempt when A
    # is -1 or $TRAINFLEET_ATTEMPT (or $TORCHELASTIC_RESTART_COUNT) equals A.
    p.add_argument("--crash-at-step", type=int, default=None, help="os._exit(13) when step N is about to run")
    p.add_argument("--crash-rank", type=int, default=0)
    p.add_argument("--crash-attempt", type=int, default=0)
    p.add_argument("--hang-at-step", type=int, default=None, help="sleep forever when step N is about to run")
    p.add_argument("--hang-rank", type=int, default=0)
    p.add_argument("--hang-attempt", type=int, default=0)
    p.add_argument("--step-sleep-s", type=float, default=0.0, help="pause after each step (pace a demo/test)")
    p.add_argument("--slow-rank", type=int, default=None, help="this rank computes slower (a straggler)")
    p.add_argument("--slow-s", type=float, default=0.05, help="extra compute seconds per step of --slow-rank")
    args = p.parse_args(argv)
    for name in (
        "steps",
        "batch_size",
        "block_size",
        "n_layer",
        "n_head",
        "n_embd",
        "log_every",
        "ckpt_keep",
    ):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.n_embd % args.n_head:
        p.error("--n-embd must be divisible by --n-head")
    return args


# ---------------------------------------------------------------------------------------------- distributed
@dataclass
class Dist:
    """This process's place in the job: rank, world size, device, and the process group's store, if any."""

    rank: int
    world: int
    local_rank: int
    device: torch.device
    store: dist.Store | None = None  # None: a single process, no process group
    hosts_store: bool = False  # this process runs the TCPStore server the others talk to

    @property
    def active(self) -> bool:
        return self.store is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def attempt_number() -> int:
    """Which attempt of the job this is (0 first), from trainfleet's or torchelastic's environment."""
    raw = os.environ.get("TRAINFLEET_ATTEMPT") or os.environ.get("TORCHELASTIC_RESTART_COUNT") or "0"
    return int(raw)


def init_distributed(timeout_s: float) -> Dist:
    """Join the process group described by the environment, or run alone when there is none."""
    use_cuda = torch.cuda.is_available()
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return Dist(0, 1, 0, torch.device("cuda" if use_cuda else "cpu"))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    timeout = timedelta(seconds=timeout_s)
    # torchrun hosts the store in its agent; plain launchers (trainfleet, srun) leave it to rank 0.
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    base = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world,
        is_master=rank == 0 and not agent_store,
        timeout=timeout,
    )
    # A per-attempt key prefix: after a restart on a reused store, gloo otherwise reads the previous attempt's
    # peer addresses and hangs or fails (see shared/notes/environment.md, 1b).
    store = dist.PrefixStore(f"attempt_{attempt_number()}", base)
    dist.init_process_group(
        "nccl" if use_cuda else "gloo", store=store, rank=rank, world_size=world, timeout=timeout
    )
    return Dist(rank, world, local_rank, device, store=store, hosts_store=rank == 0 and not agent_store)


def shutdown_distributed(d: Dist, timeout_s: float) -> None:
    """Leave the process group; the rank hosting the store leaves last.

    Without a launcher-owned store (trainfleet, srun) rank 0 runs the TCPStore server; a peer still tearing
    down must not lose it, so every rank checks out through the store and the host waits for all (the
    "store barrier" other frameworks use). A rare teardown abort of a non-zero rank ("terminate called
    without an active exception", 8 ranks on 2 busy cores) was seen both before and after this was added.
    """
    if d.store is None:
        return
    dist.destroy_process_group()
    d.store.add("exited", 1)
    if d.hosts_store:
        deadline = time.monotonic() + timeout_s
        while d.store.add("exited", 0) < d.world and time.monotonic() < deadline:
            time.sleep(0.01)
    d.store = None


# -------------------------------------------------------------------------------------------------- metrics
def load_reporter() -> Callable[..., None]:
    """``trainfleet.report`` if trainfleet is importable and works, else a no-op; never raises."""
    try:
        import trainfleet

        report = trainfleet.report
    except Exception:
        return lambda **_: None
    broken = False

    def safe_report(**metrics: float) -> None:
        nonlocal broken
        if broken:
            return
        try:
            report(**metrics)
        except Exception as exc:
            broken = True
            print(f"trainfleet.report disabled: {exc}", file=sys.stderr, flush=True)

    return safe_report


# ------------------------------------------------------------------------------------- preemption notice
class PreemptionNotice:
    """Catches the checkpoint signal (``$TRAINFLEET_CHECKPOINT_SIGNAL``, default SIGUSR2) in this rank;
    ``agreed`` tells every rank, at the same step, whether any of them got it since the last time."""

    def __init__(self) -> None:
        name = os.environ.get("TRAINFLEET_CHECKPOINT_SIGNAL", "SIGUSR2")
        self.signal = getattr(signal, name, signal.SIGUSR2)
        self.pending = False
        signal.signal(self.signal, self._caught)

    def _caught(self, _signum: int, _frame: object) -> None:
        self.pending = True  # acted on at the end of the step (never inside a collective)

    def agreed(self, d: Dist) -> bool:
        """True on every rank when any rank got the signal; clears it. A collective: all ranks call it."""
        got = self.pending
        if d.active:
            flag = torch.tensor([1 if got else 0], dtype=torch.int32, device=d.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            got = bool(flag.item())
        if got:
            self.pending = False
        return got


# --------------------------------------------------------------------------------------------------- faults
def maybe_inject_fault(args: argparse.Namespace, step: int, rank: int) -> None:
    """Crash or hang this rank if a ``--crash-*`` / ``--hang-*`` option matches (rank, step, attempt)."""
    attempt = attempt_number()

    def matches(at: int | None, r: int, a: int) -> bool:
        return at == step and r in (-1, rank) and a in (-1, attempt)

    if matches(args.crash_at_step, args.crash_rank, args.crash_attempt):
        print(f"injected crash at step {step} (rank {rank}, attempt {attempt})", file=sys.stderr, flush=True)
        os._exit(EXIT_INJECTED_CRASH)
    if matches(args.hang_at_step, args.hang_rank, args.hang_attempt):
        print(f"injected hang at step {step} (rank {rank}, attempt {attempt})", file=sys.stderr, flush=True)
        while True:
            time.sleep(3600)


# ----------------------------------------------------------------------------------------------- training
def lr_at(step: int, args: argparse.Namespace) -> float:
    """Linear warmup to ``--lr``, then cosine decay to a tenth of it at ``--steps``."""
    warmup = args.warmup_steps if args.warmup_steps is not None else min(100, args.steps // 10)
    if step <= warmup:
        return args.lr * step / max(1, warmup)
    frac = (step - warmup) / max(1, args.steps - warmup)
    return args.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac))))


def make_optimizer(model: GPT, args: argparse.Namespace) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (not on biases and LayerNorm gains)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95))


def batch_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """Data order depends only on (seed, rank, step): a resumed run sees the batches it would have seen."""
    return torch.Generator().manual_seed(seed * 1_000_003 + rank * 7919 + step)


@torch.no_grad()
def evaluate(model: GPT, val: torch.Tensor, args: argparse.Namespace, d: Dist) -> float:
    """Mean validation loss over ``--eval-batches`` fixed batches per rank, averaged over ranks."""
    model.eval()
    g = torch.Generator().manual_seed(args.seed + 1 + d.rank)
    losses = []
    for _ in range(args.eval_batches):
        x, y = get_batch(val, args.batch_size, args.block_size, g)
        losses.append(model(x.to(d.device), y.to(d.device))[1])
    mean = torch.stack(losses).mean()
    if d.active:
        dist.all_reduce(mean)
        mean /= d.world
    model.train()
    return float(mean)


def resume(directory: Path | None, model: GPT, opt: torch.optim.Optimizer, d: Dist) -> int:
    """Load the newest valid checkpoint (rank 0 chooses, every rank loads it) and return its step, or 0."""
    chosen = -1
    if directory is not None and d.is_main:
        for stale in remove_stale_temp_files(directory):
            print(f"removed stale temp file {stale.name}", flush=True)

        def warn(ckpt: object, exc: CheckpointCorrupt) -> None:
            print(f"skipping corrupt checkpoint: {exc}", file=sys.stderr, flush=True)

        found = find_latest_valid(directory, on_skip=warn)
        chosen = found[0].step if found else -1
    if d.active:
        t = torch.tensor([chosen], dtype=torch.long, device=d.device)
        dist.broadcast(t, src=0)
        chosen = int(t.item())
    if chosen < 0 or directory is None:
        return 0
    state = read_checkpoint(checkpoint_path(directory, chosen), map_location=d.device)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"]["torch"].cpu())  # map_location may have moved it to the GPU
    if d.is_main:
        print(f"resumed from step {state['step']}", flush=True)
    return int(state["step"])


def train_step(
    ddp: torch.nn.Module,
    model: GPT,
    opt: torch.optim.Optimizer,
    train: torch.Tensor,
    args: argparse.Namespace,
    d: Dist,
    step: int,
    lr: float,
) -> tuple[float, float, float]:
    """One optimizer step at learning rate ``lr``; returns (this rank's loss, seconds taken, seconds of this
    rank's own compute before the gradient all-reduce: what differs between a straggler and the others)."""
    t0 = time.perf_counter()
    for group in opt.param_groups:
        group["lr"] = lr
    if args.slow_rank == d.rank:
        time.sleep(args.slow_s)  # stands for a slower GPU / thermal throttling on this rank
    x, y = get_batch(train, args.batch_size, args.block_size, batch_generator(args.seed, d.rank, step))
    _, loss = ddp(x.to(d.device), y.to(d.device))
    compute_s = time.perf_counter() - t0
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss.item(), time.perf_counter() - t0, compute_s


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    d = init_distributed(args.pg_timeout_s)
    torch.manual_seed(args.seed)  # identical initial weights on every rank
    report = load_reporter()
    raw_dir = args.ckpt_dir or os.environ.get("TRAINFLEET_CHECKPOINT_DIR") or None
    ckpt_dir = Path(raw_dir) if raw_dir else None

    splits = load_splits(args.corpus_chars)
    cfg = GPTConfig(
        vocab_size=VOCAB_SIZE,
        block_size=args.block_size,
        n_layer=args.n_layer,
        n_head=args.n_head,
        n_embd=args.n_embd,
        dropout=args.dropout,
    )
    model = GPT(cfg).to(d.device)
    opt = make_optimizer(model, args)
    start = resume(ckpt_dir, model, opt, d)
    ddp: torch.nn.Module = (
        DDP(model, device_ids=[d.local_rank] if d.device.type == "cuda" else None) if d.active else model
    )
    if start:
        report(step=start)  # progress is known before the first step of this run
    if d.is_main:
        todo = f"steps {start + 1}..{args.steps}" if start < args.steps else "no steps left"
        print(
            f"gpt: {model.num_params() / 1e6:.2f}M params, world {d.world}, device {d.device}, "
            f"{todo}, {len(splits.train)} training chars, "
            f"checkpoints {ckpt_dir or 'off'}",
            flush=True,
        )

    def save(step: int) -> None:
        if ckpt_dir is None or not d.is_main:
            return
        state = {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "step": step,
            "rng": {"torch": torch.get_rng_state()},
            "config": vars(args) | {"world": d.world},
        }
        save_checkpoint(ckpt_dir, step, state, keep=args.ckpt_keep)

    tokens_per_step = args.batch_size * args.block_size
    notice = PreemptionNotice()
    window_loss, window_steps, window_t0 = 0.0, 0, time.perf_counter()
    for step in range(start + 1, args.steps + 1):
        maybe_inject_fault(args, step, d.rank)
        lr = lr_at(step, args)
        loss_value, dt, compute_s = train_step(ddp, model, opt, splits.train, args, d, step, lr)
        if step == start + 1:
            now = time.time()  # wall clock: benchmarks/launch.py compares it with the launch time
            print(f"rank {d.rank} first step done at {now:.6f}", flush=True)
        metrics = {"loss": loss_value, "tokens_per_s": tokens_per_step / dt, "lr": lr, "step_time_s": dt,
                   "compute_s": compute_s}
        last = step == args.steps
        if (args.eval_every and step % args.eval_every == 0) or last:
            metrics["val_loss"] = evaluate(model, splits.val, args, d)
        report(step=step, **metrics)
        window_loss, window_steps = window_loss + loss_value, window_steps + 1
        if step % args.log_every == 0 or step == start + 1 or last:
            elapsed = time.perf_counter() - window_t0
            if d.is_main:
                tok_s = window_steps * tokens_per_step * d.world / elapsed
                mean = window_loss / window_steps
                print(f"step {step} loss {mean:.3f} tok/s {tok_s:.0f} lr {lr:.2e}", flush=True)
                if "val_loss" in metrics:
                    print(f"eval step {step} val_loss {metrics['val_loss']:.3f}", flush=True)
            window_loss, window_steps, window_t0 = 0.0, 0, time.perf_counter()
        elif d.is_main and "val_loss" in metrics:
            print(f"eval step {step} val_loss {metrics['val_loss']:.3f}", flush=True)
        if notice.agreed(d):
            save(step)
            if d.is_main:
                print(f"checkpoint on preemption notice at step {step}", flush=True)
        elif (args.ckpt_every and step % args.ckpt_every == 0) or last:
            save(step)
        if args.step_sleep_s > 0:
            time.sleep(args.step_sleep_s)
    if start >= args.steps and d.is_main:
        print(f"nothing to do: already at step {start} of {args.steps}", flush=True)
    if args.sample_chars and d.is_main:
        from data import decode

        idx = torch.zeros((1, 1), dtype=torch.long, device=d.device)
        print(
            "sample:\n" + decode(model.generate(idx, args.sample_chars, temperature=0.8)[0].tolist()),
            flush=True,
        )
    shutdown_distributed(d, args.pg_timeout_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
