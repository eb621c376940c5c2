"""The wire contracts between faregate's parts, in one place that both ends import.

    serial/   gate controller <-> reader and gate mechanism: framer (bytes <-> frames), messages
              (frames <-> typed messages), timing (wire time, timeouts, retries); docs/protocol.md
    mqtt/     gate <-> backend: topics and pydantic payload schemas; docs/mqtt.md

It imports fare_core only (for the reason, mode and direction codes that travel on both wires) and is
imported by firmware_sim, gate and backend alike, none of which imports another. Nothing is imported
here, so `import protocol.serial` never pays for pydantic.
"""
