"""Issue 11: no two classes share the name `Message` (the serial protocol's message is the only one; the
backend's received MQTT message is a `Delivery`)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fare_core", "protocol", "firmware_sim", "gate", "backend", "faregate")


def _classes_named(name: str) -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ClassDef) and node.name == name:
                    found.append(str(path.relative_to(ROOT)))
    return found


def test_only_one_class_is_named_message() -> None:
    assert _classes_named("Message") == ["protocol/serial/messages.py"]
    assert _classes_named("Delivery") == ["backend/mqtt.py"]
