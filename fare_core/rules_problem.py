"""One problem found in a rules file (an error, or a warning that does not stop it compiling), where it is
written, and the hints shared by the checks that find them."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from fare_core.rules_source import SourceMap

LocPath = tuple[str | int, ...]
Severity = Literal["error", "warning"]

MONEY_HINT = "fen are integers; ¥3.00 is 300"
METRES_HINT = "metres are integers; 1.5 km is 1500"
MINUTES_HINT = "minutes are integers; 1.5 hours is 90"
TIME_HINT = 'HH:MM, 24-hour, in quotes: "07:30"; "24:00" ends a day'


def format_path(path: LocPath) -> str:
    """("leg_rules", 0, "steps", 1) -> 'leg_rules[0].steps[1]'."""
    parts: list[str] = []
    for item in path:
        parts.append(f"[{item}]" if isinstance(item, int) else ("." if parts else "") + str(item))
    return "".join(parts)


@dataclass(frozen=True)
class Problem:
    """One thing wrong (an error) or suspicious (a warning) in a rules file, and where it is written."""

    path: LocPath
    message: str
    hint: str = ""
    severity: Severity = "error"
    line: int | None = None
    column: int | None = None

    @property
    def location(self) -> str:
        return format_path(self.path)

    def located(self, source: SourceMap) -> Problem:
        position = source.position(self.path)
        return self if position is None else replace(self, line=position[0], column=position[1])

    def sort_key(self) -> tuple[int, int, int]:
        return (self.line or 0, self.column or 0, self.severity != "error")

    def as_dict(self, file: str) -> dict[str, Any]:
        return {"file": file, "line": self.line, "column": self.column, "location": self.location,
                "message": self.message, "hint": self.hint or None, "severity": self.severity}
