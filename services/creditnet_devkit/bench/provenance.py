"""What provider proofs cost a bank: answer size and verify time per record, with and without them.

``python -m creditnet_devkit.bench.provenance`` prints a table and writes
bench-provenance.json in the current directory; ``make bench`` runs it with
the others. Both sides of each ratio are measured in this run on the same
records: an answer of N records as its node signs it, verified by a bank
that starts cold (no certificate or signature cached), once with the
records as plain messages (what answers carried before records were
signed) and once as provider-signed bytes with their inclusion proofs and
batch manifests (docs/protocol.md, "Records signed at their source"). The
records come from one provider batch of 1,000, or each from its own batch
(the worst case: one more signature to verify per record).

Also here: signing synthetic records into batches for benchmarks that
write a store directly, as providers would have submitted them.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from creditnet import pilot, provenance
from creditnet.dates import utcnow
from creditnet.domain import ALL_CATEGORIES, City
from creditnet.envelope import ANSWER_TYPE, EnvelopeVerifier, sign
from creditnet.pki import CertificateAuthority, Identity, Role, TrustStore, issue_identity
from creditnet.v2 import envelope_pb2, node_pb2, query_pb2, records_pb2
from creditnet_bank.provenance import proven_records
from creditnet_devkit import synthetic

__all__ = [
    "bench_provenance",
    "bench_provider",
    "main",
    "show",
    "signed_batches",
]

CITY: Final = pilot.HEFEI
BATCH: Final = 1000
SIZES: Final = (10, 100, 1000)
REPEATS: Final = 30


def bench_provider(ca: CertificateAuthority, city: City) -> Identity:
    """A data provider of `city` for every category, as the synthetic data's exchange."""
    return issue_identity(ca, Role.provider(city, synthetic.DATA_EXCHANGE_SUBJECT, ALL_CATEGORIES))


def signed_batches(
    provider: Identity, recs: Sequence[records_pb2.CreditRecord], batch: int
) -> list[tuple[list[records_pb2.CreditRecord], provenance.SignedBatch]]:
    """`recs` in batches of `batch`, each signed by `provider` (records get its provider_id)."""
    return [provenance.sign_records(provider, recs[i : i + batch]) for i in range(0, len(recs), batch)]


def _records(n: int) -> list[records_pb2.CreditRecord]:
    out: list[records_pb2.CreditRecord] = []
    for item in synthetic.generate(17, max(n // 20, 10), cities=(CITY,)):
        if isinstance(item, records_pb2.CreditRecord):
            out.append(item)
            if len(out) == n:
                return out
    raise RuntimeError(f"the synthetic data set has fewer than {n} records")


def _answers(
    ca: CertificateAuthority, node: Identity, provider: Identity, n: int, per_batch: int
) -> tuple[envelope_pb2.SignedEnvelope, envelope_pb2.SignedEnvelope]:
    """The same n records as a node signs them: plain (baseline) and with provider proofs."""
    recs = _records(max(n, BATCH) if per_batch > 1 else n)
    batches = signed_batches(provider, recs, per_batch)
    with_proofs = query_pb2.CityAnswer(city=CITY.proto)
    plain: list[records_pb2.CreditRecord] = []
    for signed_records, signed in batches:
        if len(plain) == n:
            break
        with_proofs.batches.add().ParseFromString(signed.envelope)
        for leaf, rec in enumerate(signed_records[: n - len(plain)]):
            with_proofs.proven_records.add(
                record=signed.raw[leaf],
                batch=len(with_proofs.batches) - 1,
                leaf_index=leaf,
                inclusion_path=provenance.split_path(signed.paths[leaf]),
            )
            plain.append(rec)
    # Plain records as answers carried them (a repeated CreditRecord field,
    # a one-byte tag as before): SubmitRecordsRequest is that message.
    baseline = node_pb2.SubmitRecordsRequest(records=plain).SerializeToString(deterministic=True)
    proven = with_proofs.SerializeToString(deterministic=True)
    return sign(ANSWER_TYPE, baseline, node), sign(ANSWER_TYPE, proven, node)


def _verify_plain(ca: CertificateAuthority, answer: envelope_pb2.SignedEnvelope) -> int:
    verifier = EnvelopeVerifier(TrustStore(ca.cert))
    payload = verifier.verify(answer, ANSWER_TYPE, what="answer").payload
    return len(node_pb2.SubmitRecordsRequest.FromString(payload).records)


def _verify_proven(ca: CertificateAuthority, answer: envelope_pb2.SignedEnvelope) -> int:
    verifier = EnvelopeVerifier(TrustStore(ca.cert))
    payload = verifier.verify(answer, ANSWER_TYPE, what="answer").payload
    return len(proven_records(verifier, query_pb2.CityAnswer.FromString(payload), CITY))


def _median_s(fn: Callable[[], int], expected: int) -> float:
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        got = fn()
        times.append(time.perf_counter() - t0)
        if got != expected:
            raise RuntimeError(f"verified {got} records, expected {expected}")
    return statistics.median(times)


def bench_provenance(sizes: Sequence[int] = SIZES) -> dict[str, Any]:
    ca = CertificateAuthority.create()
    node = issue_identity(ca, Role.node(CITY))
    provider = bench_provider(ca, CITY)
    rows = []
    for n in sizes:
        for per_batch, layout in ((BATCH, "one batch"), (1, "a batch per record")):
            if per_batch == 1 and n > 100:
                continue  # n provider signatures: the trend shows at 100
            plain, proven = _answers(ca, node, provider, n, per_batch)
            t_plain = _median_s(functools.partial(_verify_plain, ca, plain), n)
            t_proven = _median_s(functools.partial(_verify_proven, ca, proven), n)
            rows.append(
                {
                    "records": n,
                    "batches": layout,
                    "answer_bytes_plain": len(plain.SerializeToString()),
                    "answer_bytes_proven": len(proven.SerializeToString()),
                    "size_ratio": len(proven.SerializeToString()) / len(plain.SerializeToString()),
                    "verify_us_per_record_plain": 1e6 * t_plain / n,
                    "verify_us_per_record_proven": 1e6 * t_proven / n,
                    "verify_ratio": t_proven / t_plain,
                }
            )
    return {"measured_at": utcnow().isoformat(), "batch_size": BATCH, "repeats": REPEATS, "rows": rows}


def show(r: dict[str, Any]) -> None:
    print("provider proofs: answer size and bank-side verify time (cold bank), with vs without")
    sizes = f"{'bytes plain':>12}{'proven':>10}{'x':>6}"
    times = f"{'µs/rec plain':>14}{'proven':>9}{'x':>6}"
    print(f"  {'records':>7}  {'batches':<20}{sizes}{times}")
    for row in r["rows"]:
        print(
            f"  {row['records']:>7}  {row['batches']:<20}{row['answer_bytes_plain']:>12}"
            f"{row['answer_bytes_proven']:>10}{row['size_ratio']:>6.2f}"
            f"{row['verify_us_per_record_plain']:>14.1f}{row['verify_us_per_record_proven']:>9.1f}"
            f"{row['verify_ratio']:>6.2f}"
        )


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m creditnet_devkit.bench.provenance", description=__doc__)
    p.add_argument("--out", type=Path, default=Path("bench-provenance.json"))
    a = p.parse_args(argv)
    r = bench_provenance()
    show(r)
    a.out.write_text(json.dumps(r, indent=2) + "\n", encoding="utf-8")
    print(a.out)


if __name__ == "__main__":
    main()
