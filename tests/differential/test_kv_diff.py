"""The KV differential test: Basalt must answer a seeded random request stream exactly as a real
etcd 3.5.1 does (see kv_diff.py). Default: 6 seeds x 1000 requests; KV_DIFF_REQUESTS and
KV_DIFF_SEEDS (e.g. "1-50") make a longer soak."""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import kv_diff  # noqa: E402

REQUESTS_PER_SEED = int(os.environ.get("KV_DIFF_REQUESTS", "1000"))


def seeds():
    spec = os.environ.get("KV_DIFF_SEEDS", "1-6")
    first, _, last = spec.partition("-")
    return list(range(int(first), int(last or first) + 1))


@pytest.mark.parametrize("seed", seeds())
def test_basalt_answers_every_kv_request_like_etcd(seed):
    mismatch = kv_diff.run_seed(seed, REQUESTS_PER_SEED)
    assert mismatch is None, mismatch.report(REQUESTS_PER_SEED, "basalt")
