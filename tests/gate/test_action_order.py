"""A gate offers a phone its oldest listed action: the wallet takes only ids above the last it holds."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from gate.journal import Journal
from gate.state import LocalState, Outcome
from protocol.mqtt import Action, ActionListMessage

CARD, OTHER = 0x7000, 0x7001


def test_a_phone_is_offered_its_oldest_action_and_the_next_once_that_is_applied(tmp_path: Path) -> None:
    with Journal(tmp_path / "journal.db") as journal:
        state = LocalState(tmp_path, journal)
        listed = ActionListMessage(version=1, time=datetime.now(UTC), actions=[
            Action(action_id=9, card_id=CARD, topup=900), Action(action_id=7, card_id=CARD, topup=700),
            Action(action_id=8, card_id=OTHER, topup=800)])
        assert state.apply_actions(listed).outcome is Outcome.APPLIED
        first = state.action_for(CARD)
        assert first is not None and first.action_id == 7
        state.action_applied(first)
        again = ActionListMessage(version=2, time=datetime.now(UTC), actions=listed.actions)
        state.apply_actions(again)  # the backend has not heard of the write yet: 7 is still listed
        after = state.action_for(CARD)
        assert after is not None and after.action_id == 9
        other = state.action_for(OTHER)
        assert other is not None and other.action_id == 8
