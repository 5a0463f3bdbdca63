"""Browser tests run last: after the unit tests and the notebooks, in the same session."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A stable sort keeps the collection order within each group.
    items.sort(key=lambda item: item.get_closest_marker("browser") is not None)
