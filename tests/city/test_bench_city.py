"""`faregate bench city`, short: 200 gates on 4 station servers and the same-run single-broker baseline; and
150 gates through station servers into the 3-node NATS cluster with a node and a worker killed -9."""

from __future__ import annotations

import pytest

from faregate.bench.city import bench, layout
from faregate.cli import build_parser
from tests.city.citytools import require_nats

pytestmark = [pytest.mark.mosquitto, pytest.mark.postgres]


def test_layout_spreads_gates_over_stations() -> None:
    stations = layout(10, 3)
    assert [len(nos) for nos in stations.values()] == [4, 3, 3]
    assert stations[100] == [1, 2, 3, 4]


@pytest.mark.slow
def test_bench_city_short_run_loses_and_doubles_nothing(mosquitto_tools: None, postgres_url: str) -> None:
    argv = ["bench", "city", "--gates", "200", "--stations", "4", "--per-process", "100", "--seconds", "4",
            "--tap-interval", "1", "--blocks", "2", "--snapshot-ids", "300", "--database", postgres_url,
            "--json"]
    result = bench(build_parser(argv).parse_args(argv))
    baseline = result["baseline_single_broker"]
    for run, brokers in ((result, 5), (baseline, 1)):
        assert run["gates"] == 200 and run["brokers"] == brokers and run["workers"] == 1
        assert run["made"] > 400  # every gate tapped about once a second for 4 s
        assert run["stored"] == run["made"]
        assert run["lost"] == 0 and run["duplicated"] == 0 and run["uncommitted_at_end"] == 0
        assert run["blocks"] == 2 and run["deny_missed"] == 0  # every gate applied both blocks
        assert run["deny_propagation_ms_max"] is not None
        assert run["snapshot_missing"] == 0 and run["snapshot_fanout_s"] is not None
        assert run["snapshot_at_brokers_s_max"] >= 0  # every broker's probe had the snapshot (else None)
        assert run["refused"] == 0 and run["snapshot_requests"] == 0
        assert run["statuses"] >= 200  # every gate's status on connect, MACed and retained
    assert result["stations"] == 4 and baseline["stations"] == 0


@pytest.mark.slow
def test_bench_city_through_the_cluster_survives_a_node_and_a_worker_killed(
    mosquitto_tools: None, postgres_url: str
) -> None:
    """150 gates on 3 station servers linked to the 3-node NATS cluster by relays (taps into the stream
    with its acknowledgement, the downlink by plain NATS), 2 ingest workers acking over plain NATS; the
    stream's leader and a worker are killed -9 while the gates tap: every tap the gates journaled is
    stored exactly once, every gate applies every block's own delta and holds the final snapshot."""
    require_nats()
    argv = ["bench", "city", "--centre", "cluster", "--gates", "150", "--stations", "3",
            "--per-process", "150", "--seconds", "6", "--tap-interval", "1", "--blocks", "2",
            "--snapshot-ids", "100", "--stall", "3", "--ack-wait", "3", "--database", postgres_url,
            "--no-baseline", "--timeout", "60", "--json"]
    run = bench(build_parser(argv).parse_args(argv))
    assert run["centre"] == "nats-cluster" and run["gates"] == 150
    assert run["stations"] == 3 and run["brokers"] == 6 and run["workers"] == 2
    assert run["node_killed"] is True and run["worker_killed"] is True
    assert run["node_killed_role"].startswith("stream leader")
    assert run["workers_alive_at_end"] == 1
    assert 0 < run["stored_at_node_kill"] < run["made"] and run["stored_at_worker_kill"] < run["made"]
    assert run["made"] > 600  # every gate tapped about once a second for 6 s
    assert run["lost"] == 0 and run["duplicated"] == 0 and run["uncommitted_at_end"] == 0
    assert run["stored"] == run["made"]
    assert run["station_link"] == "relay"
    assert run["blocks"] == 2 and run["deny_missed"] == 0 and run["deny_delta_missed"] == 0
    assert run["snapshot_missing"] == 0 and run["refused"] == 0
    assert run["snapshot_at_brokers_s_max"] >= 0  # every station server's probe had it (else None)
    for block in run["deny_by_block"]:  # each station: when its server's probe had the delta, its gates'
        assert [row[0] for row in block["by_station"]] == list(layout(150, 3))
        assert all(row[1] is not None and row[2] > 0 for row in block["by_station"])
