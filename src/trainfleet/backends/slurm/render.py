"""One attempt of a job rendered as an sbatch script: pure text, no I/O (golden-tested, shown by --dry-run).

The script asks Slurm for ``spec.nodes`` nodes with one task each (pinned to ``nodelist`` when given, as
probe jobs are; avoiding ``exclude``), then ``srun`` starts the very same agent the local backend runs
(``trainfleet.runtime.agent``) once per node; the agent takes its node rank from ``$SLURM_NODEID`` and
spawns ``procs_per_node`` ranks with the usual environment contract. ``MASTER_ADDR`` is
the first host of the allocation, computed by the script and handed to every agent.

Quoting: ``#SBATCH`` lines are read by sbatch, not by a shell, so they only carry values trainfleet controls
or has validated (node names, numbers, the job name pattern, paths made of safe characters); everything that
comes from the user (command, arguments, environment values, workdir, checkpoint dir) appears only in the
shell body, each value through ``shlex.quote``.

Preemption and time limits: ``--signal=B:USR1@<s>`` makes Slurm signal the batch shell ``s`` seconds before it
stops the job (at the time limit; at preemption too where ``PreemptParameters=send_user_signal``). The
script's trap (``tf_notice``) records the notice in ``$TRAINFLEET_PREEMPT_NOTICE`` and writes one
``PreemptNotice`` line to the supervisor through bash's ``/dev/tcp``; the supervisor asks every agent to
pass it on (``Checkpoint``) and each agent signals its ranks (SIGUSR2, see ``runtime.agent``). Nothing is
forwarded through srun: srun signals every process of the step (measured on 22.05: a rank's child in its own
session got it too), where SIGUSR1 means "dump your stacks" to a rank and kills any process without a
handler, and so would SIGUSR2 for a helper exec'd by a rank that handles it.

``--no-requeue``: the supervisor is the only owner of restarts. When Slurm preempts, times out or requeues
the job, the supervisor resubmits it as a new Slurm job (a new attempt with its own job id, rendezvous port,
``--exclude`` and log directory) and cancels a requeued one; a Slurm-side requeue of the same job id would
run the attempt twice and reuse a stale rendezvous. On a cluster with ``PreemptMode=REQUEUE`` a job that
cannot be requeued is cancelled instead (state PREEMPTED), which the supervisor handles the same way.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable
from typing import TYPE_CHECKING

from trainfleet.backends.base import AgentLaunch, AttemptPlan, Request
from trainfleet.backends.local import agent_argv, agent_env
from trainfleet.errors import BackendError
from trainfleet.runtime.protocol import parse_addr

if TYPE_CHECKING:
    from trainfleet.spec import JobSpec

PREEMPT_SIGNAL = "USR1"
PREEMPT_NOTICE_S = 60
"""Seconds of warning before preemption / time limit (Slurm delivers it with up to 60 s of jitter)."""
PREEMPT_NOTICE_LINE = '{"type":"preempt_notice","source":"slurm --signal ' + PREEMPT_SIGNAL + '"}'
"""The ``runtime.protocol.PreemptNotice`` the batch script's trap sends to the supervisor."""

# What sbatch can read back from an #SBATCH line unchanged: no blanks, quotes, '#', backslash or newline
# ('<' and '>' only for the placeholders of --dry-run: sbatch does not treat them specially).
_SAFE_DIRECTIVE = re.compile(r"[A-Za-z0-9_./+,:=@%~<>\[\]-]+")
_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def slurm_job_name(spec: JobSpec, plan: AttemptPlan) -> str:
    """The Slurm job name of an attempt: ``tf-<name>-<job id>-a<attempt>`` (findable in squeue)."""
    return f"tf-{spec.name}-{plan.job_id}-a{plan.attempt}"


def attempt_dir(plan: AttemptPlan) -> str:
    """Directory of the attempt's files on the shared filesystem (the agents write rank logs below it)."""
    return f"{plan.run_dir}/attempt-{plan.attempt}"


def batch_log_path(plan: AttemptPlan) -> str:
    """The batch script's own stdout/stderr (``%j`` is the Slurm job id)."""
    return f"{attempt_dir(plan)}/slurm-%j.out"


def agent_log_pattern(plan: AttemptPlan) -> str:
    """srun's per-node output file for the agents (``%n`` is the node id = ``$SLURM_NODEID``)."""
    return f"{attempt_dir(plan)}/node-%n/agent.log"


def check_node_names(names: Iterable[str], *, field: str = "exclude") -> tuple[str, ...]:
    """Sorted, de-duplicated node names; raises ``BackendError`` (naming ``field``) for one Slurm could not
    name."""
    out = sorted(set(names))
    for name in out:
        if not isinstance(name, str) or not _NODE_NAME.fullmatch(name):
            raise BackendError(f"{field}: {name!r} is not a Slurm node name")
    return tuple(out)


def check_nodelist(spec: JobSpec, nodelist: Iterable[str], excluded: Iterable[str]) -> tuple[str, ...]:
    """The nodes an attempt is pinned to (``--nodelist``), checked: valid names, no more of them than the
    job's nodes (sbatch refuses that), none also excluded (sbatch refuses that too)."""
    pinned = check_node_names(nodelist, field="nodelist")
    if len(pinned) > spec.nodes:
        raise BackendError(f"nodelist: {len(pinned)} nodes named ({','.join(pinned)}) but the job asks for "
                           f"{spec.nodes}")
    both = sorted(set(pinned) & set(excluded))
    if both:
        raise BackendError(f"nodelist: {','.join(both)} also excluded; Slurm cannot run the job")
    return pinned


