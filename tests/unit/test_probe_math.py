"""Probe arithmetic: nccl-tests bandwidth definitions, size parsing, the tournament schedule, bisection."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trainfleet.errors import InputError
from trainfleet.health.probes.bisect import find_slow_nodes, rounds_bound
from trainfleet.health.probes.busbw import (
    Collective,
    algbw,
    bus_factor,
    busbw,
    format_size,
    parse_size,
    parse_sizes,
)
from trainfleet.health.probes.schedule import partner_map, round_robin, rounds_needed

# -- busbw -------------------------------------------------------------------------------------------------


def test_bus_factors_follow_nccl_tests() -> None:
    assert bus_factor(Collective.ALL_REDUCE, 8) == pytest.approx(2 * 7 / 8)
    assert bus_factor("all_gather", 8) == pytest.approx(7 / 8)
    assert bus_factor(Collective.REDUCE_SCATTER, 4) == pytest.approx(3 / 4)
    assert bus_factor(Collective.SEND_RECV, 2) == 1.0
    assert bus_factor(Collective.ALL_REDUCE, 1) == 0.0


def test_busbw_of_a_known_nccl_tests_line() -> None:
    # nccl-tests all_reduce_perf, 8 ranks, 8 GiB in 40.0 ms: algbw 214.75 GB/s, busbw 375.8 GB/s
    size = 8 << 30
    assert algbw(size, 0.040) == pytest.approx(214.748, rel=1e-4)
    assert busbw(Collective.ALL_REDUCE, size, 0.040, 8) == pytest.approx(214.748 * 1.75, rel=1e-4)


def test_bandwidth_rejects_nonsense() -> None:
    with pytest.raises(InputError, match="time"):
        algbw(1024, 0.0)
    with pytest.raises(InputError, match="rank count"):
        bus_factor(Collective.ALL_REDUCE, 0)


def test_sizes_are_binary_and_step_by_factor() -> None:
    assert parse_size("1K") == 1024
    assert parse_size("4MiB") == 4 << 20
    assert parse_size("1g") == 1 << 30
    assert parse_size("64") == 64
    assert parse_sizes("1K..1G") == [1 << k for k in range(10, 31)]
    assert parse_sizes("1K..1M", factor=4) == [1024, 4096, 16384, 65536, 262144, 1 << 20]
    assert parse_sizes("64M, 1K,1K") == [1024, 64 << 20]
    assert format_size(1 << 30) == "1G" and format_size(3 << 20) == "3M" and format_size(1000) == "1000"


@pytest.mark.parametrize("text", ["", "abc", "1X", "0", "0.3K..1M", "1M..1K", "1.3"])
def test_bad_sizes_name_the_field(text: str) -> None:
    with pytest.raises(InputError, match="--sizes"):
        parse_sizes(text, field="--sizes")


# -- tournament schedule -------------------------------------------------------------------------------------


@given(st.integers(min_value=0, max_value=41))
def test_round_robin_meets_every_pair_once_and_each_node_once_per_round(n: int) -> None:
    nodes = [f"n{i}" for i in range(n)]
    rounds = round_robin(nodes)
    assert len(rounds) == rounds_needed(n)
    met = [frozenset(pair) for pairs in rounds for pair in pairs]
    assert len(met) == len(set(met)) == n * (n - 1) // 2
    assert set(met) == {frozenset(p) for p in itertools.combinations(nodes, 2)}
    for pairs in rounds:
        busy = [node for pair in pairs for node in pair]
        assert len(busy) == len(set(busy))  # nobody twice in a round
        assert len(busy) == (n if n % 2 == 0 else n - 1)  # everyone busy, or exactly one bye


def test_round_robin_orders_pairs_and_maps_partners() -> None:
    rounds = round_robin(["a", "b", "c"])
    assert all(["abc".index(x) < "abc".index(y) for x, y in pairs] for pairs in rounds)
    assert partner_map(rounds[0]) == {x: y for a, b in rounds[0] for x, y in ((a, b), (b, a))}
    with pytest.raises(ValueError, match="distinct"):
        round_robin(["a", "a"])


# -- bisection ------------------------------------------------------------------------------------------


def ring_measure(link_gbps: dict[str, float], calls: list[tuple[str, ...]]):
    """A ring all-reduce model: the group runs at its slowest member's link speed (recorded for the test)."""

    def measure(group: tuple[str, ...]) -> float:
        assert len(group) >= 2, "a lone node cannot all-reduce"
        calls.append(group)
        return min(link_gbps[n] for n in group)

    return measure


@pytest.mark.parametrize("n", [4, 5, 8, 13, 64, 1000])
def test_bisection_finds_the_one_slow_node_in_log_rounds(n: int) -> None:
    nodes = [f"node{i:04d}" for i in range(n)]
    for culprit in {nodes[0], nodes[n // 2], nodes[-1]}:
        speeds = dict.fromkeys(nodes, 48.0) | {culprit: 4.8}
        calls: list[tuple[str, ...]] = []
        result = find_slow_nodes(nodes, ring_measure(speeds, calls), min_busbw_gbps=40.0)
        assert result.culprits == [culprit]
        assert result.unresolved == []
        assert result.rounds <= rounds_bound(n) == 2 + math.ceil(math.log2(n))
        for r in range(1, result.rounds + 1):
            groups = [m.group for m in result.measurements if m.round == r]
            members = [x for g in groups for x in g]
            assert len(members) == len(set(members)), f"round {r} reuses a node"


def test_bisection_finds_several_slow_nodes_and_clears_a_healthy_fleet() -> None:
    nodes = [f"n{i}" for i in range(32)]
    speeds = dict.fromkeys(nodes, 48.0) | {"n5": 10.0, "n20": 3.0}
    result = find_slow_nodes(nodes, ring_measure(speeds, []), min_busbw_gbps=40.0)
    assert result.culprits == ["n20", "n5"]  # slowest first
    healthy = find_slow_nodes(nodes, ring_measure(dict.fromkeys(nodes, 48.0), []), min_busbw_gbps=40.0)
    assert (healthy.culprits, healthy.rounds, len(healthy.measurements)) == ([], 1, 1)


def test_bisection_on_three_nodes_never_blames_the_wrong_one() -> None:
    nodes = ["a", "b", "c"]
    for culprit in nodes:
        speeds = dict.fromkeys(nodes, 48.0) | {culprit: 4.8}
        result = find_slow_nodes(nodes, ring_measure(speeds, []), min_busbw_gbps=40.0)
        named = result.culprits or [n for group in result.unresolved for n in group]
        assert culprit in named and len(result.culprits) <= 1


def test_bisection_reports_what_it_cannot_narrow() -> None:
    # a bad link between n0 and n3: any group with both is slow, every half is fine
    def measure(group: tuple[str, ...]) -> float:
        return 5.0 if {"n0", "n3"} <= set(group) else 48.0

    result = find_slow_nodes(["n0", "n1", "n2", "n3"], measure, min_busbw_gbps=40.0)
    assert result.culprits == []
    assert result.unresolved == [("n0", "n1", "n2", "n3")]
    # two nodes, both slow: nothing to compare with
    both = find_slow_nodes(["a", "b"], lambda g: 1.0, min_busbw_gbps=40.0)
    assert both.culprits == [] and both.unresolved == [("a", "b")]
