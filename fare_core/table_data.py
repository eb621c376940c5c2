"""TableData: a compiled fare table as flat arrays, the hand-off between the compiler and the core.

The compiler (compiler.py) turns readable rules into this; artefact.py turns it into bytes and back;
FareTable (in _core / _core_py) reads the arrays directly on every tap. Every price is already final
for its rider category, so a tap does lookups, never rule evaluation.

Array layouts (all row-major, indices are dense 0..n-1):
- fares[((band * n_categories + category) * n_stations + origin) * n_stations + dest]: fen for a trip
  between two entry/exit stations (the diagonal is the fare for an exit at the entry station after the
  same-station window).
- flat_fares[(band * n_categories + category) * n_networks + network]: fen for boarding a flat-fare
  network (a bus).
- transfer_*[from_network * n_networks + to_network]: discount for a leg on `to` that starts within
  transfer_window_s of a leg on `from` ending; window 0 means no transfer between the two.
- missing_exit_fare[category * n_stations + origin]: charged at the next entry when an entry at
  `origin` was never closed by an exit.
- band_of_minute[local minute of the week, Monday 00:00 = 0]: time band index.
- min_entry_balance[category]: fen a wallet of that category must hold to enter an entry/exit network
  (0: no minimum, as for a category that is never charged).
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field

MINUTES_PER_WEEK = 7 * 24 * 60
NO_NETWORK = 255
MAX_STATION_ID = 0xFFFF

# What a deny-listed phone gets at an exit of an entry/exit network while its wallet shows an open entry.
# New entries and flat-fare boardings of a deny-listed phone are always refused.
DENYLISTED_EXIT_LET_OUT = 0  # allowed and charged the normal fare; the wallet is blocked in that write
DENYLISTED_EXIT_REFUSE = 1  # refused like any other tap of a deny-listed phone


@dataclass(frozen=True)
class TableData:
    version: int  # u32, monotonic per operator; an older version never replaces a newer one
    created_at: int  # UTC seconds when compiled
    name: str
    utc_offset_min: int  # local time = UTC + offset (China Standard Time: 480)
    day_start_min: int  # the service day starts at this local minute (04:00 = 240)
    station_ids: array[int]  # 'H', n_stations: dense index -> operator station id
    station_network: bytes  # n_stations: network index of each station
    network_names: tuple[str, ...]  # e.g. ("metro", "bus")
    network_flat: bytes  # n_networks: 1 = flat fare, tap on only (bus); 0 = entry/exit matrix
    category_names: tuple[str, ...]  # e.g. ("adult", "student", "senior", "staff")
    band_names: tuple[str, ...]  # e.g. ("offpeak", "peak")
    band_of_minute: bytes  # MINUTES_PER_WEEK entries
    fares: array[int]  # 'I', n_bands * n_categories * n_stations * n_stations
    flat_fares: array[int]  # 'I', n_bands * n_categories * n_networks
    transfer_discount: array[int]  # 'I', n_networks * n_networks: fen off the next leg
    transfer_percent: bytes  # n_networks * n_networks: percent off the next leg (after the fen discount)
    transfer_window_s: array[int]  # 'I', n_networks * n_networks: 0 = no transfer
    max_transfers: int  # transfers allowed in one journey
    daily_cap: array[int]  # 'I', n_categories: 0 = no cap
    monthly_threshold: array[int]  # 'I', n_categories: fen spent in the month before the discount; 0 = none
    monthly_percent: bytes  # n_categories: percent off once the threshold is reached
    max_inside_s: int  # longest stay in the paid area without surcharge; 0 = unlimited
    overstay_surcharge: int  # fen added when max_inside_s is exceeded
    same_station_window_s: int  # exit at the entry station within this many seconds...
    same_station_fare: array[int]  # 'I', n_categories: ...costs this
    missing_exit_fare: array[int]  # 'I', n_categories * n_stations
    anti_passback_s: int  # a second entry at the same station within this window is refused
    min_entry_balance: array[int]  # 'I', n_categories: fen a wallet must hold to enter; 0 = no minimum
    max_balance: int  # fen a wallet may hold (top-ups beyond it are refused)
    denylisted_exit: int  # DENYLISTED_EXIT_LET_OUT or DENYLISTED_EXIT_REFUSE
    extra: dict[str, str] = field(default_factory=dict)  # free-form labels (source rules hash, ...)

    @property
    def n_stations(self) -> int:
        return len(self.station_ids)

    @property
    def n_networks(self) -> int:
        return len(self.network_names)

    @property
    def n_categories(self) -> int:
        return len(self.category_names)

    @property
    def n_bands(self) -> int:
        return len(self.band_names)

    def validate(self) -> None:
        """Raise ValueError naming the first field whose size or range is inconsistent."""
        s, n, c, b = self.n_stations, self.n_networks, self.n_categories, self.n_bands
        expect = {
            "station_network": s,
            "network_flat": n,
            "band_of_minute": MINUTES_PER_WEEK,
            "fares": b * c * s * s,
            "flat_fares": b * c * n,
            "transfer_discount": n * n,
            "transfer_percent": n * n,
            "transfer_window_s": n * n,
            "daily_cap": c,
            "monthly_threshold": c,
            "monthly_percent": c,
            "same_station_fare": c,
            "missing_exit_fare": c * s,
            "min_entry_balance": c,
        }
        for name, size in expect.items():
            got = len(getattr(self, name))
            if got != size:
                raise ValueError(f"{name}: expected {size} entries, got {got}")
        if not (0 < s <= MAX_STATION_ID and 0 < n < NO_NETWORK and 0 < c < 256 and 0 < b < 256):
            raise ValueError("table dimensions out of range (stations, networks, categories, bands)")
        if len(set(self.station_ids)) != s:
            raise ValueError("station_ids: duplicate station id")
        if any(x >= n for x in self.station_network):
            raise ValueError("station_network: network index out of range")
        if any(x >= b for x in self.band_of_minute):
            raise ValueError("band_of_minute: band index out of range")
        if any(p > 100 for p in self.transfer_percent) or any(p > 100 for p in self.monthly_percent):
            raise ValueError("percent above 100")
        if not (-24 * 60 < self.utc_offset_min < 24 * 60 and 0 <= self.day_start_min < 24 * 60):
            raise ValueError("utc_offset_min or day_start_min out of range")
        for name in ("version", "max_transfers", "max_inside_s", "overstay_surcharge",
                     "same_station_window_s", "anti_passback_s", "max_balance"):
            value = getattr(self, name)
            if not (0 <= value <= 0xFFFFFFFF):
                raise ValueError(f"{name}: {value} is outside 0..2^32-1")
        if self.max_transfers > 254:
            raise ValueError("max_transfers: a card counts at most 254 transfers")
        if self.max_balance > 0x7FFFFFFF or any(x > 0x7FFFFFFF for x in self.min_entry_balance):
            raise ValueError("max_balance and min_entry_balance must fit a signed 32-bit purse")
        if self.denylisted_exit not in (DENYLISTED_EXIT_LET_OUT, DENYLISTED_EXIT_REFUSE):
            raise ValueError(f"denylisted_exit: {self.denylisted_exit} is neither "
                             f"{DENYLISTED_EXIT_LET_OUT} (let out) nor {DENYLISTED_EXIT_REFUSE} (refuse)")

    def charges_nothing(self, category: int) -> bool:
        """True when every price the table holds for `category` is 0 (a free or fully discounted rider):
        no fare in any band, no flat fare, no same-station or missing-exit fare. The overstay surcharge,
        the same for every category, is not a fare of the category and is left out."""
        s, n, c = self.n_stations, self.n_networks, self.n_categories
        for band in range(self.n_bands):
            row = band * c + category
            if any(self.fares[row * s * s:(row + 1) * s * s]) or any(self.flat_fares[row * n:(row + 1) * n]):
                return False
        missing_exit = self.missing_exit_fare[category * s:(category + 1) * s]
        return not (self.same_station_fare[category] or any(missing_exit))


def minimum_for_paying_categories(table: TableData, fen: int) -> array[int]:
    """min_entry_balance of `fen` for every category the table charges something, 0 for one it never
    charges: what a rule without a list of categories means (and what a layout-1 artefact's single
    minimum becomes)."""
    return array("I", (0 if table.charges_nothing(c) else fen for c in range(table.n_categories)))
