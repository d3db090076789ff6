"""A writer killed mid-way leaves whole batches: every acknowledged one, no part of another."""

from __future__ import annotations

import collections
import datetime as dt
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from creditnet.domain import Category
from creditnet.store import Store
from tests.store.factories import USCC_A

REPO = Path(__file__).resolve().parents[2]
BATCH = 400
ACKNOWLEDGED_BEFORE_KILL = 6


def test_sigkilled_ingester_leaves_only_whole_batches(migrated_url: str) -> None:
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.store.workers", "ingest", migrated_url, str(BATCH)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    acknowledged: list[int] = []
    try:
        assert child.stdout is not None
        while len(acknowledged) < ACKNOWLEDGED_BEFORE_KILL:
            line = child.stdout.readline()
            if not line:
                assert child.stderr is not None
                pytest.fail(f"the ingesting child died on its own: {child.stderr.read()}")
            acknowledged.append(int(line))
    finally:
        # The child is busy with its next batch: killed in the middle of it.
        child.send_signal(signal.SIGKILL)
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
        if child.stderr is not None:
            child.stderr.close()
    assert child.returncode == -signal.SIGKILL

    store = Store.open(migrated_url)
    try:
        found = store.find_records(USCC_A, [Category.UTILITY], dt.date(1900, 1, 1), dt.date(2999, 1, 1))
    finally:
        store.close()
    per_batch = collections.Counter(int(r.record_id[1:7]) for r in found)
    assert acknowledged == list(range(ACKNOWLEDGED_BEFORE_KILL))
    # Every acknowledged batch is there; batches that committed after the
    # last acknowledgement we read may be too. Each of them whole.
    assert set(acknowledged) <= set(per_batch)
    assert sorted(per_batch) == list(range(len(per_batch)))
    assert set(per_batch.values()) == {BATCH}