def render_script(spec: JobSpec, plan: AttemptPlan, *, exclude: Iterable[str] = (),
                  partition: str | None = None, nodelist: Iterable[str] = ()) -> str:
    """The sbatch script of one attempt; the same inputs always give the same text.

    ``nodelist`` pins the attempt to those nodes (``--nodelist``; Slurm picks the rest when it names fewer
    than ``spec.nodes``); without it Slurm chooses among all nodes not in ``exclude``.
    """
    excluded = check_node_names(exclude)
    pinned = check_nodelist(spec, nodelist, excluded)
    directives = [
        f"--job-name={slurm_job_name(spec, plan)}",
        f"--nodes={spec.nodes}",
        "--ntasks-per-node=1",
        f"--cpus-per-task={spec.procs_per_node}",
        f"--output={batch_log_path(plan)}",
        "--open-mode=append",
        "--no-requeue",
        f"--signal=B:{PREEMPT_SIGNAL}@{PREEMPT_NOTICE_S}",
    ]
    if partition is not None:
        directives.append(f"--partition={partition}")
    if pinned:
        directives.append(f"--nodelist={','.join(pinned)}")
    if excluded:
        directives.append(f"--exclude={','.join(excluded)}")
    for directive in directives:
        if not _SAFE_DIRECTIVE.fullmatch(directive):
            raise BackendError(
                f"cannot write #SBATCH {directive!r}: it has blanks, quotes or other characters sbatch "
                "would misread (TRAINFLEET_HOME and the partition must be plain paths/names)"
            )

    q = shlex.quote
    argv = agent_argv(spec, plan, None)
    at = argv.index("--master-addr")
    agent = [q(a) for a in argv[:at + 1]] + ['"$MASTER_ADDR"'] + [q(a) for a in argv[at + 2:]]
    env = {**agent_env(spec), "TRAINFLEET_JOB_ID": plan.job_id, "TRAINFLEET_ATTEMPT": str(plan.attempt),
           "TRAINFLEET_PREEMPT_NOTICE": f"{attempt_dir(plan)}/preempt-notice"}
    lines = ["#!/bin/bash"]
    lines += [f"#SBATCH {directive}" for directive in directives]
    lines += [
        f"# trainfleet job {plan.job_id} attempt {plan.attempt}: one agent per node; rendered, do not edit.",
        "set -u",
        *(f"export {key}={q(value)}" for key, value in env.items()),
        "mapfile -t TF_HOSTS < <(scontrol show hostnames \"$SLURM_JOB_NODELIST\")",
        'export MASTER_ADDR="${TF_HOSTS[0]}"',
        "tf_notice() {",
        '    echo "trainfleet: $(date -u +%FT%TZ) preemption/time-limit notice"',
        '    date -u +%FT%TZ >>"$TRAINFLEET_PREEMPT_NOTICE"',
        f"    printf '%s\\n' {q(PREEMPT_NOTICE_LINE)} 2>/dev/null >{q(_tcp_path(plan.supervisor_addr))} \\",
        '        || echo "trainfleet: the notice did not reach the supervisor" >&2',
        "}",
        f"trap tf_notice {PREEMPT_SIGNAL}",
        # srun runs in the background so the trap fires at once; `wait` returns early on a trapped signal.
        f"srun --nodes={spec.nodes} --ntasks-per-node=1 --kill-on-bad-exit=0 "
        f"--output={q(agent_log_pattern(plan))} \\",
        "    " + " ".join(agent) + " &",
        "TF_SRUN=$!",
        'while wait "$TF_SRUN"; TF_STATUS=$?; kill -0 "$TF_SRUN" 2>/dev/null; do :; done',
        'exit "$TF_STATUS"',
    ]
    return "\n".join(lines) + "\n"


def _tcp_path(supervisor_addr: str) -> str:
    """bash's ``/dev/tcp/HOST/PORT`` for the supervisor (``--dry-run``'s placeholder address kept as is)."""
    try:
        host, port = parse_addr(supervisor_addr)
    except ValueError:
        host, _, port_text = supervisor_addr.rpartition(":")
        return f"/dev/tcp/{host}/{port_text}"
    return f"/dev/tcp/{host}/{port}"


def render_request(spec: JobSpec, plan: AttemptPlan, *, exclude: Iterable[str] = (),
                   partition: str | None = None, nodelist: Iterable[str] = ()) -> Request:
    """The attempt as a ``Request``: ``script`` is the sbatch text; ``agents`` describe what srun starts."""
    script = render_script(spec, plan, exclude=exclude, partition=partition, nodelist=nodelist)
    agents = [
        AgentLaunch(node_rank=node, argv=agent_argv(spec, plan, None), env=agent_env(spec), cwd=spec.workdir,
                    log_path=agent_log_pattern(plan).replace("%n", str(node)))
        for node in range(spec.nodes)
    ]
    return Request(backend="slurm", job_id=plan.job_id, attempt=plan.attempt,
                   world_size=spec.nodes * spec.procs_per_node, master_addr="$MASTER_ADDR (first host)",
                   master_port=plan.master_port, agents=agents, script=script)
