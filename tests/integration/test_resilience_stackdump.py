"""The agent's stack dumps on real processes: py-spy and the faulthandler fallback, on a SIGSTOPped rank."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainfleet.runtime.stackdump import RankTarget, dump_ranks, process_state, stack_env
from trainfleet.supervise.stacks import load_dump

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]
RANK = """
import time
print("ready", flush=True)
def compute():
    while True:
        time.sleep(0.02)
compute()
"""


@pytest.fixture
def stopped_rank(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A Python process started like a rank (stack hook on its PYTHONPATH), then SIGSTOPped."""
    stack_file = tmp_path / "rank-3.stacks"
    env = {**os.environ, **stack_env(str(stack_file), os.environ.get("PYTHONPATH"))}
    script = tmp_path / "rank.py"
    script.write_text(RANK)
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    os.kill(proc.pid, signal.SIGSTOP)
    deadline = time.monotonic() + 5
    while process_state(proc.pid) != "T" and time.monotonic() < deadline:
        time.sleep(0.01)
    yield proc, RankTarget(rank=3, pid=proc.pid, stack_file=str(stack_file))
    proc.kill()
    proc.wait()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("tool", ["py-spy", "faulthandler"])
def test_a_stopped_rank_is_dumped_with_its_state_and_frames(  # type: ignore[no-untyped-def]
        tool: str, stopped_rank, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proc, target = stopped_rank
    installed = Path(sys.executable).with_name("py-spy").is_file() or shutil.which("py-spy")
    if tool == "py-spy" and not installed:
        pytest.fail("py-spy is a dev dependency and must be installed for this test")
    if tool == "faulthandler":
        monkeypatch.setenv("TRAINFLEET_STACK_TOOL", "faulthandler")
    files, states, used = dump_ranks([target], str(tmp_path / "stacks"), node_rank=1)
    assert used == tool and states == {3: "T"}
    dump = load_dump(files[3])
    assert dump is not None
    assert (dump.rank, dump.pid, dump.node, dump.state, dump.tool) == (3, proc.pid, 1, "T", tool)
    assert dump.signature == "compute (rank.py)" and [f.func for f in dump.frames] == ["compute", "<module>"]
    if tool == "py-spy":
        assert process_state(proc.pid) == "T"  # py-spy reads memory: the rank stays as it was
