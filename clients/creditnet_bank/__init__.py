"""The bank's SDK for the creditnet network.

async with BankClient.from_files(aggregator=..., cert=..., key=..., ca=...) as bank:
    report = await bank.query(uscc, consent=path, purpose="loan_application")
"""

from creditnet_bank.client import BankClient, DirectoryRefused, QueryRefused
from creditnet_bank.directory import BankDirectory, DirectorySettings
from creditnet_bank.report import Indicators, Report
from creditnet_bank.verify import Section, SectionStatus

__all__ = [
    "BankClient",
    "BankDirectory",
    "DirectoryRefused",
    "DirectorySettings",
    "Indicators",
    "QueryRefused",
    "Report",
    "Section",
    "SectionStatus",
]
