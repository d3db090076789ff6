"""Child processes for the store tests: ``python -m tests.store.workers ...``.

``ingest URL BATCH_SIZE``: ingest numbered batches until killed, printing each
batch number once its ingest returned (i.e. committed).

``claim URL SPEC_JSON``: open the store, print ``ready``, wait for a line on
stdin, then claim the query ids of the spec and print the outcomes as JSON.

``answer URL CONCURRENCY``: answer numbered queries as a node does (claim,
credit-chain entry and kept answer in one append), CONCURRENCY at a time,
until killed, printing each query id once its append returned.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import sys

from creditnet.chain.keys import LogKey
from creditnet.ledger.log import Ledger
from creditnet.ledger.sqlstore import KeptQueryAnswer
from creditnet.pki import CertificateAuthority
from creditnet.store import AsyncStore, QueryClaim, Store
from creditnet.v2 import chain_pb2
from tests.store.factories import SOON, USCC_A, batch

ANSWER_CONSENT = b"\x09" * 32


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


async def answer_until_killed(url: str, concurrency: int) -> None:
    store = await AsyncStore.open(url)
    key = LogKey.issue(CertificateAuthority.create(), "340100")
    ledger = await asyncio.to_thread(Ledger, store, key, quorum=0)
    numbers = itertools.count()

    async def answering() -> None:
        for n in numbers:
            query_id = f"q{n:07d}"
            query_digest = hashlib.sha256(query_id.encode()).digest()
            entry = chain_pb2.LedgerEntry(
                kind=chain_pb2.ENTRY_KIND_QUERY_ANSWERED, query_id=query_id, query_digest=query_digest
            )
            await ledger.append(
                entry,
                USCC_A,
                answer=KeptQueryAnswer(query_id, query_digest, b"answer " + query_id.encode()),
                claim=QueryClaim(query_id, ANSWER_CONSENT, 0, SOON, query_digest),
            )
            print(query_id, flush=True)

    await asyncio.gather(*(answering() for _ in range(concurrency)))


if __name__ == "__main__":
    command, url, arg = sys.argv[1:4]
    if command == "ingest":
        ingest_until_killed(url, int(arg))
    elif command == "claim":
        claim(url, arg)
    elif command == "answer":
        asyncio.run(answer_until_killed(url, int(arg)))
    else:
        raise SystemExit(f"unknown command {command!r}")
