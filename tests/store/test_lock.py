"""One node process per database: the writer lock a serving node holds."""

from __future__ import annotations

import pytest

from creditnet.store.lock import DatabaseInUse, WriterLock


def test_a_second_writer_lock_on_one_database_is_refused_until_the_first_is_released(db_url: str) -> None:
    first = WriterLock.acquire(db_url, "340100")
    try:
        with pytest.raises(
            DatabaseInUse, match=r"^store\.in_use: .* already served by creditnet node 340100 pid"
        ):
            WriterLock.acquire(db_url, "340100")
    finally:
        first.release()
    WriterLock.acquire(db_url, "340100").release()
