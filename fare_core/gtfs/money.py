"""GTFS amounts (decimal text in a currency) to and from integer minor units.

The fare-rule format counts money in fen: the minor unit of the yuan. A feed in another currency is
imported in that currency's minor unit (cents for CAD, grosze for PLN), exactly, never through a float.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

# ISO 4217 currencies whose minor unit is not a hundredth.
_DIGITS = {
    "BIF": 0,
    "CLP": 0,
    "DJF": 0,
    "GNF": 0,
    "ISK": 0,
    "JPY": 0,
    "KMF": 0,
    "KRW": 0,
    "PYG": 0,
    "RWF": 0,
    "UGX": 0,
    "VND": 0,
    "VUV": 0,
    "XAF": 0,
    "XOF": 0,
    "XPF": 0,
    "BHD": 3,
    "IQD": 3,
    "JOD": 3,
    "KWD": 3,
    "LYD": 3,
    "OMR": 3,
    "TND": 3,
}


def minor_digits(currency: str) -> int:
    return _DIGITS.get(currency.upper(), 2)


def to_minor(amount: str, currency: str) -> int:
    """'2.40' USD -> 240; ValueError for text that is not a non-negative amount of that currency."""
    try:
        value = Decimal(amount)
    except InvalidOperation:
        raise ValueError(f"amount {amount!r} is not a number") from None
    if not value.is_finite() or value < 0:
        raise ValueError(f"amount {amount!r} must be a number >= 0")
    scaled = value.scaleb(minor_digits(currency))
    if scaled != scaled.to_integral_value():
        raise ValueError(f"amount {amount!r} has more decimals than {currency or 'the currency'} has")
    return int(scaled)


def from_minor(minor: int, currency: str) -> str:
    """240 USD -> '2.40'."""
    digits = minor_digits(currency)
    return f"{Decimal(minor).scaleb(-digits):.{digits}f}"
