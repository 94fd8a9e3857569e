"""What the dashboard tests without a browser share: the sample store's app, and its data as a
page callback sees it (inside a request, through ``current_data``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dash
import pytest

from sohuprof.dashboards.app import create_app, current_data

SAMPLE = Path(__file__).resolve().parents[1] / "sample_traces" / "mixtral-2node" / "store"


@contextmanager
def page_data(app: dash.Dash) -> Iterator[Any]:
    """``app``'s :class:`~sohuprof.dashboards.data.DashboardData`, inside a request as callbacks run."""
    with app.server.test_request_context("/"):
        yield current_data()


@pytest.fixture(scope="module")
def app() -> dash.Dash:
    """The dashboard over the sample store (one per test module)."""
    return create_app(SAMPLE)


@pytest.fixture
def data(app: dash.Dash) -> Iterator[Any]:
    """The sample app's data, inside a request."""
    with page_data(app) as d:
        yield d
