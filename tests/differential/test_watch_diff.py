"""The Watch differential test: every scripted watch session (historical watches, filters and
prev_kv, compaction before and during a watch, control requests, progress notifications) must
give Basalt's streams exactly the responses etcd 3.5.1's give (see watch_diff.py)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import watch_diff  # noqa: E402


@pytest.mark.parametrize("scenario", watch_diff.SCENARIOS, ids=lambda s: s.__name__)
def test_basalt_watch_streams_match_etcd(scenario):
    difference = watch_diff.first_difference(scenario)
    assert difference is None, difference
