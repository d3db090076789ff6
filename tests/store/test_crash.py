"""A writer killed mid-way leaves whole batches: every acknowledged one, no
part of another; and every acknowledged answer's claim, entry and kept answer,
with no claim that lacks its entry."""

from __future__ import annotations

import collections
import datetime as dt
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from creditnet.chain.merkle import leaf_hash, root_from_leaves
from creditnet.domain import Category
from creditnet.ledger.sqlstore import SqlLog
from creditnet.store import Store
from creditnet.store.models import CHAIN_ENTRIES, CHAIN_META, QUERY_USES
from creditnet.v2 import chain_pb2
from tests.store.factories import USCC_A
from tests.store.workers import ANSWER_CONSENT

REPO = Path(__file__).resolve().parents[2]
BATCH = 400
ACKNOWLEDGED_BEFORE_KILL = 6


def _kill_after(args: list[str], acknowledgements: int, what: str) -> list[str]:
    """Run `tests.store.workers` with `args`, read `acknowledgements` lines it
    printed (each one acknowledged work), then SIGKILL it in the middle of the next."""
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.store.workers", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    acknowledged: list[str] = []
    try:
        assert child.stdout is not None
        while len(acknowledged) < acknowledgements:
            line = child.stdout.readline()
            if not line:
                assert child.stderr is not None
                pytest.fail(f"the {what} child died on its own: {child.stderr.read()}")
            acknowledged.append(line.strip())
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
        if child.stderr is not None:
            child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    return acknowledged


def test_sigkilled_ingester_leaves_only_whole_batches(migrated_url: str) -> None:
    # Killed while busy with its next batch.
    acknowledged = [
        int(n)
        for n in _kill_after(["ingest", migrated_url, str(BATCH)], ACKNOWLEDGED_BEFORE_KILL, "ingesting")
    ]

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


ANSWERS_BEFORE_KILL = 300


def test_sigkilled_node_writer_leaves_every_acknowledged_answer_and_no_claim_without_its_entry(
    migrated_url: str,
) -> None:
    # Killed while queries are being claimed and logged.
    acknowledged = _kill_after(["answer", migrated_url, "16"], ANSWERS_BEFORE_KILL, "answering")

    store = Store.open(migrated_url)
    try:
        with store.engine.connect() as conn:
            size = conn.execute(select(CHAIN_META.c.size)).scalar_one()
            entries = conn.execute(select(func.count()).select_from(CHAIN_ENTRIES)).scalar_one()
            claims = {
                r.query_id: (r.answer, r.ledger_index)
                for r in conn.execute(
                    select(QUERY_USES.c.query_id, QUERY_USES.c.answer, QUERY_USES.c.ledger_index)
                )
            }
        logged = dict(SqlLog(store).entries(0, size))
        tree = SqlLog(store).tree
        assert tree.size == size
        assert tree.root() == root_from_leaves([leaf_hash(e) for _, e in sorted(logged.items())])
        uses = store.consent_uses(ANSWER_CONSENT)
    finally:
        store.close()
    # Every acknowledged answer is on disk: claim, kept answer and entry.
    assert set(acknowledged) <= set(claims)
    # No claim without its entry, no entry without its claim, one use each.
    assert entries == size == len(claims) == uses
    for query_id, (answer, index) in claims.items():
        assert answer == b"answer " + query_id.encode()
        assert chain_pb2.LedgerEntry.FromString(logged[index]).query_id == query_id
