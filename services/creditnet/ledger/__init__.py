"""A city node's credit-chain log: what the node writes, signs and serves.

* :mod:`.log` — the :class:`~.log.Ledger`: appends through the store's one
  writer, checkpoint signing and the (pipelined) witness rounds, receipts;
* :mod:`.sqlstore` — the log's state in the node's database (entries, the
  tree's hashes, kept answers), under the store's schema;
* :mod:`.service` — the ChainService gRPC servicer: checkpoints, entries,
  proofs and an enterprise's own history, served from the log.
"""

from __future__ import annotations

__all__: list[str] = []
