"""Issue 11's targets: the ratios ``make bench`` computes from one run, and whether each is met.

How each headline figure is computed from `creditnet_devkit.bench.throughput`'s
results (``best``: the level of a sweep with the highest throughput):

- ``node_vs_echo``: best node rate / best echo rate, each at its own saturation;
- ``chain_cost``: 1 - best node rate / best rate of the same node without its chain;
- ``federated_p99_vs_single``: federated p99 / one node's p99, both with 16
  callers in flight (closed loop, the same number of callers on both);
- ``federated_vs_fanout``: best federated rate / best rate of the crypto-free
  fan-out to five echo servers;
- ``federated_p50_unloaded_ms``: federated p50 one query at a time, in ms;
- ``ingest_vs_raw``: store ingestion of provider-signed batches / raw
  ``sqlite3.executemany`` of the same rows (`creditnet_devkit.bench.ingest`).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from creditnet_devkit.bench.throughput import best

__all__ = [
    "TARGETS",
    "Target",
    "check",
    "headline",
    "show",
]


@dataclass(frozen=True, slots=True)
class Target:
    key: str
    what: str
    op: Literal[">=", "<="]
    bound: float
    # How a value is printed: "%" (a fraction), "x" (a ratio) or "ms".
    unit: Literal["%", "x", "ms"]

    def met(self, value: float) -> bool:
        compare: Callable[[float, float], bool] = operator.ge if self.op == ">=" else operator.le
        return compare(value, self.bound)

    def show(self, value: float) -> str:
        if self.unit == "%":
            return f"{value:.1%}"
        if self.unit == "x":
            return f"{value:.2f}x"
        return f"{value:.1f} ms"


TARGETS: Final = (
    Target("node_vs_echo", "node signed queries vs bare mTLS echo, each at saturation", ">=", 0.15, "%"),
    Target("chain_cost", "throughput the credit chain costs, at saturation", "<=", 0.25, "%"),
    Target("federated_p99_vs_single", "federated p99 vs one node's, 16 in flight", "<=", 2.0, "x"),
    Target(
        "federated_vs_fanout", "federated vs crypto-free fan-out to 5 echoes, at saturation", ">=", 0.35, "%"
    ),
    Target("federated_p50_unloaded_ms", "unloaded federated p50", "<=", 25.0, "ms"),
    Target("ingest_vs_raw", "store ingest vs raw sqlite3 executemany", ">=", 0.70, "%"),
)


def headline(r: Mapping[str, Any]) -> dict[str, float]:
    """The figures issue 11 sets targets for (see the module doc for each)."""
    return {
        "node_vs_echo": best(r["node"])["per_second"] / best(r["echo"])["per_second"],
        "chain_cost": 1 - best(r["node"])["per_second"] / best(r["node_without_chain"])["per_second"],
        "federated_p99_vs_single": r["federated_16"]["p99_ms"] / r["node_16"]["p99_ms"],
        "federated_vs_fanout": best(r["federated"])["per_second"] / best(r["fanout"])["per_second"],
        "federated_p50_unloaded_ms": r["federated_unloaded"]["p50_ms"],
        "ingest_vs_raw": r["ingest"]["store_ingest_per_second"] / r["ingest"]["raw_executemany_per_second"],
    }


def check(values: Mapping[str, float]) -> dict[str, dict[str, Any]]:
    """Each target with its bound, the measured value and whether it is met."""
    return {
        t.key: {
            "what": t.what,
            "target": f"{t.op} {t.bound:g}",
            "op": t.op,
            "bound": t.bound,
            "value": values[t.key],
            "met": t.met(values[t.key]),
            "status": "met" if t.met(values[t.key]) else "missed",
        }
        for t in TARGETS
    }


def show(values: Mapping[str, float]) -> None:
    """The table of targets: each measure, its target, met or missed."""
    print("issue 11 targets (ratios within this run)")
    print(f"  {'measure':<62}{'value':>10}  {'target':>10}  status")
    for t in TARGETS:
        value = values[t.key]
        bound = t.show(t.bound)
        op = "≥" if t.op == ">=" else "≤"
        status = "met" if t.met(value) else "MISSED"
        print(f"  {t.what:<62}{t.show(value):>10}  {op + ' ' + bound:>10}  {status}")
