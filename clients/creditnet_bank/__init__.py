"""The bank's SDK for the creditnet network.

async with BankClient.from_files(aggregator=..., cert=..., key=..., ca=...) as bank:
    report = await bank.query(uscc, consent=path, purpose="loan_application")
"""

from creditnet_bank.client import BankClient, QueryRefused
from creditnet_bank.report import Indicators, Report
from creditnet_bank.verify import Section, SectionStatus

__all__ = ["BankClient", "Indicators", "QueryRefused", "Report", "Section", "SectionStatus"]
