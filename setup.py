"""Build the compiled half of fare_core.

Metadata lives in pyproject.toml; this file only declares the Cython extensions. Every module listed
here has a pure-Python twin (`<name>_py.py`) that fare_core/__init__.py falls back to, or that
FARE_CORE_NO_EXTENSIONS=1 forces.

Before cythonizing it writes fare_core/_codes.pxi (git-ignored) from reasons.py and record.py, which
_core.pyx includes: the Python definitions stay the one place each shared code is written.
"""

import importlib
import sys
import types
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

EXTENSION_MODULES = ["fare_core._denylist", "fare_core._core"]
PACKAGE_DIR = Path(__file__).resolve().parent / "fare_core"


def write_codes_pxi():
    """Run fare_core._codes.write_pxi() without executing fare_core/__init__.py, which would load the
    very extensions being rebuilt (or fail in an isolated build environment): a bare package module
    stands in for fare_core while the generator and its two imports load, then is removed again."""
    saved = {name: module for name, module in sys.modules.items()
             if name == "fare_core" or name.startswith("fare_core.")}
    for name in saved:
        del sys.modules[name]
    stub = types.ModuleType("fare_core")
    stub.__path__ = [str(PACKAGE_DIR)]
    sys.modules["fare_core"] = stub
    try:
        importlib.import_module("fare_core._codes").write_pxi()
    finally:
        for name in [name for name in sys.modules if name == "fare_core" or name.startswith("fare_core.")]:
            del sys.modules[name]
        sys.modules.update(saved)


write_codes_pxi()

extensions = [
    Extension(
        name,
        [name.replace(".", "/") + ".pyx"],
        extra_compile_args=["-O3"],
    )
    for name in EXTENSION_MODULES
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
            "embedsignature": True,
        },
    ),
)
