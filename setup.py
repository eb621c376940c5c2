"""Build the compiled half of fare_core.

Metadata lives in pyproject.toml; this file only declares the Cython extensions. Every module listed
here has a pure-Python twin (`<name>_py.py`) that fare_core/__init__.py falls back to, or that
FARE_CORE_NO_EXTENSIONS=1 forces.
"""

from Cython.Build import cythonize
from setuptools import Extension, setup

EXTENSION_MODULES = ["fare_core._denylist", "fare_core._core"]

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
