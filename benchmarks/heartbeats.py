"""The supervisor's heartbeat path under 12,500 simulated agents at 1 Hz on loopback.

A server process runs the supervisor's own pieces in its single-threaded select loop: the same selector
and 0.2 s tick as ``AttemptWatch``, ``runtime.protocol.LineBuffer`` decoding every line into typed
messages (``Hello``, ``Heartbeat``), and ``supervise.monitor.HeartbeatMonitor`` with the supervisor's
deadline (``HEARTBEAT_MISSES`` x interval). Load generators (separate processes, one TCP connection per
simulated agent) send a ``Hello`` and then one real encoded ``Heartbeat`` per agent per second, spread
evenly over the second. From ``--silence-at`` on they silence one agent every ``--silence-every`` seconds.

Printed: messages handled per second, the server's CPU seconds per wall second in the measured window (one
core = 1.0), and, for each silenced agent, the delay from its deadline (last heartbeat + deadline) to the
moment the server declared it dead: p50 / p99 / max. Any agent declared dead that was not silenced is a
false positive. Bounded: ``--agents`` connections, ``--seconds`` of run time, then everything exits.
Targets: sustained on one core (CPU/wall < 1.0, every heartbeat handled), p99 delay < 3 s.

    .venv/bin/python benchmarks/heartbeats.py                       # 12,500 agents, 40 s
    .venv/bin/python benchmarks/heartbeats.py --agents 2000 --seconds 15
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import selectors
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from trainfleet.runtime.protocol import Heartbeat, Hello, LineBuffer, ProtocolError, encode
from trainfleet.supervise.attempt import HEARTBEAT_MISSES
from trainfleet.supervise.monitor import HeartbeatMonitor


def serve(port_q: mp.Queue, result_q: mp.Queue, interval_s: float, seconds: float, warmup_s: float) -> None:
    """The supervisor side (see module doc); puts its figures on ``result_q`` when ``seconds`` are up."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=4096)
    listener.setblocking(False)
    port_q.put(listener.getsockname()[1])
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, None)
    monitor = HeartbeatMonitor(interval_s, HEARTBEAT_MISSES)
    bufs: dict[int, tuple[socket.socket, LineBuffer, list[int | None]]] = {}
    declared: dict[int, tuple[float, float]] = {}  # node -> (wall time declared, delay past its deadline)
    last_wall: dict[int, float] = {}
    t0 = time.monotonic()
    messages = 0
    window_msgs, cpu0, wall0 = 0, None, None
    while time.monotonic() - t0 < seconds:
        for key, _ in sel.select(timeout=0.2):
            if key.data is None:
                while True:
                    try:
                        sock, _ = listener.accept()
                    except BlockingIOError:
                        break
                    sock.setblocking(False)
                    sel.register(sock, selectors.EVENT_READ, sock.fileno())
                    bufs[sock.fileno()] = (sock, LineBuffer(), [None])
                continue
            sock, buf, node = bufs[key.data]
            try:
                data = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                sel.unregister(sock)
                sock.close()
                continue
            try:
                msgs = buf.feed(data)
            except ProtocolError:
                continue
            now = time.monotonic()
            for msg in msgs:
                messages += 1
                if isinstance(msg, Hello):
                    node[0] = msg.node_rank
                if node[0] is not None and node[0] not in declared:
                    monitor.beat(node[0], now)
                    last_wall[node[0]] = now
        now = time.monotonic()
        for n, silent in monitor.silent(now):
            monitor.forget(n)
            declared[n] = (time.time(), silent - monitor.deadline_s)
        if cpu0 is None and now - t0 >= warmup_s:
            ru = resource.getrusage(resource.RUSAGE_SELF)
            cpu0, wall0, window_msgs = ru.ru_utime + ru.ru_stime, now, messages
    ru = resource.getrusage(resource.RUSAGE_SELF)
    wall = time.monotonic() - (wall0 or t0)
    result_q.put({"messages": messages, "window_messages": messages - window_msgs, "window_s": wall,
                  "cpu_s": ru.ru_utime + ru.ru_stime - (cpu0 or 0.0), "declared": declared,
                  "watched": len(monitor) + len(declared)})


