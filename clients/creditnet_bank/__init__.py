"""The bank's SDK for the creditnet network.

async with BankClient.from_files(aggregator=..., cert=..., key=..., ca=...) as bank:
    report = await bank.query(uscc, consent=path, purpose="loan_application")

Every exception the SDK raises on purpose derives from `Error` (`creditnet.errors.Error`):
`QueryRefused` when the aggregator refuses the query as a whole, `DirectoryRefused` (a
`QueryRefused`) when the bank's own directory stops it before anything is sent,
`AnswerInvalid` when the answer as a whole does not verify.
"""

from creditnet.errors import Error
from creditnet_bank.client import BankClient, DirectoryRefused, QueryRefused
from creditnet_bank.directory import BankDirectory, DirectorySettings
from creditnet_bank.report import Indicators, Report
from creditnet_bank.verify import AnswerInvalid, Section, SectionStatus

__all__ = [
    "AnswerInvalid",
    "BankClient",
    "BankDirectory",
    "DirectoryRefused",
    "DirectorySettings",
    "Error",
    "Indicators",
    "QueryRefused",
    "Report",
    "Section",
    "SectionStatus",
]
