"""FAREGATE_STATE: the cluster's copy of the last message of each state topic (the deny-list snapshot and
its reference, the fare table, the action list, each gate's command), the state a gate needs and its
station keeps retained. The backend publishes state into it with JetStream's acknowledgement
(backend/nats_publisher.py); a station relay back from away fetches it from there (backend/relay.py)."""

from __future__ import annotations

from nats.js.api import RetentionPolicy, StorageType, StreamConfig

from protocol.mqtt import Topics

from .ingest.stream import subject_of

STATE_STREAM = "FAREGATE_STATE"


def state_topics(topics: Topics) -> list[str]:
    """The shared topics whose last message is the state a gate needs (retained at every broker)."""
    return [topics.denylist_snapshot, topics.denylist_snapshot_ref, topics.fare_table, topics.actions]


def is_stored_state(topics: Topics, topic: str) -> bool:
    """Whether FAREGATE_STATE captures this topic: a shared state topic or a gate's command (a gate's
    ack is retained at its station but lives in the ingest's database, not here)."""
    if topic in state_topics(topics):
        return True
    try:
        return topic == topics.command(Topics.gate_of(topic))
    except ValueError:  # not a per-gate topic
        return False


def state_stream_config(topics: Topics, replicas: int) -> StreamConfig:
    return StreamConfig(
        name=STATE_STREAM,
        subjects=[subject_of(t) for t in state_topics(topics)] + [subject_of(topics.command("*"))],
        retention=RetentionPolicy.LIMITS,
        max_msgs_per_subject=1,  # the state, not its history
        storage=StorageType.FILE,
        num_replicas=replicas,
    )
