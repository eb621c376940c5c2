"""protocol.mqtt.follow: when a gate is on the retained deny-list snapshot topic."""

from __future__ import annotations

from protocol.mqtt import MAX_LIST_ITEMS
from protocol.mqtt.follow import SnapshotNeed, Take


def test_a_gate_with_no_list_takes_the_snapshot_at_connect_and_leaves_once_it_holds_one() -> None:
    need = SnapshotNeed()
    assert need.at_connect(held=0)
    assert need.step(held=0) is True and need.step(held=0) is None  # subscribed once
    assert need.step(held=3) is False and not need.subscribed  # any list will do: off again


def test_a_current_gate_stays_off_the_snapshot_whatever_the_references_say_of_its_version() -> None:
    need = SnapshotNeed()
    assert not need.at_connect(held=5)
    assert need.on_ref(5, size=10, held=5) is Take.NOTHING and need.on_ref(4, size=10, held=5) is Take.NOTHING
    assert need.step(held=5) is None and not need.subscribed


def test_one_version_behind_waits_for_the_delta_two_behind_takes_the_snapshot_now() -> None:
    need = SnapshotNeed()
    need.at_connect(held=5)
    assert need.on_ref(6, size=10, held=5) is Take.SUBSCRIBE_AFTER_GRACE
    assert need.step(held=6) is None  # the delta came within the grace: nothing to take
    assert need.on_ref(9, size=10, held=6) is Take.SUBSCRIBE
    assert need.step(held=6) is True
    assert need.on_ref(9, size=10, held=6) is Take.NOTHING  # already on it
    assert need.step(held=8) is None  # an older snapshot (a relay's lag) is not enough
    assert need.step(held=9) is False


def test_a_list_past_mqtts_size_is_fetched_not_subscribed_and_a_refused_delta_asks_for_the_snapshot() -> None:
    need = SnapshotNeed()
    need.at_connect(held=5)
    assert need.on_ref(7, size=MAX_LIST_ITEMS + 1, held=5) is Take.FETCH
    other = SnapshotNeed()
    other.at_connect(held=5)
    other.announced(7)  # a verified delta at 7 that did not apply on 5
    assert other.step(held=5) is True


def test_a_new_connection_starts_unsubscribed_and_behind_what_was_announced_before() -> None:
    need = SnapshotNeed()
    need.at_connect(held=5)
    need.on_ref(8, size=10, held=5)
    assert need.step(held=5) is True
    assert need.at_connect(held=5) and not need.subscribed  # clean session: subscribe again
