"""The aggregator's tables, kept in its database beside its witness state,
under the aggregator's names.

They are declared, created and migrated by the store, which owns every
creditnet database's schema (creditnet.store.models; revision 0006 says what
each table is for).
"""

from __future__ import annotations

from creditnet.store.models import AGGREGATOR_DELIVERIES as DELIVERIES
from creditnet.store.models import AGGREGATOR_REVOCATIONS as REVOCATIONS
from creditnet.store.models import NETWORK_CHECKPOINTS as CHECKPOINTS
from creditnet.store.models import NETWORK_HEAD as HEAD

__all__ = ["CHECKPOINTS", "DELIVERIES", "HEAD", "REVOCATIONS"]
