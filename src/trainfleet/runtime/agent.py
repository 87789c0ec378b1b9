"""The per-node agent: ``python -m trainfleet.runtime.agent [options] -- COMMAND...``.

One agent runs per logical node (a local process, later one task of ``srun``). It spawns its ranks with the
rank environment (``runtime.env``), each in its own session/process group, reads their stdout/stderr pipes
into timestamped per-rank files, receives ``trainfleet.report`` datagrams, and talks to its supervisor over
one TCP connection (``runtime.protocol``): ``Hello``, ``RankStarted``/``RankExited`` with pid, exit code or
signal and times, and a ``Heartbeat`` every ``--heartbeat-interval-s`` with each rank's latest step.
Asked to (``DumpStacks``), it writes each rank's Python stacks (``runtime.stackdump``: py-spy, or the
faulthandler hook it puts on every rank's ``PYTHONPATH``) and answers ``StacksDumped``.

It stops its ranks (SIGTERM to each process group, SIGKILL after ``--grace-s``) when told to (``Stop``),
on SIGTERM/SIGINT/SIGHUP, or when the supervisor connection is lost. Rank leaders get PR_SET_PDEATHSIG
so that ``kill -9`` of the agent takes them down too. One thread, one ``select`` loop; stdlib only.

Preemption / time-limit notice: ``Checkpoint`` from the supervisor (on Slurm the batch script's trap tells
the supervisor), or SIGUSR1 / SIGUSR2 sent to the agent itself, makes it send ``CHECKPOINT_SIGNAL`` (SIGUSR2;
SIGUSR1 already means "dump your stacks" to a rank) to each live rank's leader process, not its process
group, and report ``CheckpointNotice``. Ranks start with that signal ignored, so a program that does not
checkpoint is never killed by a notice; one that does installs a handler (the signal's name is in
``$TRAINFLEET_CHECKPOINT_SIGNAL``), e.g. to save a checkpoint at the end of the current step. Helpers a rank
started are not signalled: one exec'd after the rank installed its handler would die of the default action.
"""

from __future__ import annotations

import argparse
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from trainfleet.runtime import lifeline
from trainfleet.runtime.env import Placement, rank_env, rank_log_paths
from trainfleet.runtime.logpipe import PipeLog, utc_stamp
from trainfleet.runtime.protocol import (
    AgentDone,
    Checkpoint,
    CheckpointNotice,
    DumpStacks,
    Heartbeat,
    Hello,
    LineBuffer,
    Message,
    ProgressRow,
    ProtocolError,
    RankExited,
    RankStarted,
    StacksDumped,
    Stop,
    encode,
    parse_addr,
)
from trainfleet.runtime.report import decode_report
from trainfleet.runtime.stackdump import RankTarget, dump_ranks, stack_env

_MAX_ROWS_PER_RANK = 256  # per heartbeat; older rows of a flood are dropped, the newest always kept
_DRAIN_S = 2.0  # after the last rank is gone, how long to wait for its pipes to reach EOF
CHECKPOINT_SIGNAL = signal.SIGUSR2
"""What a rank gets on a preemption / time-limit notice (``$TRAINFLEET_CHECKPOINT_SIGNAL`` names it)."""
NOTICE_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)
"""Signals that, sent to the agent, mean "the engine will stop this job soon: checkpoint now"."""


def rank_preexec(parent_pid: int) -> Callable[[], None]:
    """``preexec_fn`` of a rank: die with the agent, and start with ``CHECKPOINT_SIGNAL`` ignored (a handler
    the program installs replaces that; an ignored signal stays ignored across exec in its children)."""
    die_with_parent = lifeline.die_with_parent_hook(signal.SIGKILL, parent_pid)

    def hook() -> None:
        signal.signal(CHECKPOINT_SIGNAL, signal.SIG_IGN)
        die_with_parent()

    return hook


@dataclass
class RankProc:
    """One rank this agent started: its leader process, log pumps and outcome."""

    rank: int
    local_rank: int
    pid: int
    popen: subprocess.Popen | None
    logs: list[PipeLog] = field(default_factory=list)
    exited: RankExited | None = None
    stack_file: str = ""


