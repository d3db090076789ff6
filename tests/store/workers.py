"""Child processes for the store tests: ``python -m tests.store.workers ...``.

``ingest URL BATCH_SIZE``: ingest numbered batches until killed, printing each
batch number once its ingest returned (i.e. committed).

``claim URL SPEC_JSON``: open the store, print ``ready``, wait for a line on
stdin, then claim the query ids of the spec and print the outcomes as JSON.
"""

from __future__ import annotations

import json
import sys

from creditnet.store import Store
from tests.store.factories import SOON, batch


def ingest_until_killed(url: str, size: int) -> None:
    store = Store.open(url)
    n = 0
    while True:
        store.ingest(batch(f"b{n:06d}", size), "provider:crash")
        print(n, flush=True)
        n += 1


def claim(url: str, spec: str) -> None:
    claims = json.loads(spec)
    store = Store.open(url)
    print("ready", flush=True)
    sys.stdin.readline()
    outcomes = {
        c["query_id"]: store.claim_query(c["query_id"], bytes.fromhex(c["digest"]), c["max_uses"], SOON).value
        for c in claims
    }
    store.close()
    print(json.dumps(outcomes), flush=True)


if __name__ == "__main__":
    command, url, arg = sys.argv[1:4]
    if command == "ingest":
        ingest_until_killed(url, int(arg))
    elif command == "claim":
        claim(url, arg)
    else:
        raise SystemExit(f"unknown command {command!r}")
