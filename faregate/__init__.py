"""The composition layer: the `faregate` command, the demo, the benchmarks and the simulated station.

Everything here wires the runtime packages together (fare_core, protocol, firmware_sim, gate, backend);
no runtime package imports it, and it is the only place a simulator, a gate and a backend meet.

    cli       the `faregate` dispatcher: each subcommand is imported only when it runs
    station   SimStation: a simulated reader + barrier per gate beside real gate controllers
    demo      `faregate demo`: broker, backend, a station and its commuters, then a summary
    bench/    `faregate bench core | loop | ingest`
"""
