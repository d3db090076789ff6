"""A node process whose database was tampered with: the bank SDK catches every altered record.

Someone with the node's database file (an insider, a compromised host)
changes what a provider submitted while the node runs. The node answers as
usual, with its own valid signature; the bank's check of the record against
its provider's signed batch fails, and the section is INVALID with the reason.
"""

from __future__ import annotations

import sqlite3
import uuid

from creditnet.domain import Purpose
from creditnet.network import NetworkLayout
from creditnet.pki import CertificateAuthority, Role, TrustStore, issue_identity
from creditnet.provider import submit_records
from creditnet.v2 import records_pb2
from creditnet_bank import BankClient, SectionStatus
from creditnet_bank.verify import Section
from tests.faults.conftest import FaultNetwork, network_json
from tests.faults.ingest import CITY, batch, enterprise
from tests.integration.helpers import consent


async def _section(layout: NetworkLayout, uscc: str) -> Section:
    ca = CertificateAuthority.load(layout.root / "pki")
    env = consent(layout, enterprise=issue_identity(ca, Role.enterprise(uscc)), uscc=uscc, cities=(CITY,))
    async with BankClient.from_network(network_json(layout)) as bank:
        report = await bank.query(uscc, env, Purpose.LOAN_APPLICATION)
    (section,) = [s for s in report.sections if s.city == CITY]
    return section


async def test_a_record_altered_in_a_running_nodes_database_makes_its_answer_invalid_at_the_bank(
    network: FaultNetwork, fault_layout: NetworkLayout, fault_trust: TrustStore
) -> None:
    run = uuid.uuid4().hex[:8]
    uscc = enterprise(run)
    recs = batch(run, 0, uscc)
    endpoint = fault_layout.node_endpoint(CITY)
    await submit_records(endpoint, fault_layout.provider(CITY), fault_trust, recs)
    honest = await _section(fault_layout, uscc)
    assert honest.status is SectionStatus.OK and len(honest.records) == len(recs), honest.reason

    # The amount paid of one bill, lowered in the node's SQLite file behind its back.
    db = sqlite3.connect(fault_layout.node_config(CITY).parent / "node.db", timeout=30)
    try:
        target = recs[7].record_id
        (payload,) = db.execute("SELECT payload FROM records WHERE record_id = ?", (target,)).fetchone()
        rec = records_pb2.CreditRecord.FromString(payload)
        rec.utility.amount_paid_fen = 1
        with db:
            db.execute(
                "UPDATE records SET payload = ? WHERE record_id = ?", (rec.SerializeToString(), target)
            )
    finally:
        db.close()

    section = await _section(fault_layout, uscc)
    assert section.status is SectionStatus.INVALID
    assert "not in its provider's signed batch" in section.reason, section.reason
    assert not section.records
