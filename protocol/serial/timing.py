"""How long things take on the link, and when a controller may call a request lost.

Every request is answered by exactly one response or NAK, within `response_timeout()`; past it the
controller resends the same frame with the same SEQ (the device answers a repeat from its cache
instead of acting twice), at most RETRIES times, then declares the device unreachable
(transactions.py applies these figures).
"""

from __future__ import annotations

from .framer import MAX_FRAME, OVERHEAD
from .messages import Message, ReadWallet, WriteSlot

DEFAULT_BAUD = 115200
BITS_PER_BYTE = 10  # 8N1: start bit, 8 data bits, stop bit
#: A partial frame is abandoned (FrameDecoder.expire) once the line has been idle this long.
FRAME_GAP_S = 0.020
#: The device starts answering a non-RF request within this time after its last byte arrived.
PROCESSING_MAX_S = 0.010
#: Longest RF operations the device allows itself (slowest phone, including write verify).
RF_READ_MAX_S = 0.300
RF_WRITE_MAX_S = 0.400
#: Margin for the controller's own scheduling.
MARGIN_S = 0.030
#: Resends of an unanswered request (same SEQ) before the controller gives up.
RETRIES = 2


def byte_time(baud: int = DEFAULT_BAUD) -> float:
    """Seconds one byte occupies the line (86.8 µs at 115200 8N1)."""
    if baud <= 0:
        raise ValueError(f"baud must be positive, not {baud}")
    return BITS_PER_BYTE / baud


def wire_time(n_bytes: int, baud: int = DEFAULT_BAUD) -> float:
    """Seconds `n_bytes` take on the line: n x 10 / baud."""
    return n_bytes * byte_time(baud)


def response_timeout(request: Message, baud: int = DEFAULT_BAUD) -> float:
    """How long to wait for the answer to `request` before resending it."""
    request_bytes = len(request.encode_payload()) + OVERHEAD
    work = PROCESSING_MAX_S
    if isinstance(request, ReadWallet):
        work += RF_READ_MAX_S
    elif isinstance(request, WriteSlot):
        work += RF_WRITE_MAX_S
    return wire_time(request_bytes + MAX_FRAME, baud) + work + MARGIN_S
