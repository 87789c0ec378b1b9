"""``trainfleet.report``: a no-op outside trainfleet, one cheap UDP datagram under it, never raising."""

from __future__ import annotations

import json
import socket
import time

import pytest

import trainfleet
from trainfleet.runtime import report as report_mod
from trainfleet.runtime.report import decode_report


@pytest.fixture
def fresh_reporter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report_mod, "_reporter", report_mod._Reporter())


@pytest.fixture
def agent_socket(monkeypatch: pytest.MonkeyPatch, fresh_reporter: None):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2)
    monkeypatch.setenv("TRAINFLEET_REPORT_ADDR", f"127.0.0.1:{sock.getsockname()[1]}")
    monkeypatch.setenv("RANK", "5")
    yield sock
    sock.close()


def test_outside_trainfleet_it_does_nothing(monkeypatch: pytest.MonkeyPatch, fresh_reporter: None) -> None:
    monkeypatch.delenv("TRAINFLEET_REPORT_ADDR", raising=False)
    assert trainfleet.report(step=1, loss=0.5) is None
    assert report_mod._reporter.enabled is False
    assert report_mod._reporter.sock is None


def test_one_datagram_carries_rank_time_step_and_values(agent_socket: socket.socket) -> None:
    before = time.time()
    trainfleet.report(step=7, loss=1.25, tokens_per_s=1000, note="warmup", flag=True)
    body = json.loads(agent_socket.recv(65536))
    assert body["r"] == 5 and body["step"] == 7 and body["loss"] == 1.25
    assert before <= body["t"] <= time.time()
    rank, step, ts, values = decode_report(json.dumps(body).encode())
    assert (rank, step, ts) == (5, 7, body["t"])
    assert values == {"loss": 1.25, "tokens_per_s": 1000.0, "flag": 1.0}  # strings dropped, bool -> 1


class _Scalar:
    """Stands in for a numpy/torch scalar: only ``float()`` works on it."""

    def __float__(self) -> float:
        return 0.75


def test_scalar_objects_are_converted_and_unconvertible_values_dropped(agent_socket: socket.socket) -> None:
    trainfleet.report(step=1, loss=_Scalar(), junk=object())
    body = json.loads(agent_socket.recv(65536))
    assert body["loss"] == 0.75
    assert "junk" not in body


def test_never_raises_or_blocks_even_with_nobody_listening(monkeypatch: pytest.MonkeyPatch,
                                                           fresh_reporter: None) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("TRAINFLEET_REPORT_ADDR", f"127.0.0.1:{port}")  # closed port
    start = time.process_time()  # CPU time: other processes on a loaded machine do not count
    for step in range(2000):
        trainfleet.report(step=step, loss=1.0, big="x" * 10_000 if step == 3 else "")
    per_call = (time.process_time() - start) / 2000
    assert per_call < 100e-6, f"report() took {per_call * 1e6:.1f} us of CPU per call"


@pytest.mark.parametrize("addr", ["nonsense", "host:notaport", ":123", "no.such.host.invalid:9"])
def test_a_bad_address_is_ignored(monkeypatch: pytest.MonkeyPatch, fresh_reporter: None, addr: str) -> None:
    monkeypatch.setenv("TRAINFLEET_REPORT_ADDR", addr)
    trainfleet.report(step=1)
    trainfleet.report(step=2)


@pytest.mark.parametrize("data", [b"", b"not json", b"[]", b'{"t": 1}', b'{"r": "x", "t": 1}'])
def test_the_agent_ignores_datagrams_that_are_not_reports(data: bytes) -> None:
    assert decode_report(data) is None
