"""The package's optional C extension (``rudder_fast/_speedups.c``) in tests.

Each of its loops has a Python twin that stays the reference and the fallback. :func:`both_ways` makes a
module-scoped fixture that runs a test twice (``@pytest.mark.usefixtures("way")``), once with the C
loop and once with the Python one, by swapping the module attribute the code looks the loop up in.
Where the extension is not built, the C half skips with the reason, unless
``RUDDER_FAST_REQUIRE_SPEEDUPS=1`` (``./scripts/test`` sets it): then it fails, so that a build that
silently lost the extension cannot pass.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest

ENV_REQUIRE_SPEEDUPS = "RUDDER_FAST_REQUIRE_SPEEDUPS"


def speedups_required() -> bool:
    return os.environ.get(ENV_REQUIRE_SPEEDUPS, "").lower() in ("1", "true", "yes")


def speedups() -> ModuleType:
    """The extension, or a skip (a failure where it is required) saying it is not built."""
    try:
        from rudder_fast import _speedups
    except ImportError as exc:
        reason = f"the C extension rudder_fast._speedups is not built ({exc})"
        if speedups_required():
            pytest.fail(
                f"{ENV_REQUIRE_SPEEDUPS} is set but {reason}: install gcc and the Python headers, then "
                "./scripts/bootstrap test (`.venv/bin/python -m pip install -v -e .` shows a compile error)",
                pytrace=False,
            )
        pytest.skip(reason)
    return _speedups


def both_ways(module: ModuleType, attribute: str) -> Callable[..., Iterator[str]]:
    """A module-scoped fixture, parametrised "c" and "python" (assign it to ``way`` in the test module):
    ``module.<attribute>`` is the C loop for the first, None (as without the extension) for the second,
    and restored after."""

    @pytest.fixture(scope="module", params=["c", "python"])
    def way(request: pytest.FixtureRequest) -> Iterator[str]:
        saved: Any = getattr(module, attribute)
        if request.param == "c":
            speedups()
            assert saved is not None, f"{module.__name__}.{attribute} is None though the extension is built"
        else:
            setattr(module, attribute, None)
        try:
            yield request.param
        finally:
            setattr(module, attribute, saved)

    return way
