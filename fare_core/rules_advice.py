"""Warnings on rules that are valid but look like a slip: yuan typed where fen are meant.

`base_fen = 3` is a valid 3-fen fare, and nothing else would catch it before riders are charged ¥0.03.
The heuristic, which each warning repeats in its message:

- a fare (a distance rule's base fare or max_fen, a flat, zone or od fare, the same-station,
  missing-exit or overstay fare) of 1..9 fen: nobody prices a ride under ¥0.10;
- a fare of 10..49 fen when the table's other fares have a median of 100 fen (¥1) or more: 20 among
  200, 300 and 400 is a typo or yuan, not a cheaper trip;
- a distance step adding 1..9 fen for every km or more (add_fen < 10 with every_m >= 1000);
- a discount of 1..9 fen off (a category's fen_off, a transfer's discount_fen);
- a cap or a balance of 1..99 fen (daily cap, monthly threshold, minimum entry balance, maximum
  balance): every real one is ¥1 or more.

Zero is never warned about: it means free, or none. A warning does not stop `fares check` (exit 0) or
compiling; it is a question for the operator, answered by fixing the value or leaving it.
"""

from __future__ import annotations

import statistics
from typing import Any, Literal

from fare_core.rules import Draft, FareRules, Outcome, validate, validate_text
from fare_core.rules_problem import MONEY_HINT, LocPath, Problem

FARE_FLOOR = 10  # fen: a fare below this is yuan typed as fen
LOW_FARE = 50  # fen: a fare below this is suspicious...
TYPICAL_FARE = 100  # ...when the median of the other fares is at least this
CAP_FLOOR = 100  # fen: a cap or balance below this is yuan typed as fen


def _yuan(fen: int) -> str:
    return f"¥{fen // 100}.{fen % 100:02d}"


def _warning(path: LocPath, fen: int, why: str) -> Problem:
    return Problem(path, f"{fen} fen is {_yuan(fen)}: looks like yuan typed as fen ({why})",
                   f"{MONEY_HINT}; if ¥{fen} was meant, write {fen * 100}", "warning")


def _fares(rules: FareRules, draft: Draft) -> list[tuple[LocPath, int]]:
    """Every fare the rules state, with where it is written."""
    fares: list[tuple[LocPath, int]] = []
    for i, rule in draft.numbered(("leg_rules",), rules.leg_rules):
        at: LocPath = ("leg_rules", i)
        if rule.kind == "distance":
            fares.append(((*at, "base_fen"), rule.base_fen))
            if rule.max_fen is not None:
                fares.append(((*at, "max_fen"), rule.max_fen))
        elif rule.kind == "flat":
            fares.append(((*at, "fare_fen"), rule.fare_fen))
        elif rule.kind == "zones":
            fares += [((*at, "matrix", r, c), fen) for r, row in enumerate(rule.matrix)
                      for c, fen in enumerate(row)]
        elif rule.kind == "od":
            fares += [((*at, "pairs", j, "fare_fen"), pair.fare_fen)
                      for j, pair in draft.numbered((*at, "pairs"), rule.pairs)]
    area = rules.paid_area
    for name, fen in (("same_station_fare_fen", area.same_station_fare_fen),
                      ("missing_exit_fare_fen", area.missing_exit_fare_fen),
                      ("overstay_surcharge_fen", area.overstay_surcharge_fen)):
        if fen is not None:
            fares.append((("paid_area", name), fen))
    return [(path, fen) for path, fen in fares if fen > 0]


def advise(rules: FareRules, draft: Draft) -> list[Problem]:
    """Warnings for fares, steps, discounts, caps and balances that look like yuan typed as fen."""
    warnings: list[Problem] = []
    fares = _fares(rules, draft)
    for k, (path, fen) in enumerate(fares):
        others = [other for j, (_, other) in enumerate(fares) if j != k]
        if fen < FARE_FLOOR:
            warnings.append(_warning(path, fen, f"a fare under {_yuan(FARE_FLOOR)}"))
        elif fen < LOW_FARE and others and statistics.median(others) >= TYPICAL_FARE:
            median = statistics.median(others)
            warnings.append(_warning(path, fen, f"a fare under {_yuan(LOW_FARE)} where the other fares' "
                                                f"median is {_yuan(int(median))}"))
    for i, rule in draft.numbered(("leg_rules",), rules.leg_rules):
        if rule.kind == "distance":
            for j, step in draft.numbered(("leg_rules", i, "steps"), rule.steps):
                if 0 < step.add_fen < FARE_FLOOR and step.every_m >= 1000:
                    warnings.append(_warning(("leg_rules", i, "steps", j, "add_fen"), step.add_fen,
                                             f"under {_yuan(FARE_FLOOR)} added for every {step.every_m} m"))
    for category_id, category in rules.rider_categories.items():
        at: LocPath = ("rider_categories", category_id)
        if category.fen_off is not None and 0 < category.fen_off < FARE_FLOOR:
            warnings.append(_warning((*at, "fen_off"), category.fen_off,
                                     f"a discount under {_yuan(FARE_FLOOR)}"))
        for name, fen in (("daily_cap_fen", category.daily_cap_fen),
                          ("weekly_cap_fen", category.weekly_cap_fen),
                          ("monthly_threshold_fen", category.monthly_threshold_fen)):
            if 0 < fen < CAP_FLOOR:
                warnings.append(_warning((*at, name), fen, f"a cap or threshold under {_yuan(CAP_FLOOR)}"))
        if category.monthly is not None and category.monthly.basis == "spend":
            for j, tier in enumerate(category.monthly.tiers):
                if tier.from_fen is not None and 0 < tier.from_fen < CAP_FLOOR:
                    warnings.append(_warning((*at, "monthly", "tiers", j, "from_fen"), tier.from_fen,
                                             f"a threshold under {_yuan(CAP_FLOOR)}"))
    for i, transfer in draft.numbered(("transfer_rules",), rules.transfer_rules):
        if 0 < transfer.discount_fen < FARE_FLOOR:
            warnings.append(_warning(("transfer_rules", i, "discount_fen"), transfer.discount_fen,
                                     f"a discount under {_yuan(FARE_FLOOR)}"))
    for name, fen in (("min_entry_balance_fen", rules.min_entry_balance_fen),
                      ("max_balance_fen", rules.max_balance_fen)):
        if 0 < fen < CAP_FLOOR:
            warnings.append(_warning((name,), fen, f"a balance under {_yuan(CAP_FLOOR)}"))
    if 0 < rules.overdraft.limit_fen < CAP_FLOOR:
        warnings.append(_warning(("overdraft", "limit_fen"), rules.overdraft.limit_fen,
                                 f"an overdraft under {_yuan(CAP_FLOOR)}"))
    return warnings


def check_data(data: Any) -> Outcome:
    """rules.validate, with these warnings as well."""
    return validate(data, advise)


def check_text(text: str, fmt: Literal["toml", "json"]) -> Outcome:
    """rules.validate_text, with these warnings as well: every problem of a rules file, located and
    sorted by line (what `faregate fares check` prints)."""
    return validate_text(text, fmt, advise)
