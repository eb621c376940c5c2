"""Commuters' phones: generated from a seed, or loaded from a CSV or JSON file.

File columns / keys (CSV needs a header row; JSON is a list of objects)::

    card_id      required; decimal or 0x-prefixed / 16-digit hex
    category     0 adult, 1 student, 2 senior, 3 staff (fare table's index); default 0
    balance      integer fen (never a float); default 0
    blocked      the card's own status is "blocked" (true/false, 1/0); default false
    slowness     RF time multiplier of this phone (old handsets are 2-5x slower); default 1
    flaky_write  its writes land corrupted, so write-verify fails; default false

Bad rows are refused with the row number and the reason; nothing is half-loaded.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import fare_core

from .wallets import WalletStore


class PopulationError(ValueError):
    """A population file or parameter that cannot be used."""


@dataclass(frozen=True, slots=True)
class Phone:
    card_id: int
    category: int = 0
    balance: int = 0  # fen
    blocked: bool = False
    slowness: float = 1.0
    flaky_write: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.card_id < 2**64:
            raise PopulationError(f"card_id {self.card_id} is not a u64")
        if not 0 <= self.category <= 255:
            raise PopulationError(f"category {self.category} is not 0..255")
        if not -(2**31) <= self.balance < 2**31:
            raise PopulationError(f"balance {self.balance} does not fit the record's i32")
        if not 0.1 <= self.slowness <= 10:
            raise PopulationError(f"slowness {self.slowness} outside 0.1..10")

    def record(self) -> fare_core.CardRecord:
        """The phone's first wallet record (counter 0, no open journey)."""
        return fare_core.CardRecord(card_id=self.card_id, category=self.category, balance=self.balance,
                                    status=1 if self.blocked else 0)


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise PopulationError(f"{name} must be an integer, not {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        try:
            if text.lower().startswith("0x"):
                return int(text, 16)
            if name == "card_id" and len(text) == 16 and not text.isdigit():
                return int(text, 16)
            return int(text)
        except ValueError:
            pass
    raise PopulationError(f"{name} must be an integer, not {value!r}")


def _bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes"):
        return True
    if text in ("0", "false", "no", ""):
        return False
    raise PopulationError(f"{name} must be true or false, not {value!r}")


def phone_from_row(row: dict[str, Any]) -> Phone:
    known = {f.name for f in fields(Phone)}
    unknown = set(row) - known
    if unknown:
        raise PopulationError(f"unknown column(s) {sorted(unknown)}")
    if "card_id" not in row or row["card_id"] in (None, ""):
        raise PopulationError("card_id is missing")
    args: dict[str, Any] = {"card_id": _int(row["card_id"], "card_id")}
    for name in ("category", "balance"):
        if row.get(name) not in (None, ""):
            args[name] = _int(row[name], name)
    for name in ("blocked", "flaky_write"):
        if name in row:
            args[name] = _bool(row[name], name)
    if row.get("slowness") not in (None, ""):
        try:
            args["slowness"] = float(row["slowness"])
        except (TypeError, ValueError):
            raise PopulationError(f"slowness must be a number, not {row['slowness']!r}") from None
    return Phone(**args)


class Population:
    """The phones of a simulation, by card id."""

    def __init__(self, phones: Iterable[Phone] = ()) -> None:
        self.phones: dict[int, Phone] = {}
        for phone in phones:
            self.add(phone)

    def add(self, phone: Phone) -> None:
        if phone.card_id in self.phones:
            raise PopulationError(f"card {phone.card_id:016x} appears twice")
        self.phones[phone.card_id] = phone

    def __len__(self) -> int:
        return len(self.phones)

    def __iter__(self) -> Iterator[Phone]:
        return iter(self.phones.values())

    def __getitem__(self, card_id: int) -> Phone:
        return self.phones[card_id]

    def issue(self, wallets: WalletStore) -> None:
        """Give every phone its first wallet."""
        for phone in self:
            wallets.issue(phone.record())

    @classmethod
    def generate(cls, count: int, seed: int = 0, *, blocked_share: float = 0.01,
                 low_balance_share: float = 0.05, slow_share: float = 0.05,
                 category_weights: tuple[float, ...] = (0.8, 0.1, 0.07, 0.03)) -> Population:
        """`count` phones, the same for the same seed: balances in fen, some blocked, some low, some slow."""
        if count < 0:
            raise PopulationError("count must be >= 0")
        for name, share in (("blocked_share", blocked_share), ("low_balance_share", low_balance_share),
                            ("slow_share", slow_share)):
            if not 0.0 <= share <= 1.0:
                raise PopulationError(f"{name} {share} is not a share between 0 and 1")
        rnd = random.Random(seed)
        population = cls()
        categories = range(len(category_weights))
        while len(population) < count:
            card_id = rnd.getrandbits(64)
            if card_id in population.phones:
                continue
            low = rnd.random() < low_balance_share
            population.add(Phone(
                card_id=card_id,
                category=rnd.choices(categories, category_weights)[0],
                balance=rnd.randrange(0, 300) if low else rnd.randrange(1_000, 20_000),
                blocked=rnd.random() < blocked_share,
                slowness=round(rnd.uniform(2.0, 5.0), 2) if rnd.random() < slow_share else 1.0,
            ))
        return population

    @classmethod
    def load(cls, path: str | Path) -> Population:
        """Phones from a .csv or .json file (see the module docstring)."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise PopulationError(f"cannot read {path}: {error.strerror}") from None
        rows: list[dict[str, Any]]
        if path.suffix.lower() == ".json":
            try:
                data = json.loads(text)
            except json.JSONDecodeError as error:
                raise PopulationError(f"{path} is not valid JSON: {error}") from None
            if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
                raise PopulationError(f"{path} must hold a JSON list of objects")
            rows = data
            first_row = 1
        elif path.suffix.lower() == ".csv":
            rows = list(csv.DictReader(text.splitlines()))
            first_row = 2  # after the header
        else:
            raise PopulationError(f"{path}: population files are .csv or .json")
        population = cls()
        for number, row in enumerate(rows, start=first_row):
            try:
                if None in row:
                    raise PopulationError("more values than header columns")
                population.add(phone_from_row({str(k).strip(): v for k, v in row.items()}))
            except PopulationError as error:
                raise PopulationError(f"{path} row {number}: {error}") from None
        return population

    def save_csv(self, path: str | Path) -> None:
        names = [f.name for f in fields(Phone)]
        with open(path, "w", newline="", encoding="utf-8") as file:
            writer = csv.writer(file)
            writer.writerow(names)
            for phone in self:
                writer.writerow([f"0x{phone.card_id:016x}" if n == "card_id" else getattr(phone, n)
                                 for n in names])
