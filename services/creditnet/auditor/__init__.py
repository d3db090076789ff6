"""The auditor: checking the credit chain from the outside, trusting only the network CA.

* :mod:`.audit` — one node's whole log against its cosigned checkpoints (:func:`~.audit.audit`);
* :mod:`.checks` — the pure checks on downloaded entries and proofs;
* :mod:`.state` — the checkpoints verified on earlier runs, kept in a state file;
* :mod:`.evidence` — misbehaviour witnesses kept, and whether it is proven;
* :mod:`.remote` — what the auditor asks of nodes, witnesses and the aggregator;
* :mod:`.survey` — every node's latest checkpoint, the network checkpoint and all evidence;
* :mod:`.history` — an enterprise's own history: who asked about it, verified entry by entry.
"""

from __future__ import annotations

__all__: list[str] = []
