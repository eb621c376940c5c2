"""`faregate bench city`, short: 200 gates on 4 station servers and the same-run single-broker baseline."""

from __future__ import annotations

import pytest

from faregate.bench.city import bench, layout
from faregate.cli import build_parser

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
        assert run["refused"] == 0 and run["snapshot_requests"] == 0
        assert run["statuses"] >= 200  # every gate's status on connect, MACed and retained
    assert result["stations"] == 4 and baseline["stations"] == 0
