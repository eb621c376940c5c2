"""Populations: generated deterministically, loaded from CSV/JSON, bad rows refused with their number."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import fare_core
from firmware_sim.population import Phone, Population, PopulationError
from firmware_sim.wallets import WalletStore


def test_generate_is_seeded_and_shaped() -> None:
    first = Population.generate(500, seed=4, blocked_share=0.1, low_balance_share=0.2, slow_share=0.1)
    again = Population.generate(500, seed=4, blocked_share=0.1, low_balance_share=0.2, slow_share=0.1)
    assert list(first) == list(again) and len(first) == 500
    assert list(Population.generate(500, seed=5)) != list(first)
    phones = list(first)
    assert 20 < sum(p.blocked for p in phones) < 90
    assert 50 < sum(p.balance < 300 for p in phones) < 160
    assert 20 < sum(p.slowness > 1 for p in phones) < 90
    assert all(isinstance(p.balance, int) for p in phones)


def test_issue_creates_wallets_fare_core_reads(tmp_path: Path) -> None:
    population = Population.generate(20, seed=1, blocked_share=0.5)
    store = WalletStore(bytes(range(16)))
    population.issue(store)
    for phone in population:
        record, slot = store.record(phone.card_id)
        assert (record.balance, record.category, record.blocked, slot) == (
            phone.balance, phone.category, phone.blocked, 0)
    with pytest.raises(fare_core.WalletError):
        fare_core.read_wallet(store.wallet(phone.card_id), phone.card_id, fare_core.Sam(bytes(16)))


def test_csv_roundtrip_and_hex_ids(tmp_path: Path) -> None:
    population = Population.generate(10, seed=2)
    path = tmp_path / "phones.csv"
    population.save_csv(path)
    assert list(Population.load(path)) == list(population)
    (tmp_path / "hand.csv").write_text(
        "card_id,category,balance,blocked\n00000000A11CE001,1,250,yes\n42,0,1000,0\n", encoding="utf-8")
    loaded = Population.load(tmp_path / "hand.csv")
    assert loaded[0xA11CE001] == Phone(0xA11CE001, 1, 250, True)
    assert loaded[42].balance == 1000


def test_json(tmp_path: Path) -> None:
    path = tmp_path / "phones.json"
    path.write_text(json.dumps([{"card_id": "0x10", "balance": 300, "slowness": 2.5},
                                {"card_id": 17, "flaky_write": True}]), encoding="utf-8")
    loaded = Population.load(path)
    assert loaded[16].slowness == 2.5 and loaded[17].flaky_write


@pytest.mark.parametrize(("name", "text", "message"), [
    ("a.csv", "card_id,balance\n1,12.50\n", "row 2: balance"),
    ("a.csv", "card_id,balance\n1,100\n1,200\n", "row 3: card 0000000000000001 appears twice"),
    ("a.csv", "card_id,colour\n1,red\n", "unknown column"),
    ("a.csv", "card_id,balance\n1,100,7\n", "more values"),
    ("a.csv", "balance\n100\n", "card_id is missing"),
    ("a.csv", "card_id,balance\n1,9999999999\n", "i32"),
    ("a.csv", "card_id,blocked\n1,maybe\n", "true or false"),
    ("a.json", "{\"card_id\": 1}", "list of objects"),
    ("a.json", "[{\"card_id\": true}]", "integer"),
    ("a.json", "[", "not valid JSON"),
    ("a.txt", "", ".csv or .json"),
])
def test_bad_files_are_refused_whole(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(PopulationError, match=message):
        Population.load(path)


def test_missing_file_and_bad_parameters(tmp_path: Path) -> None:
    with pytest.raises(PopulationError, match="cannot read"):
        Population.load(tmp_path / "none.csv")
    with pytest.raises(PopulationError):
        Population.generate(5, blocked_share=2.0)
    with pytest.raises(PopulationError):
        Phone(2**64)