def generate(port: int, first: int, count: int, interval_s: float, seconds: float, silence_at: float,
             silence_every: float, silence_q: mp.Queue, start_at: float) -> None:
    """``count`` simulated agents (node ranks ``first``...): Hello, then a heartbeat each per interval."""
    socks = []
    for _ in range(count):
        for _ in range(50):
            try:
                socks.append(socket.create_connection(("127.0.0.1", port), timeout=10))
                break
            except OSError:
                time.sleep(0.05)
    beats = [encode(Heartbeat(first + i, time.time(), {first + i: 100}, [])) for i in range(count)]
    while time.time() < start_at:
        time.sleep(0.01)
    for i, sock in enumerate(socks):  # every agent says hello when the clock starts, then beats
        sock.sendall(encode(Hello(node_rank=first + i, pid=os.getpid(), host="sim")))
    t0 = time.monotonic()
    silenced: dict[int, float] = {}
    next_silence = t0 + silence_at
    sent = 0
    while (now := time.monotonic()) - t0 < seconds:
        late = now - t0 > seconds - HEARTBEAT_MISSES * interval_s - 2.0  # too late to be seen before the end
        if now >= next_silence and len(silenced) < count // 2 and not late:
            victim = (len(silenced) * 7919) % count
            while victim in silenced:
                victim = (victim + 1) % count
            silenced[victim] = time.time()
            next_silence += silence_every
        # agents whose slot in this second has come since the last pass
        due = int(((now - t0) / interval_s) * count)
        while sent < due:
            i = sent % count
            if i not in silenced:
                try:
                    socks[i].sendall(beats[i])
                except OSError:
                    pass
            sent += 1
        time.sleep(0.002)
    silence_q.put({first + i: ts for i, ts in silenced.items()})
    time.sleep(1.0)
    for s in socks:
        s.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=12_500)
    ap.add_argument("--generators", type=int, default=2)
    ap.add_argument("--interval-s", type=float, default=1.0)
    ap.add_argument("--seconds", type=float, default=40.0, help="run time after all agents connected")
    ap.add_argument("--silence-at", type=float, default=10.0)
    ap.add_argument("--silence-every", type=float, default=0.1)
    args = ap.parse_args()
    ctx = mp.get_context("fork")
    port_q, result_q, silence_q = ctx.Queue(), ctx.Queue(), ctx.Queue()
    connect_s = 5.0 + args.agents / 2000
    server = ctx.Process(target=serve, args=(port_q, result_q, args.interval_s, connect_s + args.seconds - 1,
                                             connect_s + 5.0))
    server.start()
    port = port_q.get(timeout=10)
    start_at = time.time() + connect_s
    per = args.agents // args.generators
    gens = [ctx.Process(target=generate, args=(port, g * per, per, args.interval_s, args.seconds,
                                               args.silence_at, args.silence_every, silence_q, start_at))
            for g in range(args.generators)]
    for g in gens:
        g.start()
    silenced: dict[int, float] = {}
    for _ in gens:
        silenced.update(silence_q.get(timeout=connect_s + args.seconds + 60))
    result = result_q.get(timeout=connect_s + args.seconds + 60)
    for p in [*gens, server]:
        p.join(timeout=10)
        if p.is_alive():
            p.kill()
    declared = result["declared"]
    delays = sorted(declared[n][1] for n in silenced if n in declared)
    missed = [n for n in silenced if n not in declared]
    false_pos = [n for n in declared if n not in silenced]
    expected_rate = per * args.generators / args.interval_s
    rate = result["window_messages"] / result["window_s"]
    cpu = result["cpu_s"] / result["window_s"]
    deadline = HEARTBEAT_MISSES * args.interval_s

    def pct(q: float) -> float:
        return delays[min(len(delays) - 1, int(q * len(delays)))] if delays else float("nan")

    print(f"agents {per * args.generators} at {1 / args.interval_s:g} Hz over loopback, {args.generators} "
          f"generator processes, deadline {deadline:g}s ({HEARTBEAT_MISSES:g} intervals)")
    print(f"server: {rate:,.0f} messages/s handled (offered {expected_rate:,.0f}/s) "
          f"over {result['window_s']:.1f}s; "
          f"CPU {cpu:.2f} core-seconds per second")
    print(f"silent agents: {len(silenced)} silenced, {len(delays)} declared dead, {len(missed)} missed, "
          f"{len(false_pos)} false positives")
    if delays:
        print(f"delay past the deadline to declare dead: p50 {statistics.median(delays) * 1000:.0f} ms, "
              f"p99 {pct(0.99) * 1000:.0f} ms, max {delays[-1] * 1000:.0f} ms "
              f"(time from last heartbeat: p99 {(pct(0.99) + deadline):.2f}s)")
    ok = cpu < 1.0 and rate >= 0.95 * expected_rate and pct(0.99) < 3.0 and not missed and not false_pos
    print(json.dumps({"agents": per * args.generators, "msgs_per_s": round(rate), "cpu_cores": round(cpu, 3),
                      "p50_delay_s": round(statistics.median(delays), 3) if delays else None,
                      "p99_delay_s": round(pct(0.99), 3) if delays else None, "missed": len(missed),
                      "false_positives": len(false_pos)}))
    print(f"RESULT {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
