"""Station servers: real Mosquitto processes bridged to a real centre, the real ingest on PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from faregate.city.centre import ingest_values, run_centre
from faregate.city.citygates import CityGate, run_gates
from faregate.city.station import bridge_topics, bridge_user, centre_station_acl, run_city
from faregate.simgate import SimUplink
from protocol.mqtt import DEVELOPMENT_PUBLIC_KEY, Topics, Verifier
from tests.city.citytools import until

pytestmark = [pytest.mark.mosquitto]


def test_a_station_bridge_carries_its_own_gates_only() -> None:
    topics = Topics("p")
    lines = bridge_topics(topics, 21, [1, 2])
    assert ("out", "p/gates/21-1/taps") in lines and ("in", "p/gates/21-2/committed") in lines
    assert ("in", "p/denylist/#") in lines
    assert not any("22-" in topic or "+" in topic for _, topic in lines)
    acl = centre_station_acl(topics, 21, [1, 2])
    assert acl.startswith("user station-21\n")
    assert "topic write p/gates/21-1/taps" in acl and "topic read p/gates/21-1/command" in acl
    assert "topic write p/gates/21-1/committed" not in acl  # the backend's acks: read only


@pytest.mark.slow
@pytest.mark.postgres
async def test_gates_keep_reporting_through_a_centre_outage_and_every_tap_arrives_once(
    tmp_path: Path, mosquitto_tools: None, postgres_url: str, city_prefix: str
) -> None:
    stations = {21: [1, 2, 3], 22: [1, 2]}
    topics = Topics(city_prefix)
    verifier = Verifier([DEVELOPMENT_PUBLIC_KEY])
    with run_city(tmp_path, city_prefix, stations) as city:
        values = ingest_values(postgres_url, city.centre_url, city_prefix, batch_wait_ms=5)
        async with run_centre(values) as centre:
            gates = [
                CityGate(sid, no, host="127.0.0.1", port=city.stations[sid].port,
                         password=city.stations[sid].passwords[f"{sid}-{no}"], topics=topics,
                         verifier=verifier, stall_s=2.0)
                for sid, nos in stations.items() for no in nos
            ]
            stop = asyncio.Event()
            running = asyncio.create_task(run_gates(gates, stop))
            try:
                await until(lambda: all(g.connected.is_set() for g in gates), 15, "gates connected")
                for _ in range(10):
                    for gate in gates:
                        gate.tap()
                await until(lambda: all(g.all_committed() for g in gates), 30, "taps committed")

                city.centre.stop()  # the centre is unreachable; the stations keep taking taps
                before = [g.sim.committed for g in gates]
                for _ in range(25):
                    for gate in gates:
                        gate.tap()
                    await asyncio.sleep(0.02)
                # every tap has reached its station (PUBACKed there) while the centre is down
                await until(lambda: all(g._cursor >= g.sim.seq for g in gates), 15, "taps at the stations")
                await asyncio.sleep(2.5)  # past stall_s: the gates publish their backlog again, too
                assert [g.sim.committed for g in gates] == before  # nothing can be committed meanwhile
                assert all(g.connected.is_set() for g in gates)  # the gates never lost their station

                city.centre.start()
                await until(lambda: all(g.all_committed() for g in gates), 60, "backlog committed")
            finally:
                stop.set()
                await running
            rows, unique = await centre.count([g.id for g in gates])
    made = sum(g.sim.seq for g in gates)
    assert made == 35 * len(gates)
    assert unique == made  # nothing lost
    assert rows == unique  # nothing doubled
    assert sum(g.refused for g in gates) == 0  # every ack verified


@pytest.mark.security
def test_neither_a_gate_nor_a_station_reaches_another_gates_topics(
    tmp_path: Path, mosquitto_tools: None, city_prefix: str
) -> None:
    """A gate at its station publishes only as itself; a compromised station server (its bridge
    account used directly at the centre) publishes only as its own gates and reads only their acks."""
    topics = Topics(city_prefix)
    stations = {21: [1, 2], 22: [1]}
    with run_city(tmp_path, city_prefix, stations) as city:
        url = f"mqtt://127.0.0.1:{city.centre.files.port}"
        backend = SimUplink(city.centre_url, topics, version="5",
                            subscribe=[topics.all_taps, topics.status("+")])
        s21 = city.stations[21]
        gate = SimUplink(f"mqtt://127.0.0.1:{s21.port}", topics, username="21-1",
                         password=s21.passwords["21-1"], subscribe=[])
        station = SimUplink(url, topics, username=bridge_user(21),
                            password=city.centre.files.passwords[bridge_user(21)],
                            subscribe=[topics.committed("22-1"), topics.committed("21-1")],
                            client_id="rogue-station-21")
        clients = [backend, gate, station]
        try:
            for client in clients:
                client.start()
            for client in clients:
                client.wait_ready()
            gate.publish(topics.taps("21-2"), b"as a neighbour")  # another gate of its station
            gate.publish(topics.taps("22-1"), b"as another station's gate")
            gate.publish(topics.status("21-2"), b"status as a neighbour", retain=True)
            station.publish(topics.taps("22-1"), b"station 21 as gate 22-1")
            station.publish(topics.status("22-1"), b"station 21 as gate 22-1", retain=True)
            backend.publish(topics.committed("22-1"), b"ack for 22-1", retain=True)
            backend.publish(topics.committed("21-1"), b"ack for 21-1", retain=True)
            gate.publish(topics.taps("21-1"), b"own tap")  # published last, on the same connection
            station.publish(topics.taps("21-2"), b"station 21 for its own gate")
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not (
                backend.messages(topics.taps("21-1")) and backend.messages(topics.taps("21-2"))
                and station.messages(topics.committed("21-1"))
            ):
                time.sleep(0.02)
            assert backend.messages(topics.taps("21-1")) == [b"own tap"]
            assert backend.messages(topics.taps("21-2")) == [b"station 21 for its own gate"]
            assert backend.messages(topics.taps("22-1")) == []
            assert backend.messages(topics.status("21-2")) == []
            assert backend.messages(topics.status("22-1")) == []
            assert station.messages(topics.committed("21-1")) == [b"ack for 21-1"]
            assert station.messages(topics.committed("22-1")) == []  # another station's acks: unread
        finally:
            for client in clients:
                client.close()


@pytest.mark.slow
@pytest.mark.postgres
async def test_a_station_server_killed_mid_stream_loses_and_doubles_nothing(
    tmp_path: Path, mosquitto_tools: None, postgres_url: str, city_prefix: str
) -> None:
    """kill -9 of a station server while its gates tap: what it had queued and not saved is gone, the
    gates still hold every unacknowledged tap, reconnect to the restarted station and send them again."""
    stations = {23: [1, 2, 3]}
    topics = Topics(city_prefix)
    verifier = Verifier([DEVELOPMENT_PUBLIC_KEY])
    with run_city(tmp_path, city_prefix, stations) as city:
        station = city.stations[23]
        values = ingest_values(postgres_url, city.centre_url, city_prefix, batch_wait_ms=5)
        async with run_centre(values) as centre:
            gates = [CityGate(23, no, host="127.0.0.1", port=station.port,
                              password=station.passwords[f"23-{no}"], topics=topics, verifier=verifier,
                              stall_s=2.0) for no in stations[23]]
            stop = asyncio.Event()
            running = asyncio.create_task(run_gates(gates, stop))
            try:
                await until(lambda: all(g.connected.is_set() for g in gates), 15, "gates connected")
                for round_ in range(40):
                    for gate in gates:
                        gate.tap()
                    if round_ == 20:
                        station.broker.kill()  # mid-stream: no DISCONNECT, no save
                        await until(lambda: not any(g.connected.is_set() for g in gates), 10, "gates cut")
                    if round_ == 30:
                        station.broker.start()
                    await asyncio.sleep(0.02)
                await until(lambda: all(g.all_committed() for g in gates), 60, "every tap committed")
            finally:
                stop.set()
                await running
            rows, unique = await centre.count([g.id for g in gates])
    assert sum(g.sim.seq for g in gates) == 120
    assert unique == 120 and rows == 120
    assert all(g.connects >= 2 for g in gates)  # each gate lost its station and came back
