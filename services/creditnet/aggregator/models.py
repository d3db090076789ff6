"""The aggregator's tables, kept in its database beside its witness state.

Created and changed by the store's migrations (revision 0006); these
classes must match them. What each table is for: the migration's docstring.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, Column, Integer, LargeBinary, String, Text
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel

from creditnet.store.models import UtcDateTime

__all__ = [
    "AGGREGATOR_METADATA",
    "CHECKPOINTS",
    "DELIVERIES",
    "HEAD",
    "REVOCATIONS",
    "AggregatorModel",
    "DeliveryRow",
    "NetworkCheckpointRow",
    "NetworkHeadRow",
    "RevocationRow",
]


class AggregatorModel(SQLModel, registry=registry()):
    pass


class NetworkHeadRow(AggregatorModel, table=True):
    __tablename__ = "network_head"

    id: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    sequence: int = Field(sa_column=Column(BigInteger, nullable=False))


class NetworkCheckpointRow(AggregatorModel, table=True):
    __tablename__ = "network_checkpoint"

    sequence: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    note: str = Field(sa_column=Column(Text, nullable=False))
    # JSON: every city's size, root, checkpoint note and log-key certificates.
    cities: str = Field(sa_column=Column(Text, nullable=False))
    signed_at: dt.datetime = Field(sa_column=Column(UtcDateTime, nullable=False))


class RevocationRow(AggregatorModel, table=True):
    __tablename__ = "aggregator_revocation"

    consent_digest: bytes = Field(sa_column=Column(LargeBinary, primary_key=True))
    # The RevokeConsentRequest every node gets (revocation and the consent it revokes).
    request: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    published_at: dt.datetime = Field(sa_column=Column(UtcDateTime, nullable=False))


class DeliveryRow(AggregatorModel, table=True):
    __tablename__ = "aggregator_revocation_delivery"

    consent_digest: bytes = Field(sa_column=Column(LargeBinary, primary_key=True))
    city: str = Field(sa_column=Column(String(6), primary_key=True))
    delivered_at: dt.datetime = Field(sa_column=Column(UtcDateTime, nullable=False))


AGGREGATOR_METADATA = AggregatorModel.metadata
HEAD = AGGREGATOR_METADATA.tables[NetworkHeadRow.__tablename__]
CHECKPOINTS = AGGREGATOR_METADATA.tables[NetworkCheckpointRow.__tablename__]
REVOCATIONS = AGGREGATOR_METADATA.tables[RevocationRow.__tablename__]
DELIVERIES = AGGREGATOR_METADATA.tables[DeliveryRow.__tablename__]