class Agent:
    """Runs the ranks of one node for one attempt and reports to the supervisor (see module doc)."""

    def __init__(self, placement: Placement, argv: list[str], *, supervisor: str, workdir: str | None,
                 heartbeat_interval_s: float, grace_s: float) -> None:
        self.p = placement
        self.argv = argv
        self.supervisor_addr = supervisor
        self.workdir = workdir
        self.heartbeat_interval_s = heartbeat_interval_s
        self.grace_s = grace_s
        self.ranks: dict[int, RankProc] = {}
        self.by_pid: dict[int, RankProc] = {}
        self.sel = selectors.DefaultSelector()
        self.conn: socket.socket | None = None
        self.inbox = LineBuffer()
        self.stop_reason: str | None = None
        self.kill_at: float | None = None
        self.rows: dict[int, list[ProgressRow]] = {}
        self.steps: dict[int, int] = {}
        self.notices: list[str] = []  # preemption notices received (their source), handled by the main loop

    # ---- wiring -------------------------------------------------------------------------------------
    def connect(self) -> None:
        """Connect to the supervisor and say ``Hello``; raises ``OSError`` when it cannot be reached."""
        host, port = parse_addr(self.supervisor_addr)
        self.conn = socket.create_connection((host, port), timeout=10)
        self.conn.settimeout(5)  # a stalled supervisor must not wedge the agent forever
        self.send(Hello(node_rank=self.p.node_rank, pid=os.getpid(), host=socket.gethostname()))
        self.sel.register(self.conn, selectors.EVENT_READ, "conn")

    def send(self, msg: Message) -> None:
        """Send one message; a failed send means the supervisor is gone (and the ranks are stopped)."""
        if self.conn is None:
            return
        try:
            self.conn.sendall(encode(msg))
        except OSError:
            self.lost_supervisor()

    def lost_supervisor(self) -> None:
        if self.conn is not None:
            try:
                self.sel.unregister(self.conn)
            except (KeyError, ValueError):
                pass
            self.conn.close()
            self.conn = None
        self.request_stop("supervisor connection lost")

    def request_stop(self, reason: str) -> None:
        """SIGTERM every rank's process group now; the main loop sends SIGKILL after ``grace_s``."""
        if self.stop_reason is None:
            self.stop_reason = reason
            self.signal_groups(signal.SIGTERM)
            self.signal_groups(signal.SIGCONT)  # a stopped (SIGSTOP) rank must run to see the SIGTERM
            self.kill_at = time.monotonic() + self.grace_s

    # ---- ranks --------------------------------------------------------------------------------------
    def spawn_all(self, udp_addr: str) -> None:
        """Start every local rank in its own session with the rank env; a rank that cannot start exits 127."""
        base = dict(os.environ)
        hook = rank_preexec(os.getpid())
        for local_rank in range(self.p.nproc_per_node):
            if self.stop_reason is not None:  # told to stop while starting: start no more ranks
                break
            rank = self.p.global_rank(local_rank)
            out_path, err_path = rank_log_paths(self.p.run_dir, self.p.attempt, self.p.node_rank, rank)
            os.makedirs(os.path.dirname(out_path), exist_ok=True)
            env = rank_env(base, self.p, local_rank, report_addr=udp_addr)
            stack_file = out_path.removesuffix(".out") + ".stacks"
            env.update(stack_env(stack_file, env.get("PYTHONPATH")))
            env["TRAINFLEET_CHECKPOINT_SIGNAL"] = CHECKPOINT_SIGNAL.name
            started = time.time()
            try:
                popen = subprocess.Popen(
                    self.argv, env=env, cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, start_new_session=True, preexec_fn=hook, close_fds=True,
                )
            except OSError as exc:  # command not found, not executable, bad workdir
                with open(err_path, "ab") as err:
                    err.write(f"{utc_stamp()} trainfleet: cannot start {self.argv[0]!r}: {exc}\n".encode())
                open(out_path, "ab").close()
                proc = RankProc(rank, local_rank, pid=0, popen=None)
                self.ranks[rank] = proc
                self.send(RankStarted(self.p.node_rank, rank, local_rank, 0, started, out_path, err_path))
                self.finish_rank(proc, exit_code=127, sig=None)
                continue
            proc = RankProc(rank, local_rank, popen.pid, popen, stack_file=stack_file)
            for pipe, path in ((popen.stdout, out_path), (popen.stderr, err_path)):
                log = PipeLog(os.dup(pipe.fileno()), path)  # type: ignore[union-attr]
                pipe.close()  # type: ignore[union-attr]
                proc.logs.append(log)
                self.sel.register(log.fd, selectors.EVENT_READ, log)
            self.ranks[rank] = proc
            self.by_pid[popen.pid] = proc
            self.send(RankStarted(self.p.node_rank, rank, local_rank, popen.pid, started, out_path, err_path))

    def finish_rank(self, proc: RankProc, *, exit_code: int | None, sig: int | None) -> None:
        proc.exited = RankExited(self.p.node_rank, proc.rank, exit_code, sig, time.time())
        if proc.popen is not None:
            proc.popen.returncode = exit_code if sig is None else -sig  # reaped by us, not by Popen
        self.send(proc.exited)

    def reap(self) -> None:
        """Reap every exited child: rank leaders are recorded; adopted orphans are just collected."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            proc = self.by_pid.pop(pid, None)
            if proc is None:
                continue
            if os.WIFSIGNALED(status):
                self.finish_rank(proc, exit_code=None, sig=os.WTERMSIG(status))
            else:
                self.finish_rank(proc, exit_code=os.waitstatus_to_exitcode(status), sig=None)

    def signal_groups(self, sig: int) -> None:
        """Send ``sig`` to every rank's process group (the leader may already be gone)."""
        for proc in self.ranks.values():
            if proc.pid <= 0:
                continue
            try:
                os.killpg(proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def pass_on_notices(self) -> None:
        """Forward each preemption notice received to the ranks (``CHECKPOINT_SIGNAL``) and report it."""
        while self.notices:
            source = self.notices.pop(0)
            ranks = []
            for proc in self.ranks.values():
                if proc.exited is None and proc.pid > 0 and self.stop_reason is None:
                    try:
                        os.kill(proc.pid, CHECKPOINT_SIGNAL)
                        ranks.append(proc.rank)
                    except (ProcessLookupError, PermissionError):
                        pass
            print(f"{utc_stamp()} trainfleet agent: preemption/time-limit notice ({source}): sent "
                  f"{CHECKPOINT_SIGNAL.name} to ranks {ranks}", file=sys.stderr, flush=True)
            self.send(CheckpointNotice(self.p.node_rank, source, int(CHECKPOINT_SIGNAL), ranks, time.time()))

    # ---- progress -----------------------------------------------------------------------------------
    def read_reports(self, udp: socket.socket) -> None:
        while True:
            try:
                data = udp.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            decoded = decode_report(data)
            if decoded is None:
                continue
            rank, step, ts, values = decoded
            if rank not in self.ranks:
                continue
            if step is not None:
                self.steps[rank] = step
            rows = self.rows.setdefault(rank, [])
            rows.append(ProgressRow(rank, step, ts, values))
            if len(rows) > _MAX_ROWS_PER_RANK:
                del rows[0]

    def heartbeat(self) -> None:
        rows = [row for per_rank in self.rows.values() for row in per_rank]
        self.rows = {}
        self.send(Heartbeat(self.p.node_rank, time.time(), dict(self.steps), rows))

    def handle_conn(self) -> None:
        assert self.conn is not None
        try:
            data = self.conn.recv(65536)
        except (BlockingIOError, InterruptedError, TimeoutError):
            return
        except OSError:
            data = b""
        if not data:
            self.lost_supervisor()
            return
        try:
            messages = self.inbox.feed(data)
        except ProtocolError:
            self.lost_supervisor()
            return
        for msg in messages:
            if isinstance(msg, Stop):
                self.request_stop(msg.reason)
            elif isinstance(msg, DumpStacks):
                self.dump_stacks(msg.directory)
            elif isinstance(msg, Checkpoint):
                self.notices.append("supervisor")

    def dump_stacks(self, directory: str) -> None:
        """Write every live rank's stacks (``runtime.stackdump``) and tell the supervisor where."""
        targets = [RankTarget(p.rank, p.pid, p.stack_file) for p in self.ranks.values()
                   if p.exited is None and p.pid > 0]
        files, states, tool = dump_ranks(targets, directory, self.p.node_rank)
        self.send(StacksDumped(self.p.node_rank, files, states, tool))

    # ---- main loop ----------------------------------------------------------------------------------
    def run(self) -> int:
        """Spawn, watch and stop the ranks; returns 0 iff every rank exited 0 and nobody asked to stop."""
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda s, _f: self.request_stop(f"agent got signal {s}"))
        for sig in NOTICE_SIGNALS:
            signal.signal(sig, lambda s, _f: self.notices.append(signal.Signals(s).name))
        signal.signal(signal.SIGCHLD, lambda _s, _f: None)  # only to wake the loop
        self.sel.register(wake_r, selectors.EVENT_READ, "wake")
        lifeline.become_subreaper()

        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        udp.setblocking(False)
        self.sel.register(udp, selectors.EVENT_READ, "udp")
        self.connect()
        self.spawn_all(f"127.0.0.1:{udp.getsockname()[1]}")

        next_beat = time.monotonic() + self.heartbeat_interval_s
        drain_until: float | None = None
        while True:
            now = time.monotonic()
            done = all(p.exited is not None for p in self.ranks.values())
            if done and drain_until is None:
                self.signal_groups(signal.SIGKILL)  # leftover children of exited ranks: no orphans
                drain_until = now + _DRAIN_S
            pipes_open = any(not log.closed for p in self.ranks.values() for log in p.logs)
            if done and (not pipes_open or now >= (drain_until or now)):
                break
            if self.kill_at is not None and now >= self.kill_at:
                self.signal_groups(signal.SIGKILL)
                self.kill_at = now + 1.0  # keep killing stragglers (e.g. a fork racing the first kill)
            deadline = min(next_beat, self.kill_at or next_beat, drain_until or next_beat)
            for key, _ in self.sel.select(timeout=max(0.0, deadline - now)):
                if key.data == "wake":
                    try:
                        while os.read(wake_r, 512):
                            pass
                    except BlockingIOError:
                        pass
                elif key.data == "udp":
                    self.read_reports(udp)
                elif key.data == "conn":
                    self.handle_conn()
                elif isinstance(key.data, PipeLog) and not key.data.pump():
                    self.sel.unregister(key.fd)
            self.reap()
            self.pass_on_notices()
            if time.monotonic() >= next_beat:
                self.heartbeat()
                next_beat = time.monotonic() + self.heartbeat_interval_s

        for proc in self.ranks.values():
            for log in proc.logs:
                log.close()
        self.read_reports(udp)
        self.heartbeat()
        self.send(AgentDone(self.p.node_rank))
        if self.conn is not None:
            self.conn.close()
        ok = all(p.exited is not None and p.exited.ok for p in self.ranks.values())
        return 0 if ok and self.stop_reason is None else 1


