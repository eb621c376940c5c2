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
- monthly_tier_first[category] .. monthly_tier_first[category + 1]: the category's monthly tiers in
  monthly_tier_from (the month's count, fen spent or rides taken, from which the tier holds; rising)
  and monthly_tier_percent (percent off while it holds; 0 ends a discount). The count is the month's
  before the leg: a leg that crosses a threshold is priced wholly at the tier in force when it starts.
- monthly_flags[category]: MONTHLY_BY_RIDES (count rides, else fen), MONTHLY_SURCHARGES_COUNT.
- monthly_networks[category * n_networks + network]: MONTH_COUNTS (a leg there counts toward the
  month), MONTH_DISCOUNTED (a leg there gets the tier's discount).
- offset_change_at / offset_change_min: from UTC second offset_change_at[k] on, local time is UTC +
  offset_change_min[k] minutes (rising times; before the first change, utc_offset_min): a time zone's
  summer time over the table's validity, compiled from its IANA name.
- date_override_day[k] (local date, days since 1970, rising) is priced as weekday date_override_as[k]
  (0 Monday .. 6 Sunday): public holidays priced as a Sunday, special service days.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from itertools import pairwise

MINUTES_PER_WEEK = 7 * 24 * 60
NO_NETWORK = 255
MAX_STATION_ID = 0xFFFF
#: The largest daily or weekly cap: the card record keeps day_spent and week_spent in 16 bits.
MAX_CAP_FEN = 0xFFFF

# monthly_flags bits
MONTHLY_BY_RIDES = 1  # the tiers count rides in the month, not fen spent
MONTHLY_SURCHARGES_COUNT = 2  # an overstay surcharge counts toward the month's spend
# monthly_networks bits
MONTH_COUNTS = 1
MONTH_DISCOUNTED = 2
# overdraft_taps bits: the taps that may take the balance below zero
OVERDRAFT_EXIT = 1  # the exit of an entry/exit network
OVERDRAFT_BOARDING = 2  # boarding a flat-fare vehicle

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
    daily_cap: array[int]  # 'I', n_categories: 0 = no cap; at most MAX_CAP_FEN
    max_inside_s: int  # longest stay in the paid area without surcharge; 0 = unlimited
    overstay_surcharge: int  # fen added when max_inside_s is exceeded
    same_station_window_s: int  # exit at the entry station within this many seconds...
    same_station_fare: array[int]  # 'I', n_categories: ...costs this
    missing_exit_fare: array[int]  # 'I', n_categories * n_stations
    anti_passback_s: int  # a second entry at the same station within this window is refused
    min_entry_balance: array[int]  # 'I', n_categories: fen a wallet must hold to enter; 0 = no minimum
    max_balance: int  # fen a wallet may hold (top-ups beyond it are refused)
    denylisted_exit: int  # DENYLISTED_EXIT_LET_OUT or DENYLISTED_EXIT_REFUSE
    month_start_min: int  # the calendar month turns at this local minute of its first day (00:00 = 0)
    monthly_flags: bytes  # n_categories: MONTHLY_BY_RIDES | MONTHLY_SURCHARGES_COUNT
    monthly_tier_first: array[int]  # 'I', n_categories + 1: each category's first tier (see above)
    monthly_tier_from: array[int]  # 'I', n_tiers: fen or rides in the month from which the tier holds
    monthly_tier_percent: bytes  # n_tiers: percent off while the tier holds
    monthly_networks: bytes  # n_categories * n_networks: MONTH_COUNTS | MONTH_DISCOUNTED
    weekly_cap: array[int]  # 'I', n_categories: 0 = no cap; at most MAX_CAP_FEN
    week_rolling: int  # 1: the week is 7 days from its first charged tap; 0: Monday to Sunday
    offset_change_at: array[int]  # 'I', n_offset_changes: UTC seconds, rising
    offset_change_min: array[int]  # 'i', n_offset_changes: local = UTC + this from then on
    date_override_day: array[int]  # 'I', n_date_overrides: local dates (days since 1970), rising
    date_override_as: bytes  # n_date_overrides: the weekday (0 Monday) each date is priced as
    overdraft_limit: int  # fen below zero an allowed tap may take the balance to; 0 = no overdraft
    overdraft_taps: int  # OVERDRAFT_EXIT | OVERDRAFT_BOARDING
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
            "monthly_flags": c,
            "monthly_tier_first": c + 1,
            "monthly_tier_percent": len(self.monthly_tier_from),
            "monthly_networks": c * n,
            "weekly_cap": c,
            "offset_change_min": len(self.offset_change_at),
            "date_override_as": len(self.date_override_day),
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
        if any(p > 100 for p in self.transfer_percent) or any(p > 100 for p in self.monthly_tier_percent):
            raise ValueError("percent above 100")
        if not (-24 * 60 < self.utc_offset_min < 24 * 60 and 0 <= self.day_start_min < 24 * 60
                and 0 <= self.month_start_min < 24 * 60):
            raise ValueError("utc_offset_min, day_start_min or month_start_min out of range")
        self._validate_schemes()
        for name in ("version", "max_transfers", "max_inside_s", "overstay_surcharge",
                     "same_station_window_s", "anti_passback_s", "max_balance", "overdraft_limit"):
            value = getattr(self, name)
            if not (0 <= value <= 0xFFFFFFFF):
                raise ValueError(f"{name}: {value} is outside 0..2^32-1")
        if self.max_transfers > 254:
            raise ValueError("max_transfers: a card counts at most 254 transfers")
        if (self.max_balance > 0x7FFFFFFF or any(x > 0x7FFFFFFF for x in self.min_entry_balance)
                or self.overdraft_limit > 0x7FFFFFFF):
            raise ValueError("max_balance, min_entry_balance and overdraft_limit must fit a signed "
                             "32-bit purse")
        if self.denylisted_exit not in (DENYLISTED_EXIT_LET_OUT, DENYLISTED_EXIT_REFUSE):
            raise ValueError(f"denylisted_exit: {self.denylisted_exit} is neither "
                             f"{DENYLISTED_EXIT_LET_OUT} (let out) nor {DENYLISTED_EXIT_REFUSE} (refuse)")

    def _validate_schemes(self) -> None:
        """The monthly tiers, caps, offset changes and date overrides (validate()'s second half)."""
        first, tiers = list(self.monthly_tier_first), list(self.monthly_tier_from)
        if first[0] != 0 or first[-1] != len(tiers) or any(a > b for a, b in pairwise(first)):
            raise ValueError("monthly_tier_first: not the rising start of each category's tiers")
        for c in range(self.n_categories):
            own = tiers[first[c]:first[c + 1]]
            if any(a >= b for a, b in pairwise(own)):
                raise ValueError(f"monthly_tier_from: category {c}'s tiers do not rise")
        if any(x > MONTHLY_BY_RIDES | MONTHLY_SURCHARGES_COUNT for x in self.monthly_flags):
            raise ValueError("monthly_flags: unknown bit")
        if any(x > MONTH_COUNTS | MONTH_DISCOUNTED for x in self.monthly_networks):
            raise ValueError("monthly_networks: unknown bit")
        if any(x > MAX_CAP_FEN for x in self.daily_cap) or any(x > MAX_CAP_FEN for x in self.weekly_cap):
            raise ValueError(f"daily_cap and weekly_cap are at most {MAX_CAP_FEN} fen (the card keeps "
                             f"day and week spend in 16 bits)")
        if self.week_rolling not in (0, 1) or self.overdraft_taps > OVERDRAFT_EXIT | OVERDRAFT_BOARDING:
            raise ValueError("week_rolling or overdraft_taps out of range")
        changes = list(self.offset_change_at)
        if any(a >= b for a, b in pairwise(changes)):
            raise ValueError("offset_change_at: times do not rise")
        if any(not -24 * 60 < x < 24 * 60 for x in self.offset_change_min):
            raise ValueError("offset_change_min: an offset out of range")
        days = list(self.date_override_day)
        if any(a >= b for a, b in pairwise(days)) or any(x > 6 for x in self.date_override_as):
            raise ValueError("date_override_day must rise and date_override_as be a weekday 0..6")

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


def utc_offset_at(table: TableData, utc_seconds: int) -> int:
    """Minutes east of UTC in force at a UTC time (the compiled summer-time changes, else the base)."""
    k = bisect_right(table.offset_change_at, utc_seconds)
    return table.offset_change_min[k - 1] if k else table.utc_offset_min


def weekday_of(table: TableData, local_date: int) -> int:
    """The weekday (0 Monday) a local date (days since 1970) is priced as: its own, or its override."""
    k = bisect_left(table.date_override_day, local_date)
    if k < len(table.date_override_day) and table.date_override_day[k] == local_date:
        return table.date_override_as[k]
    return (local_date + 3) % 7  # 1970-01-01 was a Thursday


def local_seconds(table: TableData, utc_seconds: int) -> int:
    """Local seconds since 1970 of a UTC time: the offset in force then (summer time compiled in)."""
    return utc_seconds + utc_offset_at(table, utc_seconds) * 60


def minute_of_local_week(table: TableData, local: int) -> int:
    """The minute of the week (Monday 00:00 = 0) of local seconds, a date override's weekday for its
    date: what band_of_minute is indexed by."""
    return weekday_of(table, local // 86400) * 1440 + (local % 86400) // 60


def local_minute_of_week(table: TableData, utc_seconds: int) -> int:
    """The minute of the week band_of_minute is indexed by, at a UTC time."""
    return minute_of_local_week(table, local_seconds(table, utc_seconds))


def single_tier_schemes(thresholds: list[int], percents: list[int]) -> tuple[array[int], array[int], bytes]:
    """(monthly_tier_first, monthly_tier_from, monthly_tier_percent) of one spend threshold and percent
    per category (0: no scheme), the monthly discount tables of layout 1 and 2 held."""
    first, froms, pct = array("I", [0]), array("I"), bytearray()
    for threshold, percent in zip(thresholds, percents, strict=True):
        if threshold:
            froms.append(threshold)
            pct.append(percent)
        first.append(len(froms))
    return first, froms, bytes(pct)
