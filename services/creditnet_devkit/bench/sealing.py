"""Sealed answers: seal + open time per suite, and their share of federated throughput.

``python -m creditnet_devkit.bench.sealing`` (``make bench-sealing``) runs it alone on a
small network; ``make bench`` runs it after the federated measurement and adds
it to its table and JSON.

Measured:
- **seal and open per answer, for each suite** (ML-KEM-768 + X25519, X25519),
  medians: sealing as the node does it (the answer parsed for its `discloses`
  flag, then HPKE single-shot seal) and opening as the bank does
  (`open_sealed`). The answers are real: the signed answers the demo
  enterprise's cities gave to one federated query, routed as the measured
  ones are (the largest is "demo"), and a "large" one — the demo answer's
  records repeated to `LARGE_RECORDS` records, signed by the same node key.
- **the sealing share of federated throughput.** Sealing is mandatory on the
  wire: no build of the network answers unsealed, and none is made for the
  benchmark. So the cost is not measured as a second throughput run; it is
  computed from the same run: the CPU seconds the server processes (every
  node, witness and the aggregator) spent per federated query, read from
  /proc during the 16-client federated run, against the CPU seconds that
  query's seals cost (each city's real answer of that query, sealed with the
  default suite, timed here). On this CPU-bound machine throughput without
  sealing would be the measured rate / (1 - share): that estimate is printed
  as such. The bank's opening is on the client, outside server throughput,
  and is given per federated query beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from creditnet import query as query_mod
from creditnet.channels import secure_channel
from creditnet.domain import City, Purpose
from creditnet.envelope import ANSWER_TYPE, digest, sign
from creditnet.network import NetworkLayout
from creditnet.pki import AGGREGATOR_SERVER_NAME, Identity, TrustStore
from creditnet.sealing import AnswerKey, AnswerKeyPair, AnswerSuite, open_sealed, parse_answer_key, seal
from creditnet.v2 import aggregator_pb2, aggregator_pb2_grpc, envelope_pb2, query_pb2

__all__ = [
    "bench_sealing",
    "cpu_seconds",
    "demo_answers",
    "large_answer",
    "main",
    "proof_cost_us",
    "seal_open",
    "show",
]

LARGE_RECORDS = 5000
# The federated target of issue 10: sealing and provider proofs together.
TARGET_SHARE = 0.15
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds of the processes `pids` so far (Linux /proc; children not included)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / _CLOCK_TICKS


async def demo_answers(
    layout: NetworkLayout, consent: envelope_pb2.SignedEnvelope
) -> list[envelope_pb2.SignedEnvelope]:
    """Every asked city's signed answer to one federated query about the demo enterprise, routed
    as the measured queries are (a city the aggregator does not ask seals nothing)."""
    bank = layout.bank()
    q = query_mod.build(
        bank, consent, enterprise_uscc=layout.demo_enterprise, purpose=Purpose.LOAN_APPLICATION
    )
    pair = query_mod.answer_key_for(q)
    assert pair is not None
    async with secure_channel(
        layout.aggregator_endpoint, bank, TrustStore.load(layout.ca), AGGREGATOR_SERVER_NAME
    ) as ch:
        resp = await aggregator_pb2_grpc.AggregatorServiceStub(ch).FederatedQuery(
            aggregator_pb2.FederatedQueryRequest(query=q), timeout=30
        )
    asked = [s for s in resp.sections if s.status != aggregator_pb2.SECTION_STATUS_NOT_ASKED]
    answers = [
        open_sealed(pair, s.sealed_answer, digest(q.payload), City.from_proto(s.city))
        for s in asked
        if s.HasField("sealed_answer")
    ]
    if len(answers) != len(asked):
        raise RuntimeError("the sample federated query had sections without an answer")
    return answers


def large_answer(
    layout: NetworkLayout, demo: envelope_pb2.SignedEnvelope, records: int
) -> envelope_pb2.SignedEnvelope:
    """The demo answer with its records repeated to `records`, signed by the same city's node key."""
    msg = query_pb2.CityAnswer.FromString(demo.payload)
    if not msg.proven_records:
        raise RuntimeError("the demo answer has no records to repeat")
    # Sealing cost depends on the answer's size, not on what the records
    # say: each proven record (bytes, batch, proof) is repeated as it is.
    base = list(msg.proven_records)
    while len(msg.proven_records) < records:
        msg.proven_records.add().CopyFrom(base[len(msg.proven_records) % len(base)])
    ident = layout.data["identities"]["nodes"][City.from_proto(msg.city).code]
    node = Identity.load(layout.path(ident["cert"]), layout.path(ident["key"]))
    return sign(ANSWER_TYPE, msg.SerializeToString(deterministic=True), node)


