"""The pilot network: the five cities `creditnet network up` starts by default.

The Yangtze River Delta pilot began with Shanghai, Nanjing, Hangzhou, Hefei
and Jiaxing. This list is a launcher's default and the cities the demo and
the synthetic data describe; no server, client or protocol rule consults it.
Which cities are members of a running network is what its signed directory
says (docs/directory.md).
"""

from __future__ import annotations

from typing import Final

from creditnet.domain import City

__all__ = [
    "CITIES",
    "HANGZHOU",
    "HEFEI",
    "JIAXING",
    "NANJING",
    "SHANGHAI",
]

SHANGHAI: Final = City("310000")
NANJING: Final = City("320100")
HANGZHOU: Final = City("330100")
HEFEI: Final = City("340100")
JIAXING: Final = City("330400")

# In code order, the order of every list of cities on the wire.
CITIES: Final[tuple[City, ...]] = tuple(sorted((SHANGHAI, NANJING, HANGZHOU, HEFEI, JIAXING)))
