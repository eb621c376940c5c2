"""Where a value of a rules file is written: a location path such as ("leg_rules", 0, "steps", 1, "add_fen")
mapped to the line and column (both from 1) of its key, or of its element in an array.

Why a small scanner of our own rather than a parser: tomllib (the one the rules are read with) keeps no
positions, and tomlkit, the well-kept TOML library that preserves a document model, keeps formatting
(trivia, whitespace) but no offsets either: positions would have to be re-derived by rendering the
document back piece by piece, and it would be one more runtime dependency for the gates. json keeps no
positions for values either. The scanner below runs only on text the real parser has already accepted,
so it needs no error handling of its own beyond never failing: anything it does not understand ends the
scan, and a path it has not seen is located at its deepest ancestor that it has (a missing key is
reported where its table is written).
"""

from __future__ import annotations

import bisect
import contextlib
import re
from typing import Literal

Path = tuple[str | int, ...]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_SCALAR_END = re.compile(r"[,\]}#\n]")
_JSON_SCALAR = re.compile(r"-?[0-9][0-9eE.+-]*|true|false|null|-?Infinity|NaN")


class SourceMap:
    """Positions of the keys and elements of one rules text."""

    def __init__(self, text: str, fmt: Literal["toml", "json"]) -> None:
        self._line_starts = [0] + [i + 1 for i, char in enumerate(text) if char == "\n"]
        self._offsets: dict[Path, int] = {}
        scanner = _TomlScanner(text, self._offsets) if fmt == "toml" else _JsonScanner(text, self._offsets)
        # keep what was found: the text is valid (the parser said so), the scanner merely simpler
        with contextlib.suppress(IndexError, ValueError):
            scanner.scan()

    def position(self, path: Path) -> tuple[int, int] | None:
        """(line, column) of the path, else of its deepest written ancestor; None for the file as a whole."""
        for end in range(len(path), 0, -1):
            offset = self._offsets.get(tuple(path[:end]))
            if offset is not None:
                line = bisect.bisect_right(self._line_starts, offset)
                return line, offset - self._line_starts[line - 1] + 1
        return None


class _Scanner:
    def __init__(self, text: str, offsets: dict[Path, int]) -> None:
        self.text = text
        self.i = 0
        self.offsets = offsets

    def mark(self, path: Path, offset: int) -> None:
        self.offsets.setdefault(path, offset)

    def peek(self) -> str:
        return self.text[self.i] if self.i < len(self.text) else ""

    def expect(self, char: str) -> None:
        if self.peek() != char:
            raise ValueError(f"expected {char!r} at {self.i}")
        self.i += 1

    def basic_string(self, quote: str) -> str:
        """A string in `quote`s (escapes honoured for '"'); returns its raw content."""
        start = self.i + 1
        self.i = start
        while self.text[self.i] != quote:
            self.i += 2 if (quote == '"' and self.text[self.i] == "\\") else 1
        value = self.text[start:self.i]
        self.i += 1
        return _unescape(value) if quote == '"' else value


def _unescape(value: str) -> str:
    if "\\" not in value:
        return value
    import json

    try:
        return str(json.loads(f'"{value}"'))
    except ValueError:
        return value