def _median_us(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e6 * statistics.median(times)


def _node_seal(key: AnswerKey, answer: envelope_pb2.SignedEnvelope, city: City) -> query_pb2.SealedAnswer:
    """What a node does to seal (node/service.py `_seal_answer`): parse for `discloses`, then seal.

    The key was parsed when the query was authorized, so parsing it is not counted here."""
    shown = query_pb2.CityAnswer.FromString(answer.payload)
    discloses = bool(shown.proven_records) or shown.HasField("profile")
    return seal(key, answer, bytes(32), city, discloses=discloses)


def _without_proofs(msg: query_pb2.CityAnswer) -> query_pb2.CityAnswer:
    """The same answer carrying its records' bytes alone: no manifests, no inclusion paths."""
    bare = query_pb2.CityAnswer()
    bare.CopyFrom(msg)
    del bare.batches[:]
    for rec in bare.proven_records:
        del rec.inclusion_path[:]
    return bare


def proof_cost_us(layout: NetworkLayout, answer: envelope_pb2.SignedEnvelope, repeat: int) -> float:
    """What carrying provider proofs adds to a node's answer: serialise, sign and seal the answer
    as it is, minus the same for it without manifests and paths (medians, µs).

    The node's other proof work (reading each record's path with the record) is one more column
    of the same row read, and is not counted."""
    msg = query_pb2.CityAnswer.FromString(answer.payload)
    city = City.from_proto(msg.city)
    ident = layout.data["identities"]["nodes"][city.code]
    node = Identity.load(layout.path(ident["cert"]), layout.path(ident["key"]))
    key = parse_answer_key(query_pb2.CreditQuery(answer_key=AnswerKeyPair.generate().proto))

    def build(m: query_pb2.CityAnswer) -> Callable[[], object]:
        def run() -> object:
            env = sign(ANSWER_TYPE, m.SerializeToString(deterministic=True), node)
            return seal(key, env, bytes(32), city, discloses=True)

        return run

    return _median_us(build(msg), repeat) - _median_us(build(_without_proofs(msg)), repeat)


def seal_open(answer: envelope_pb2.SignedEnvelope, suite: AnswerSuite, repeat: int) -> dict[str, Any]:
    city = City.from_proto(query_pb2.CityAnswer.FromString(answer.payload).city)
    pair = AnswerKeyPair.generate(suite)
    key = parse_answer_key(query_pb2.CreditQuery(answer_key=pair.proto))
    sealed = _node_seal(key, answer, city)
    if open_sealed(pair, sealed, bytes(32), city) != answer:
        raise RuntimeError("a sealed answer did not open to itself")
    return {
        "suite": suite.name,
        "records": len(query_pb2.CityAnswer.FromString(answer.payload).proven_records),
        "answer_bytes": answer.ByteSize(),
        "sealed_bytes": sealed.ByteSize(),
        "seal_us": _median_us(lambda: _node_seal(key, answer, city), repeat),
        # HPKE alone: the rest of seal_us is parsing the answer for its `discloses` flag.
        "hpke_seal_us": _median_us(lambda: seal(key, answer, bytes(32), city, discloses=True), repeat),
        "open_us": _median_us(lambda: open_sealed(pair, sealed, bytes(32), city), repeat),
    }


def bench_sealing(
    layout: NetworkLayout,
    answers: Sequence[envelope_pb2.SignedEnvelope],
    federated: dict[str, Any] | None = None,
    *,
    repeat: int = 200,
) -> dict[str, Any]:
    """Seal/open times for the demo and a large answer; with `federated` (a run's rate and
    `server_cpu_seconds`), the share of its server CPU that sealing `answers` takes per query."""
    demo = max(answers, key=lambda a: a.ByteSize())
    large = large_answer(layout, demo, LARGE_RECORDS)
    runs = [
        {"answer": name, **seal_open(a, suite, r)}
        for name, a, r in (("demo", demo, repeat), ("large", large, max(repeat // 10, 5)))
        for suite in AnswerSuite
    ]
    result: dict[str, Any] = {"runs": runs}
    if federated is not None:
        per_city = [seal_open(a, AnswerKeyPair.generate().suite, repeat) for a in answers]
        seal_s = 1e-6 * sum(r["seal_us"] for r in per_city)
        open_s = 1e-6 * sum(r["open_us"] for r in per_city)
        cpu_per_query = federated["server_cpu_seconds"] / federated["calls"]
        share = seal_s / cpu_per_query
        proofs_s = 1e-6 * sum(max(proof_cost_us(layout, a, repeat), 0.0) for a in answers)
        both = (seal_s + proofs_s) / cpu_per_query
        result["federated"] = {
            "method": "computed from the same run: (default-suite seal time of each city's answer to one "
            "query, summed) / (server CPU seconds per federated query during the 16-client run)",
            "cities": len(answers),
            "queries_per_second": federated["per_second"],
            "server_cpu_ms_per_query": 1000 * cpu_per_query,
            "seal_ms_per_query": 1000 * seal_s,
            "bank_open_ms_per_query": 1000 * open_s,
            "sealing_share": share,
            "estimated_qps_without_sealing": federated["per_second"] / (1 - share) if share < 1 else None,
            "proofs_ms_per_query": 1000 * proofs_s,
            "proofs_method": "per city: serialise + sign + seal of the answer with its provider proofs, "
            "minus the same without manifests and inclusion paths (medians), summed over the query's cities",
            "sealing_and_proofs_share": both,
            "estimated_qps_without_sealing_or_proofs": federated["per_second"] / (1 - both)
            if both < 1
            else None,
            "target_share_with_provider_proofs": TARGET_SHARE,
        }
    return result


def show(result: dict[str, Any]) -> None:
    print("sealed answers (HPKE, RFC 9180): seal as a node does, open as the bank does; medians")
    head = ("answer", "suite", "records", "answer B", "sealed B", "seal µs", "(HPKE µs)", "open µs")
    print("{:>7} {:>16} {:>8} {:>10} {:>10} {:>9} {:>10} {:>9}".format(*head))
    for r in result["runs"]:
        print(
            f"{r['answer']:>7} {r['suite']:>16} {r['records']:>8,} {r['answer_bytes']:>10,}"
            f" {r['sealed_bytes']:>10,} {r['seal_us']:>9.0f} {r['hpke_seal_us']:>10.0f} {r['open_us']:>9.0f}"
        )
    fed = result.get("federated")
    if fed is None:
        return
    print(
        f"  federated, {fed['cities']} cities: servers spend {fed['server_cpu_ms_per_query']:.1f} ms CPU"
        f" per query, of which sealing {fed['seal_ms_per_query']:.2f} ms = {fed['sealing_share']:.1%}"
        f" (target for sealing + provider proofs ≤ {fed['target_share_with_provider_proofs']:.0%})"
    )
    print(
        f"    provider proofs add {fed['proofs_ms_per_query']:.2f} ms of node CPU per query: sealing and"
        f" proofs together {fed['sealing_and_proofs_share']:.1%} of server CPU"
        f" (target ≤ {fed['target_share_with_provider_proofs']:.0%})"
    )
    print(
        f"    {fed['queries_per_second']:.0f} q/s measured with sealing; without it ≈"
        f" {fed['estimated_qps_without_sealing'] or 0:.0f} q/s (estimated from the CPU share, not a"
        f" second run: sealing is mandatory on the wire);"
        f" the bank opens in {fed['bank_open_ms_per_query']:.2f} ms"
    )


async def _federated_run(
    layout: NetworkLayout, consent: envelope_pb2.SignedEnvelope, pids: Sequence[int], n: int
) -> dict[str, Any]:
    from creditnet_devkit.bench.load import WARMUP, drive, presign

    queries = presign(layout, consent, n + WARMUP)
    bank = layout.bank()
    async with secure_channel(
        layout.aggregator_endpoint, bank, TrustStore.load(layout.ca), AGGREGATOR_SERVER_NAME
    ) as ch:
        agg = aggregator_pb2_grpc.AggregatorServiceStub(ch)

        async def do(i: int) -> object:
            return await agg.FederatedQuery(
                aggregator_pb2.FederatedQueryRequest(query=queries[i]), timeout=30
            )

        await drive(do, WARMUP, 16)
        queries = queries[WARMUP:]
        before = cpu_seconds(pids)
        run = await drive(do, n, 16)
        run["server_cpu_seconds"] = cpu_seconds(pids) - before
        return run


def main(argv: Sequence[str] | None = None) -> int:
    from creditnet.network import ProcessNetwork, grant_demo_consent, provision

    p = argparse.ArgumentParser(
        description="sealed answers: seal/open time and share of federated throughput"
    )
    p.add_argument("--queries", type=int, default=400, help="federated queries measured")
    p.add_argument("--repeat", type=int, default=200)
    p.add_argument("--out", type=Path, default=Path("bench-sealing.json"))
    a = p.parse_args(argv)
    os.environ["CREDITNET_RATE_LIMIT_PER_BANK"] = "off"
    tmp = Path(tempfile.mkdtemp(prefix="creditnet-bench-sealing-"))
    try:
        layout = provision(tmp / "net", enterprises_per_city=200, seed=5)
        net = ProcessNetwork(layout)
        net.start()
        try:
            asyncio.run(net.wait_healthy())
            consent = grant_demo_consent(layout)
            pids = [proc.pid for proc in net.procs.values()]
            federated = asyncio.run(_federated_run(layout, consent, pids, a.queries))
            answers = asyncio.run(demo_answers(layout, consent))
        finally:
            net.stop()
        result = bench_sealing(layout, answers, federated, repeat=a.repeat)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    show(result)
    a.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"written: {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
