"""Fixtures shared by every test folder.

`core` runs a test once per fare_core implementation (compiled and pure-Python twin), the way
multidict's conftest does; with FARE_CORE_NO_EXTENSIONS set only the twin is offered.
"""

from __future__ import annotations

from types import ModuleType

import pytest

import fare_core

_IMPLEMENTATIONS = fare_core.implementations()
if fare_core.NO_EXTENSIONS:
    _IMPLEMENTATIONS = {"python": _IMPLEMENTATIONS["python"]}


class Impl:
    """One implementation: the core module and the deny-list module side by side."""

    def __init__(self, name: str, core: ModuleType, denylist: ModuleType) -> None:
        self.name = name
        self.core = core
        self.denylist = denylist

    def __repr__(self) -> str:
        return f"Impl({self.name})"


@pytest.fixture(params=sorted(_IMPLEMENTATIONS), ids=lambda name: name)
def impl(request: pytest.FixtureRequest) -> Impl:
    core, denylist = _IMPLEMENTATIONS[request.param]
    return Impl(request.param, core, denylist)
