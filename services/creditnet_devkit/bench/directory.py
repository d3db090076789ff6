"""Network directory benchmark: verification time and size at 5, 50 and 333 cities.

``python -m creditnet_devkit.bench.directory`` (``make bench-directory``) prints a
table and writes bench-directory.json in the current directory. Times are
medians; each is also given as a ratio to one ECDSA P-256 verification
measured in the same run (the unit a governance signature costs), so the
figures compare across machines.

Measured per size: the signed envelope's bytes; parsing with every content
rule (`Directory.from_payload`, which reads each member's log-key
certificate); and a full update verification (content rules, version and
freshness, two governance signatures with their certificate chains).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import statistics
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from creditnet import divisions
from creditnet.chain.keys import NATIONAL, LogKey
from creditnet.dates import utcnow
from creditnet.directory import sign, verify
from creditnet.directory.build import PILOT_CITIES, MemberSpec, issue_governance, make_directory
from creditnet.directory.model import Directory
from creditnet.directory.verify import VerifiedDirectory
from creditnet.pki import CertificateAuthority, TrustStore
from creditnet.v2 import envelope_pb2

__all__ = [
    "bench_directory",
    "main",
    "show",
]

SIZES = (5, 50, 333)


def _median_seconds(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _verify_fresh(
    env: envelope_pb2.SignedEnvelope, ca: CertificateAuthority, trusted: VerifiedDirectory
) -> None:
    # A fresh trust store per run: certificate chains are not cached between runs.
    verify(env, trust=TrustStore(ca.cert), trusted=trusted)


def _cities(n: int) -> list[str]:
    """The pilot cities first, then prefecture-level divisions in code order."""
    rest = [d.code for d in divisions.prefectures() if d.code not in PILOT_CITIES]
    return [*PILOT_CITIES, *rest][:n]


def bench_directory(sizes: Sequence[int] = SIZES, repeat: int = 30) -> dict[str, Any]:
    ca = CertificateAuthority.create("bench CA", not_before=utcnow() - dt.timedelta(minutes=5))
    trust = TrustStore(ca.cert)
    gov = issue_governance(ca, ["gov-1", "gov-2", "gov-3"])
    # Baseline: one ECDSA P-256 verification of a short message.
    key = ec.generate_private_key(ec.SECP256R1())
    sig = key.sign(b"baseline", ec.ECDSA(hashes.SHA256()))
    ecdsa = _median_seconds(lambda: key.public_key().verify(sig, b"baseline", ec.ECDSA(hashes.SHA256())), 500)
    now = utcnow().replace(microsecond=0)
    runs = []
    largest = max(sizes)
    codes = _cities(largest)
    logs = {c: LogKey.issue(ca, c).certificate_der for c in (*codes, NATIONAL)}
    for name in codes:  # load the pinyin names outside the clock
        divisions.lookup(name).name_en  # noqa: B018
    for n in sizes:
        members = [MemberSpec(c, (f"127.0.0.1:{10000 + i}",), logs[c]) for i, c in enumerate(codes[:n])]
        agg = [MemberSpec(NATIONAL, ("127.0.0.1:9999",), logs[NATIONAL])]

        def build(
            version: int, members: list[MemberSpec] = members, agg: list[MemberSpec] = agg
        ) -> Directory:
            return make_directory(
                version=version,
                issued_at=now - dt.timedelta(minutes=5 - version),
                cities=members,
                aggregators=agg,
                governance=gov,
                threshold=2,
            )

        v1 = sign(build(1), gov[:2])
        v2 = sign(build(2), gov[:2])
        trusted = verify(v1, trust=trust, anchor_sha256=hashlib.sha256(v1.payload).digest())
        full = _median_seconds(partial(_verify_fresh, v2, ca, trusted), repeat)
        parse = _median_seconds(partial(Directory.from_payload, v2.payload), repeat)
        runs.append(
            {
                "cities": n,
                "envelope_bytes": v2.ByteSize(),
                "payload_bytes": len(v2.payload),
                "bytes_per_city": round(len(v2.payload) / n),
                "parse_ms": 1000 * parse,
                "verify_ms": 1000 * full,
                "verify_ratio_vs_ecdsa": full / ecdsa,
            }
        )
    base = runs[0]
    for r in runs:
        r["verify_ratio_vs_5"] = r["verify_ms"] / base["verify_ms"]
    return {"ecdsa_verify_us": 1e6 * ecdsa, "runs": runs}


def show(result: dict[str, Any]) -> None:
    print(f"directory verification (baseline: one ECDSA P-256 verify = {result['ecdsa_verify_us']:.0f} µs)")
    head = ("cities", "envelope", "B/city", "parse ms", "verify ms", "x ECDSA", "x 5 cities")
    print("{:>6} {:>10} {:>7} {:>9} {:>10} {:>8} {:>10}".format(*head))
    for r in result["runs"]:
        print(
            f"{r['cities']:>6} {r['envelope_bytes']:>10,} {r['bytes_per_city']:>7,} {r['parse_ms']:>9.2f} "
            f"{r['verify_ms']:>10.2f} {r['verify_ratio_vs_ecdsa']:>8.1f} {r['verify_ratio_vs_5']:>10.2f}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="network directory verification time and size")
    p.add_argument("--sizes", default=",".join(map(str, SIZES)), help="city counts, comma-separated")
    p.add_argument("--repeat", type=int, default=30)
    p.add_argument("--out", type=Path, default=Path("bench-directory.json"))
    a = p.parse_args(argv)
    result = bench_directory([int(s) for s in a.sizes.split(",")], a.repeat)
    show(result)
    a.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"written: {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
