"""Reason codes, decision flags and the gate display texts.

The numbers go on the wire (taps over MQTT, the journal, the backend's tables): never renumber, only add.
Codes below DENY_FROM allow passage; codes from DENY_FROM deny it.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag


class Direction(IntEnum):
    ENTRY = 0  # entering the paid area, or boarding a flat-fare vehicle
    EXIT = 1


class GateMode(IntEnum):
    NORMAL = 0
    FREE_EXIT = 1  # emergency: barriers open, exits recorded without charge, entries refused
    CLOSED = 2
    MAINTENANCE = 3


DENY_FROM = 10


class Reason(IntEnum):
    OK = 0
    CAP_REACHED = 1  # allowed; the daily cap reduced the fare
    OVERSTAY_SURCHARGE = 2  # allowed; stayed inside longer than allowed, surcharge added
    FREE_EXIT = 3  # allowed; emergency free exit, no charge
    MISSING_EXIT_CHARGED = 4  # allowed entry; the previous journey had no exit and was charged
    DENYLISTED = 10
    CARD_BLOCKED = 11
    INSUFFICIENT_BALANCE = 12
    ALREADY_INSIDE = 13  # anti-passback
    NO_ENTRY = 14  # exit without an entry
    EXPIRED = 15
    BAD_MAC = 16  # no slot of the wallet carries a valid record
    COUNTER_BACKWARDS = 17  # counter below the lowest accepted: a replayed or cloned wallet
    UNKNOWN_STATION = 18
    GATE_CLOSED = 19
    WRONG_CATEGORY = 20  # the card's category is not in the fare table
    TWO_CARDS = 21  # set by the gate, not decide(): two phones in the field
    READ_FAILED = 22  # set by the gate, not decide(): the wallet could not be read or written
    DENYLISTED_EXIT_CHARGED = 5  # allowed; a deny-listed phone inside the paid area let out, charged the
    # normal fare, its wallet blocked in the same write (the fare table's deny_list rule)

    @property
    def allowed(self) -> bool:
        return self < DENY_FROM


class Flag(IntFlag):
    """What else happened on an allowed tap, beside the primary reason."""

    NONE = 0
    CAPPED = 1
    OVERSTAY = 2
    TRANSFER = 4
    MONTHLY_DISCOUNT = 8
    MISSING_EXIT = 16
    TOPUP_APPLIED = 32
    TOPUP_REFUSED = 64  # the top-up would exceed the purse maximum; kept pending
    UNBLOCKED = 128
    SAME_STATION = 256
    BLOCKED_NOW = 512  # a deny-listed phone's wallet was marked blocked
    UNCONFIRMED = 1024  # set by the gate: the wallet write's outcome is unknown (answer lost, phone
    # gone before a read-back); fare and counters are what the write would have made, the barrier
    # stayed shut, and the phone's next tap anywhere tells whether its counter moved
    RECOVERED = 2048  # set by the gate: a re-tap found its own UNCONFIRMED write landed and let the
    # rider through on it; nothing written, nothing charged (the wallet read shows the landed record)
    ACTION_ALREADY_APPLIED = 4096  # the tap's action id is at or below the wallet's last_action: this
    # wallet already holds that action (applied at another gate), so it is not applied again
    WEEKLY_CAPPED = 8192  # the weekly cap reduced the fare (Reason.CAP_REACHED, as for the daily cap)
    OVERDRAFT = 16384  # the fare took the balance below zero, within the table's overdraft limit:
    # balance_after < 0 is the debt, recovered by the next top-up


# (Chinese, English); "{fare}" and "{balance}" are yuan with two decimals.
_TEXT: dict[int, tuple[str, str]] = {
    Reason.OK: ("扣费 {fare} 元 余额 {balance} 元", "Fare ¥{fare}  Balance ¥{balance}"),
    Reason.CAP_REACHED: ("已达日封顶 扣费 {fare} 元 余额 {balance} 元",
                         "Daily cap reached  Fare ¥{fare}  Balance ¥{balance}"),
    Reason.OVERSTAY_SURCHARGE: ("超时 扣费 {fare} 元 余额 {balance} 元",
                                "Overstay surcharge  Fare ¥{fare}  Balance ¥{balance}"),
    Reason.FREE_EXIT: ("紧急放行", "Emergency free exit"),
    Reason.MISSING_EXIT_CHARGED: ("上次未出站 补扣 {fare} 元 余额 {balance} 元",
                                  "Missing exit charged ¥{fare}  Balance ¥{balance}"),
    Reason.DENYLISTED: ("此卡已挂失 请到客服中心", "Phone blocked - see customer service"),
    Reason.CARD_BLOCKED: ("此卡已锁定 请到客服中心", "Card locked - see customer service"),
    Reason.INSUFFICIENT_BALANCE: ("余额不足 余额 {balance} 元 请充值",
                                  "Insufficient balance ¥{balance} - please top up"),
    Reason.ALREADY_INSIDE: ("已进站", "Already entered"),
    Reason.NO_ENTRY: ("无进站记录 请到客服中心", "No entry recorded - see customer service"),
    Reason.EXPIRED: ("卡已过期", "Card expired"),
    Reason.BAD_MAC: ("无效卡 请重试", "Invalid card - try again"),
    Reason.COUNTER_BACKWARDS: ("无效卡 请到客服中心", "Invalid card - see customer service"),
    Reason.UNKNOWN_STATION: ("设备故障 请走其他闸机", "Gate fault - use another gate"),
    Reason.GATE_CLOSED: ("暂停服务", "Gate closed"),
    Reason.WRONG_CATEGORY: ("票种无效", "Ticket type not valid"),
    Reason.TWO_CARDS: ("请一次只刷一部手机", "One phone at a time"),
    Reason.READ_FAILED: ("读卡失败 请重试", "Read failed - try again"),
    Reason.DENYLISTED_EXIT_CHARGED: ("此卡已挂失 扣费 {fare} 元 请到客服中心",
                                     "Phone blocked - fare ¥{fare} - see customer service"),
}

WELCOME = ("欢迎", "Welcome")


def yuan(fen: int) -> str:
    """Integer fen as yuan with two decimals, without ever going through a float."""
    sign = "-" if fen < 0 else ""
    fen = abs(fen)
    return f"{sign}{fen // 100}.{fen % 100:02d}"


#: An allowed tap that overdrew the wallet (Flag.OVERDRAFT): the rider is told the debt and what to do,
#: whatever the reason (a capped or surcharged exit can overdraw too); "{debt}" is -balance in yuan.
_OVERDRAWN = ("扣费 {fare} 元 透支 {debt} 元 请充值", "Fare ¥{fare}  Overdrawn ¥{debt} - please top up")


def display_text(reason: int, fare: int, balance: int, flags: int = 0) -> tuple[str, str]:
    """The gate display's (Chinese, English) lines for a decision."""
    if flags & Flag.OVERDRAFT and balance < 0:
        zh, en = _OVERDRAWN
    else:
        zh, en = _TEXT.get(reason, ("请到客服中心", "See customer service"))
    values = {"fare": yuan(fare), "balance": yuan(balance), "debt": yuan(-balance)}
    return zh.format(**values), en.format(**values)
