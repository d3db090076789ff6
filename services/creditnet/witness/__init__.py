"""Witnessing: a log's checkpoints cosigned only as consistent extensions, both sides of it.

* :mod:`.server` — the :class:`~.server.Witness` (what it cosigned of each log,
  the evidence it keeps) and its WitnessService gRPC servicer;
* :mod:`.link` — the client: a :class:`~.link.WitnessLink` a log asks for cosignatures;
* :mod:`.hedge` — which witnesses a round asks, and when a spare is asked;
* :mod:`.assignment` — a node's witnesses as the network directory assigns them.
"""

from __future__ import annotations

__all__: list[str] = []
