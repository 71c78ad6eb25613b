"""Whom an owner tells about its waiting work: the dispatcher's rules, without a network or a clock."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from p2p_sidecar.taskqueue.dispatch import Dispatcher, Need, needs
from p2p_sidecar.taskqueue.protocol import Hint
from p2p_sidecar.taskqueue.records import Placement, PlacementKind

ANY = Placement()
REMOTE = Placement(PlacementKind.REMOTE)
LOCAL = Placement(PlacementKind.LOCAL)


def on(peer: str) -> Placement:
    return Placement(PlacementKind.PEER, peer)


def capable(*peers: str) -> Callable[[str], Sequence[str]]:
    def lookup(task_type: str) -> Sequence[str]:
        return list(peers)

    return lookup


def hinted(plan: list[tuple[str, Hint]]) -> dict[str, dict[str, int]]:
    return {peer: dict(hint.ready) for peer, hint in plan}


def test_needs_leave_to_local_workers_what_their_free_slots_take() -> None:
    demand = {("sleep", ANY): 10, ("sleep", REMOTE): 2, ("sleep", LOCAL): 5, ("echo", ANY): 3, ("sleep", on("p")): 4}
    wanted = needs(demand, {"sleep": 8, "echo": 3})
    assert wanted == {"sleep": Need(anywhere=2 + 2, pinned={"p": 4})}  # 10 - 8 free, plus the 2 placed remote
    assert needs({("sleep", ANY): 3}, {"sleep": 8}) == {}  # all of it fits locally: nobody is told
    assert needs({("sleep", LOCAL): 30}, {}) == {}  # local-only work is never offered


def test_a_trickle_costs_one_hint_per_overflowing_task_not_one_per_peer() -> None:
    dispatcher = Dispatcher()
    peers = capable(*[f"p{index}" for index in range(19)])
    first = hinted(dispatcher.plan(0.0, {"sleep": Need(1, {})}, peers))
    assert len(first) == 1 and list(first.values()) == [{"sleep": 1}]
    # the next overflowing task, before the first peer claimed: it is covered for one task, another peer is told
    second = hinted(dispatcher.plan(0.01, {"sleep": Need(2, {})}, peers))
    assert len(second) == 1 and set(second) != set(first)
    # nothing new: nobody is told again
    assert dispatcher.plan(0.02, {"sleep": Need(2, {})}, peers) == []


def test_a_burst_spreads_over_peers_by_their_credit() -> None:
    dispatcher = Dispatcher(default_credit=8)
    dispatcher.hint_answered("big", ["sleep"], accepted=True, free={"sleep": 32})
    dispatcher.hint_answered("full", ["sleep"], accepted=True, free={"sleep": 0})
    plan = hinted(dispatcher.plan(0.0, {"sleep": Need(44, {})}, capable("new", "big", "full")))
    # most credit first: big takes 32, the unknown peer the default 8; the full one is told all the same
    # (with what is still uncovered), so it pulls when a slot frees
    assert plan == {"big": {"sleep": 32}, "new": {"sleep": 8}, "full": {"sleep": 4}}
    assert dispatcher.expected("big", "sleep", 0.0) == 32 and dispatcher.expected("full", "sleep", 0.0) == 0


def test_equal_credit_goes_round_robin() -> None:
    dispatcher = Dispatcher(default_credit=1)
    peers = capable("a", "b", "c")
    order = []
    for step in range(6):
        now = step * 10.0  # every engagement has lapsed by the next round
        [(peer, _)] = dispatcher.plan(now, {"sleep": Need(1, {})}, peers)
        dispatcher.claimed(peer, ["sleep"], asked=1, got=0, free={}, now=now)  # drained: engagement ends
        order.append(peer)
    assert order == ["a", "b", "c", "a", "b", "c"]


def test_a_peer_that_does_not_claim_in_time_is_told_again() -> None:
    dispatcher = Dispatcher(refresh_s=1.0)
    peers = capable("p")
    assert hinted(dispatcher.plan(0.0, {"sleep": Need(3, {})}, peers)) == {"p": {"sleep": 3}}
    assert dispatcher.plan(0.5, {"sleep": Need(3, {})}, peers) == []
    assert hinted(dispatcher.plan(1.0, {"sleep": Need(3, {})}, peers)) == {"p": {"sleep": 3}}  # hint lost?


def test_a_full_peer_keeps_the_hint_for_longer_and_pulls_itself() -> None:
    dispatcher = Dispatcher(refresh_s=1.0, engaged_s=10.0)
    peers = capable("p")
    dispatcher.plan(0.0, {"sleep": Need(3, {})}, peers)
    dispatcher.hint_answered("p", ["sleep"], accepted=True, free={"sleep": 0})
    assert dispatcher.plan(5.0, {"sleep": Need(3, {})}, peers) == []  # it holds our hint; no point repeating
    assert hinted(dispatcher.plan(10.0, {"sleep": Need(3, {})}, peers)) == {"p": {"sleep": 3}}


def test_claims_count_against_what_was_expected_and_a_short_one_ends_the_engagement() -> None:
    dispatcher = Dispatcher()
    peers = capable("p", "q")
    dispatcher.plan(0.0, {"sleep": Need(8, {})}, peers)
    engaged = [peer for peer in ("p", "q") if dispatcher.engaged(peer, "sleep", 0.0)]
    assert len(engaged) == 1
    [peer] = engaged
    dispatcher.claimed(peer, ["sleep"], asked=8, got=8, free={"sleep": 0}, now=0.1)
    assert dispatcher.engaged(peer, "sleep", 0.1) and dispatcher.expected(peer, "sleep", 0.1) == 0
    assert dispatcher.credit(peer, "sleep") == 0
    dispatcher.claimed(peer, ["sleep"], asked=4, got=1, free={"sleep": 0}, now=0.2)
    assert not dispatcher.engaged(peer, "sleep", 0.2)
    assert dispatcher.credit(peer, "sleep") == 3  # it asked for 4 and got 1: it has at least 3 free


def test_a_peer_that_cannot_be_reached_is_left_alone_for_a_while() -> None:
    dispatcher = Dispatcher(refresh_s=1.0)
    peers = capable("gone", "here")
    dispatcher.hint_answered("gone", ["sleep"], accepted=True, free={"sleep": 16})
    assert set(hinted(dispatcher.plan(0.0, {"sleep": Need(4, {})}, peers))) == {"gone"}
    dispatcher.hint_failed("gone", ["sleep"], 0.1)
    assert set(hinted(dispatcher.plan(0.1, {"sleep": Need(4, {})}, peers))) == {"here"}
    assert "gone" in hinted(dispatcher.plan(1.2, {"sleep": Need(12, {})}, peers))  # tried again later


def test_a_peer_that_declines_is_not_counted_on() -> None:
    dispatcher = Dispatcher()
    peers = capable("p", "q")
    first = hinted(dispatcher.plan(0.0, {"sleep": Need(4, {})}, peers))
    [peer] = first
    dispatcher.hint_answered(peer, ["sleep"], accepted=False, free={})
    second = hinted(dispatcher.plan(0.1, {"sleep": Need(4, {})}, peers))
    assert set(second) == {"q" if peer == "p" else "p"}


def test_pinned_work_goes_only_to_its_peer() -> None:
    dispatcher = Dispatcher()
    plan = hinted(dispatcher.plan(0.0, {"sleep": Need(0, {"b": 5})}, capable("a", "b")))
    assert plan == {"b": {"sleep": 5}}
    assert dispatcher.plan(0.1, {"sleep": Need(0, {"b": 5})}, capable("a", "b")) == []
    assert dispatcher.plan(0.0, {"sleep": Need(0, {"z": 1})}, capable("a", "b")) == []  # not connected: waits


def test_one_message_per_peer_for_several_types() -> None:
    dispatcher = Dispatcher()
    plan = dispatcher.plan(0.0, {"sleep": Need(2, {}), "hash": Need(3, {})}, capable("p"))
    assert len(plan) == 1
    peer, hint = plan[0]
    assert peer == "p" and hint.types == ("hash", "sleep") and dict(hint.ready) == {"hash": 3, "sleep": 2}


def test_nobody_to_tell() -> None:
    assert Dispatcher().plan(0.0, {"sleep": Need(5, {})}, capable()) == []