class _TomlScanner(_Scanner):
    """Tables, arrays of tables, dotted keys, inline tables and arrays; strings of all four kinds."""

    def __init__(self, text: str, offsets: dict[Path, int]) -> None:
        super().__init__(text, offsets)
        self.counts: dict[Path, int] = {}  # array of tables -> elements so far

    def scan(self) -> None:
        table: Path = ()
        while self.i < len(self.text):
            self.space(newlines=True)
            char = self.peek()
            if not char:
                return
            if char == "[":
                table = self.header()
            else:
                self.key_value(table)
            self.space(newlines=False)
            if self.peek() == "\n":
                self.i += 1

    def space(self, newlines: bool) -> None:
        while self.i < len(self.text):
            char = self.text[self.i]
            if char in " \t\r" or (newlines and char == "\n"):
                self.i += 1
            elif char == "#":
                end = self.text.find("\n", self.i)
                self.i = len(self.text) if end < 0 else end
            else:
                return

    def keys(self) -> list[str]:
        keys = []
        while True:
            self.space(newlines=False)
            char = self.peek()
            if char in ('"', "'"):
                keys.append(self.basic_string(char))
            else:
                match = _BARE_KEY.match(self.text, self.i)
                if match is None:
                    raise ValueError(f"no key at {self.i}")
                keys.append(match[0])
                self.i = match.end()
            self.space(newlines=False)
            if self.peek() != ".":
                return keys
            self.i += 1

    def resolve(self, keys: list[str]) -> Path:
        """A header's keys as a path: an array of tables on the way means its latest element."""
        path: Path = ()
        for key in keys:
            path = (*path, key)
            if path in self.counts:
                path = (*path, self.counts[path] - 1)
        return path

    def header(self) -> Path:
        start = self.i
        array = self.text.startswith("[[", self.i)
        self.i += 2 if array else 1
        keys = self.keys()
        self.i += 2 if array else 1
        if array:
            parent = self.resolve(keys[:-1])
            base = (*parent, keys[-1])
            index = self.counts.get(base, 0)
            self.counts[base] = index + 1
            self.mark(base, start)
            path: Path = (*base, index)
        else:
            path = self.resolve(keys)
        self.mark(path, start)
        return path

    def key_value(self, table: Path) -> None:
        start = self.i
        keys = self.keys()
        for end in range(1, len(keys) + 1):
            self.mark((*table, *keys[:end]), start)
        self.expect("=")
        self.space(newlines=False)
        self.value((*table, *keys))

    def value(self, path: Path) -> None:
        char = self.peek()
        if char == "{":
            self.i += 1
            while True:
                self.space(newlines=True)
                if self.peek() == "}":
                    self.i += 1
                    return
                self.key_value(path)
                self.space(newlines=True)
                if self.peek() == ",":
                    self.i += 1
        elif char == "[":
            self.i += 1
            index = 0
            while True:
                self.space(newlines=True)
                if self.peek() == "]":
                    self.i += 1
                    return
                self.mark((*path, index), self.i)
                self.value((*path, index))
                index += 1
                self.space(newlines=True)
                if self.peek() == ",":
                    self.i += 1
        elif self.text.startswith(('"""', "'''"), self.i):
            quote = self.text[self.i:self.i + 3]
            end = self.text.index(quote, self.i + 3)
            while self.text.startswith(quote[0], end + 3):  # up to two quotes may close the content
                end += 1
            self.i = end + 3
        elif char in ('"', "'"):
            self.basic_string(char)
        else:
            match = _SCALAR_END.search(self.text, self.i)
            self.i = len(self.text) if match is None else match.start()


class _JsonScanner(_Scanner):
    def scan(self) -> None:
        self.value(())

    def space(self) -> None:
        while self.peek() in (" ", "\t", "\r", "\n") and self.peek():
            self.i += 1

    def value(self, path: Path) -> None:
        self.space()
        char = self.peek()
        if char == "{":
            self.i += 1
            while True:
                self.space()
                if self.peek() == "}":
                    self.i += 1
                    return
                start = self.i
                key = self.basic_string('"')
                self.mark((*path, key), start)
                self.space()
                self.expect(":")
                self.value((*path, key))
                self.space()
                if self.peek() == ",":
                    self.i += 1
        elif char == "[":
            self.i += 1
            index = 0
            while True:
                self.space()
                if self.peek() == "]":
                    self.i += 1
                    return
                self.mark((*path, index), self.i)
                self.value((*path, index))
                index += 1
                self.space()
                if self.peek() == ",":
                    self.i += 1
        elif char == '"':
            self.basic_string('"')
        else:
            match = _JSON_SCALAR.match(self.text, self.i)
            if match is None:
                raise ValueError(f"no value at {self.i}")
            self.i = match.end()
