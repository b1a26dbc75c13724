"""The worker's slots, prefetch and credit (worker.slots), driven without I/O or asyncio."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.slots import Arrival, Slots, StopReason


def deliver(slots: Slots[str], *job_ids: str) -> list[Arrival]:
    return [slots.arrive(job_id, job_id) for job_id in job_ids]


def test_first_credit_is_the_capacity_and_jobs_beyond_concurrency_wait() -> None:
    slots: Slots[str] = Slots(2, prefetch=3)
    assert slots.capacity == 5
    assert slots.connected() == 5
    assert deliver(slots, "a", "b", "c", "d") == [
        Arrival.START,
        Arrival.START,
        Arrival.WAIT,
        Arrival.WAIT,
    ]
    assert slots.executing == 2
    assert slots.waiting() == ["c", "d"]
    assert slots.held_ids() == ["a", "b", "c", "d"]
    assert slots.outstanding == 1
    assert slots.credit_owed == 0


def test_a_freed_slot_starts_the_longest_waiting_job_and_is_owed_back() -> None:
    slots: Slots[str] = Slots(1, prefetch=2)
    slots.connected()
    deliver(slots, "a", "b", "c")
    slots.ended("a", "a")
    assert slots.start_next() == "b"
    assert slots.start_next() is None  # the one slot is taken again
    assert slots.waiting() == ["c"]
    assert slots.credit_owed == 1
    assert slots.take_credit() == 1
    assert slots.take_credit() == 0  # paid
    assert slots.outstanding == 1


def test_slots_freed_in_one_turn_go_back_as_one_credit() -> None:
    slots: Slots[str] = Slots(4)
    slots.connected()
    deliver(slots, "a", "b", "c", "d")
    for job_id in ("a", "b", "c"):
        slots.ended(job_id, job_id)
    assert slots.take_credit() == 3
    assert len(slots) == 1


def test_without_prefetch_nothing_waits() -> None:
    slots: Slots[str] = Slots(2)
    assert slots.connected() == 2
    assert deliver(slots, "a", "b") == [Arrival.START, Arrival.START]
    assert slots.waiting() == []


def test_a_revoked_waiting_job_frees_its_slot_and_needs_no_release() -> None:
    slots: Slots[str] = Slots(1, prefetch=1)
    slots.connected()
    deliver(slots, "a", "b")
    assert slots.drop("b", "b", StopReason.REVOKED) is False
    assert slots.get("b") is None
    assert slots.credit_owed == 1
    assert slots.executing == 1


def test_a_lost_waiting_job_is_neither_released_nor_credited() -> None:
    slots: Slots[str] = Slots(1, prefetch=1)
    slots.connected()
    deliver(slots, "a", "b")
    assert slots.drop("b", "b", StopReason.LOST) is False
    slots.ended("a", "a", StopReason.LOST)
    assert len(slots) == 0
    assert slots.credit_owed == 0
    # The next connection announces the whole capacity afresh.
    assert slots.connected() == 2


def test_dropping_a_job_that_is_not_waiting_changes_nothing() -> None:
    slots: Slots[str] = Slots(1, prefetch=1)
    slots.connected()
    deliver(slots, "a")
    assert slots.drop("a", "a", StopReason.SHUTDOWN) is False  # executing: cancel it instead
    assert slots.held() == ["a"]
    assert slots.credit_owed == 0


def test_stop_hands_back_the_waiting_jobs_and_credits_nothing_more() -> None:
    slots: Slots[str] = Slots(1, prefetch=3)
    slots.connected()
    deliver(slots, "a", "b", "c")
    assert slots.stop() == ["b", "c"]
    assert slots.stopping
    assert slots.held() == ["a"]
    # A delivery already on its way is handed back, not held.
    assert slots.arrive("d", "d") is Arrival.HAND_BACK
    assert slots.get("d") is None
    slots.ended("a", "a", StopReason.SHUTDOWN)
    assert slots.start_next() is None
    assert slots.credit_owed == 0
    assert slots.take_credit() == 0
    assert slots.connected() == 0


def test_a_waiting_job_stopped_for_shutdown_must_be_released() -> None:
    slots: Slots[str] = Slots(1, prefetch=1)
    slots.connected()
    deliver(slots, "a", "b")
    assert slots.drop("b", "b", StopReason.SHUTDOWN) is True
    assert slots.credit_owed == 0


def test_a_job_finishing_normally_while_stopping_owes_no_credit() -> None:
    slots: Slots[str] = Slots(2)
    slots.connected()
    deliver(slots, "a", "b")
    assert slots.stop() == []
    slots.ended("a", "a")
    assert slots.credit_owed == 0
    assert slots.held() == ["b"]


def test_a_redelivered_job_replaces_the_older_attempt_still_winding_down() -> None:
    slots: Slots[object] = Slots(2)
    slots.connected()
    older, newer = object(), object()
    assert slots.arrive("j", older) is Arrival.START
    # The runtime cancels the older attempt (REVOKED); its task has not ended yet.
    assert slots.arrive("j", newer) is Arrival.START
    assert slots.get("j") is newer
    assert slots.executing == 2
    slots.ended("j", older, StopReason.REVOKED)
    assert slots.get("j") is newer  # the newer attempt is still held
    assert slots.executing == 1
    assert slots.credit_owed == 1


def test_connected_counts_jobs_still_held_from_the_last_connection() -> None:
    slots: Slots[str] = Slots(2, prefetch=1)
    slots.connected()
    deliver(slots, "a", "b")
    slots.ended("a", "a")  # owed, but the connection dropped before the READY
    assert slots.connected() == 2  # capacity 3, one job still held
    assert slots.credit_owed == 0


def test_more_prefetch_is_owed_at_once_and_a_cut_is_paid_off_by_freed_slots() -> None:
    slots: Slots[str] = Slots(1)
    assert slots.connected() == 1
    slots.set_prefetch(3)
    assert slots.take_credit() == 3
    deliver(slots, "a", "b", "c", "d")
    assert slots.waiting() == ["b", "c", "d"]
    slots.set_prefetch(0)  # 3 credits sent already: kept back as slots free up
    assert slots.surplus == 3
    assert slots.hand_back_waiting() == ["b", "c", "d"]
    assert slots.held() == ["a"]
    assert slots.surplus == 0
    assert slots.credit_owed == 0
    slots.ended("a", "a")
    assert slots.take_credit() == 1  # back to one job at a time


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        Slots[str](0)
    with pytest.raises(ValueError, match="prefetch"):
        Slots[str](1, prefetch=-1)


@settings(max_examples=300, deadline=None)
@given(
    concurrency=st.integers(1, 4),
    prefetch=st.integers(0, 4),
    steps=st.lists(
        st.tuples(
            st.sampled_from(["deliver", "finish", "revoke", "flush", "prefetch", "hand back"]),
            st.integers(0, 50),
        ),
        max_size=80,
    ),
)
def test_credit_never_exceeds_the_capacity(
    concurrency: int, prefetch: int, steps: list[tuple[str, int]]
) -> None:
    """The broker delivers only against credit, as the runtime drives it: held jobs,
    credit announced and unused, and credit owed always add up to the capacity
    (plus the slots kept back after a cut of prefetch)."""
    slots: Slots[str] = Slots(concurrency, prefetch)
    slots.connected()
    executing: list[str] = []
    delivered = 0
    for action, pick in steps:
        if action == "deliver" and slots.outstanding:
            job_id = f"j{delivered}"
            delivered += 1
            if slots.arrive(job_id, job_id) is Arrival.START:
                executing.append(job_id)
        elif action in ("finish", "revoke") and slots.held():
            held = slots.held()
            job_id = held[pick % len(held)]
            reason = StopReason.REVOKED if action == "revoke" else None
            if job_id in executing:  # its task ends (or is cancelled)
                executing.remove(job_id)
                slots.ended(job_id, job_id, reason)
                started = slots.start_next()
                if started is not None:
                    executing.append(started)
            elif action == "revoke":
                assert slots.drop(job_id, job_id, StopReason.REVOKED) is False
        elif action == "flush":
            slots.take_credit()
        elif action == "prefetch":
            slots.set_prefetch(pick % 5)
        elif action == "hand back":
            waiting = slots.waiting()
            assert slots.hand_back_waiting() == waiting
        assert slots.surplus >= 0
        assert slots.credit_owed >= 0
        assert len(slots) + slots.outstanding + slots.credit_owed == slots.capacity + slots.surplus
        assert slots.executing == len(executing) <= concurrency
        if not slots.surplus:
            assert len(slots.waiting()) <= slots.prefetch
        # Nothing waits while a slot is free.
        assert not slots.waiting() or slots.executing == concurrency
        assert set(executing) | set(slots.waiting()) == set(slots.held())
