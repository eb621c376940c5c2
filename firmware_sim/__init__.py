"""firmware_sim: an emulated RF-SIM reader and gate mechanism on a real pseudo-terminal (or TCP).

A gate controller cannot tell it from hardware at the protocol and timing level: the same frames
(docs/protocol.md), bytes paced at the baud rate, RF read/write times, barrier travel, and the
faults real gates meet. One module, one job:

    protocol/   framer (bytes <-> frames), messages (frames <-> typed messages), timing (timeouts);
                pure and side-effect free: the gate controller imports it
    transport   device-side ports (PtyLink, TcpLink), the Pacer, the controller's open_port()
    faults      line faults (bit flips, drops, duplicates, noise bursts), by rate or one-shot
    reader      the RF field: distance control, one RF operation at a time, torn writes
    barrier     barrier motion, passage sensor, tailgating and forced-door alarms
    device      GateDevice: one gate's hardware behind one port (receive and transmit threads)
    wallets     WalletStore: the true wallet bytes of every phone, written with fare_core's codec
    population  Phone / Population: generated (seeded) or loaded from CSV/JSON
    scenario    Scenario / Planner / ScenarioRunner: traffic with the awkward cases in given shares
    sim         Sim / Presentation: the scripted API for tests and benchmarks
    client      SerialClient: a reference controller-side client (tests, examples)
    cli         `faregate sim`

Nothing is imported here, so `import protocol.serial` stays cheap.
"""
