"""Write fare-rule data (plain dicts, lists, strings, integers, booleans) as TOML the rules reader takes.

The standard library reads TOML but does not write it; the rules need only this small subset: top-level
keys first, then [tables] for dicts of dicts, [[arrays of tables]] for lists of dicts.
"""

from __future__ import annotations

import json
from typing import Any


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _key(key: str) -> str:
    if key and all(c.isascii() and (c.isalnum() or c in "_-") for c in key):
        return key
    return json.dumps(key, ensure_ascii=False)


def to_toml(data: dict[str, Any], header: list[str] | None = None) -> str:
    """TOML text for rules data; `header` lines become comments at the top."""
    lines = [f"# {h}" if h else "#" for h in header or []]
    if lines:
        lines.append("")
    tables: list[tuple[str, Any]] = []
    for key, value in data.items():
        if value is None:
            continue
        if _is_table(value):
            tables.append((key, value))
        elif isinstance(value, list) and value and all(isinstance(v, list) for v in value):
            lines.append(f"{_key(key)} = [")
            lines.extend(f"  {_value(v)}," for v in value)
            lines.append("]")
        else:
            lines.append(f"{_key(key)} = {_value(value)}")
    for key, value in tables:
        lines.append("")
        if isinstance(value, dict):
            for name, table in value.items():
                lines.append(f"[{_key(key)}.{_key(name)}]")
                lines.extend(_body(table))
                lines.append("")
        else:
            for table in value:
                lines.append(f"[[{_key(key)}]]")
                lines.extend(_body(table))
                lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _is_table(value: Any) -> bool:
    """A dict of dicts ([name.key] tables) or a list of dicts ([[name]] tables)."""
    if isinstance(value, dict) and value:
        return all(isinstance(v, dict) for v in value.values())
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _body(table: dict[str, Any]) -> list[str]:
    out = []
    for key, value in table.items():
        if value is None:
            continue
        if isinstance(value, list) and value and all(isinstance(v, (list, dict)) for v in value):
            out.append(f"{_key(key)} = [")
            out.extend(f"  {_value(v)}," for v in value)
            out.append("]")
        else:
            out.append(f"{_key(key)} = {_value(value)}")
    return out
