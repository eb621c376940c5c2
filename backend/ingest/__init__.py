"""MQTT tap ingest: shared subscription, batched idempotent insert, ack after commit, gap detection."""
