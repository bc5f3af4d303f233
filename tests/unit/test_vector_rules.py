"""The ivfflat lifecycle's rules (workers/signals/vector_index.py): lists and probes."""

from __future__ import annotations

import math

from workers.signals import vector_index


def test_lists_are_sqrt_rows_at_every_size():
    assert vector_index.lists_for(0) == 1 and vector_index.lists_for(500) == 22
    assert vector_index.lists_for(10_000) == 100
    assert vector_index.lists_for(100_000) == 316  # rows/1000 would give 100
    assert vector_index.lists_for(1_000_000) == 1000
    assert vector_index.lists_for(4_000_000) == 2000


def test_probes_grow_with_the_log_of_lists():
    assert vector_index.probes_for(1) == 1 and vector_index.probes_for(2) == 2
    assert [vector_index.probes_for(n) for n in (100, 316, 1000, 2000)] == [13, 16, 19, 21]
    sizes = range(1, 5000)
    probes = [vector_index.probes_for(n) for n in sizes]
    assert all(1 <= p <= n for p, n in zip(probes, sizes, strict=True))
    assert probes == sorted(probes)  # more lists never means fewer probes
    assert vector_index.probes_for(1000) < math.sqrt(1000)  # pgvector's sqrt over-probes
