"""The selector picks the compiled core unless told not to, and a broken build cannot pass quietly."""

from __future__ import annotations

import os
import subprocess
import sys

import fare_core


def test_compiled_core_loaded_unless_twin_forced() -> None:
    if fare_core.NO_EXTENSIONS:
        assert fare_core.IMPLEMENTATION == "python"
        assert fare_core.decide.__module__ == "fare_core._core_py"
    else:
        # A normal install must have built the extension; falling back silently would hide it.
        assert fare_core.IMPLEMENTATION == "cython", "compiled fare_core did not load: rebuild with pip"
        assert "cython" in fare_core.implementations()


def test_environment_variable_forces_twin() -> None:
    env = dict(os.environ, FARE_CORE_NO_EXTENSIONS="1")
    out = subprocess.run(
        [sys.executable, "-c", "import fare_core; print(fare_core.IMPLEMENTATION)"],
        env=env, capture_output=True, text=True, check=True,
    )
    assert out.stdout.strip() == "python"