def build_parser() -> argparse.ArgumentParser:
    """The agent's command line (rendered by the backends; not meant to be typed by hand)."""
    ap = argparse.ArgumentParser(prog="python -m trainfleet.runtime.agent", allow_abbrev=False)
    ap.add_argument("--job-id", required=True)
    ap.add_argument("--attempt", type=int, required=True)
    ap.add_argument("--node-rank", type=int, help="this node's rank (default: $SLURM_NODEID)")
    ap.add_argument("--nnodes", type=int, required=True)
    ap.add_argument("--nproc-per-node", type=int, required=True)
    ap.add_argument("--master-addr", required=True)
    ap.add_argument("--master-port", type=int, required=True)
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--checkpoint-dir")
    ap.add_argument("--workdir")
    ap.add_argument("--supervisor", required=True, help="host:port of the supervisor")
    ap.add_argument("--heartbeat-interval-s", type=float, default=1.0)
    ap.add_argument("--grace-s", type=float, default=5.0)
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")
    return ap


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m trainfleet.runtime.agent``; returns the process exit code."""
    args = build_parser().parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    node_rank = args.node_rank if args.node_rank is not None else int(os.environ.get("SLURM_NODEID", "-1"))
    if not command or not 0 <= node_rank < args.nnodes:
        print("trainfleet agent: need -- COMMAND and a node rank in 0..nnodes-1", file=sys.stderr)
        return 2
    placement = Placement(
        job_id=args.job_id, attempt=args.attempt, node_rank=node_rank, nnodes=args.nnodes,
        nproc_per_node=args.nproc_per_node, master_addr=args.master_addr, master_port=args.master_port,
        run_dir=args.run_dir, checkpoint_dir=args.checkpoint_dir,
    )
    agent = Agent(placement, command, supervisor=args.supervisor, workdir=args.workdir,
                  heartbeat_interval_s=args.heartbeat_interval_s, grace_s=args.grace_s)
    try:
        return agent.run()
    except OSError as exc:
        print(f"trainfleet agent: {exc}", file=sys.stderr)
        agent.signal_groups(signal.SIGKILL)
        return 2


if __name__ == "__main__":
    sys.exit(main())
