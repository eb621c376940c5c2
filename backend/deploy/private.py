"""Files only their owner may read: credentials, environment files with logins, private keys."""

from __future__ import annotations

import os
from pathlib import Path


def write_private(path: Path, data: str | bytes) -> None:
    """Write `data` to `path`, mode 0600 before a byte is written (also on a file already there, which
    O_CREAT's mode alone would leave as it was)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as out:
        os.fchmod(out.fileno(), 0o600)
        out.write(data.encode() if isinstance(data, str) else data)
