"""A node's witnesses as the network directory assigns them.

The directory names, for each log, the witnesses that cosign it and how many
must (docs/directory.md, "Witness assignment"): a node's witnessing load
does not grow with the number of cities. A node holding a directory asks the
witnesses its log is assigned, reached at the endpoints and TLS names the
directory gives, and re-reads the assignment at every witnessing round, so an
admission or a removal takes effect without a restart. Links are kept across
directory versions while a witness's endpoint and name stay the same, so
their health (witness.hedge) survives a new version.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from creditnet.directory.model import Directory
from creditnet.pki import Identity, TrustStore
from creditnet.witness.link import WitnessLink

__all__ = [
    "AssignedWitnesses",
]

log = logging.getLogger(__name__)


class AssignedWitnesses:
    """The witness links and quorum of log `own` under the newest directory `current()` returns.

    Without a directory, or with no assignment for the log, the configured
    witnesses and quorum apply (logged once per version).
    """

    def __init__(
        self,
        own: str,
        current: Callable[[], Directory | None],
        identity: Identity,
        trust: TrustStore,
        fallback: tuple[list[WitnessLink], int],
    ) -> None:
        self.own = own
        self._current = current
        self._identity = identity
        self._trust = trust
        self._fallback = fallback
        self._version: int | None = None
        self._links: dict[tuple[str, str, str], WitnessLink] = {}
        self._chosen: tuple[list[WitnessLink], int] = fallback

    def __call__(self) -> tuple[list[WitnessLink], int]:
        directory = self._current()
        if directory is None:
            return self._fallback
        if directory.version == self._version:
            return self._chosen
        self._version = directory.version
        assignment = directory.witnesses_of(self.own)
        if assignment is None:
            log.warning(
                "directory v%d assigns no witnesses to %s; using the configured ones",
                directory.version,
                self.own,
            )
            self._chosen = self._fallback
            return self._chosen
        links: dict[tuple[str, str, str], WitnessLink] = {}
        for name in assignment.witnesses:
            reach = directory.reach(name)
            if reach is None or not reach[0]:
                continue  # the directory's own rules make this impossible; skip rather than guess
            endpoints, server_name = reach
            key = (name, endpoints[0], server_name)
            links[key] = self._links.get(key) or WitnessLink.connect(
                name, endpoints[0], self._identity, self._trust, server_name
            )
        for key, dropped in self._links.items():
            if key not in links and dropped not in self._fallback[0]:
                _close_later(dropped)
        self._links = links
        self._chosen = (list(links.values()), assignment.quorum)
        log.info(
            "log %s: witnesses %s, quorum %d (directory v%d)",
            self.own,
            ", ".join(k[0] for k in links),
            assignment.quorum,
            directory.version,
        )
        return self._chosen


def _close_later(link: WitnessLink) -> None:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    task = loop.create_task(link.channel.close())
    task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)
