"""One root for every exception the project defines: `creditnet.errors.Error`."""

from __future__ import annotations

import inspect

import pytest

import creditnet_bank
from creditnet.errors import CreditnetError, Error, InvalidArgument
from creditnet.uscc import InvalidUSCC
from tests.unit.modules import project_modules


def test_every_exception_defined_in_the_project_derives_from_the_root() -> None:
    found: list[type[BaseException]] = []
    for module in project_modules():
        for value in vars(module).values():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == module.__name__
            ):
                found.append(value)
    # The walk reaches the refusals, the chain's and the SDK's errors: finding none would prove nothing.
    names = {f"{c.__module__}.{c.__qualname__}" for c in found}
    assert {
        "creditnet.errors.CreditnetError",
        "creditnet.chain.merkle.ProofError",
        "creditnet_bank.client.QueryRefused",
    } <= names
    assert [c.__qualname__ for c in found if not issubclass(c, Error)] == []


def test_errors_that_were_builtins_still_are() -> None:
    # `except ValueError` around a USCC parse still catches a bad one.
    with pytest.raises(ValueError):
        raise InvalidUSCC("not a code")
    assert issubclass(InvalidArgument, CreditnetError)
    assert not issubclass(InvalidUSCC, CreditnetError)


def test_the_sdk_exports_its_errors_under_the_same_root() -> None:
    for name in ("Error", "QueryRefused", "DirectoryRefused", "AnswerInvalid"):
        assert name in creditnet_bank.__all__
        assert issubclass(getattr(creditnet_bank, name), Error)
    assert creditnet_bank.Error is Error
