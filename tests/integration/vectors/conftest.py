"""The vector tests' table of generated windows, indexed."""

from __future__ import annotations

import pytest

from tests.integration.pipeline import Stack
from tests.integration.vectors.support import generated, load_generated
from workers.signals import vector_index


@pytest.fixture()
def vectors3k(local_env):
    """3,000 generated windows, indexed by the lifecycle rule."""
    s = Stack(local_env)
    load_generated(s, generated(3000))
    with s.embed_conn() as conn:
        assert vector_index.ensure(conn, min_rows=1000).action == "built"
    yield s
    s.close()
