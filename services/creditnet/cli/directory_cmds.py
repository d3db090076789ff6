"""`creditnet directory`: make, sign, check and read the signed network directory (protocol v2).

`publish` offers a signed directory to every server of a running network
(DirectoryService.OfferDirectory); the other commands work on files.

Exit codes: 0 success; 1 the directory is refused (the rule id is printed);
2 bad usage.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path
from typing import Annotated, Any

import typer
from cryptography import x509
from rich.table import Table

from creditnet import divisions
from creditnet.cli.common import console, errors, fail, print_json, read_network
from creditnet.dates import utcnow
from creditnet.directory import verify
from creditnet.directory.build import PILOT_CITIES
from creditnet.directory.model import Directory, Policy
from creditnet.directory.provision import init_directory
from creditnet.directory.sign import add_signature, load, save
from creditnet.directory.verify import VerifiedDirectory
from creditnet.errors import CreditnetError
from creditnet.pki import CertificateAuthority, Identity, TrustStore, role_of

__all__ = [
    "anchor_cmd",
    "app",
    "init",
    "publish_cmd",
    "show",
    "sign_cmd",
    "verify_cmd",
]

app = typer.Typer(
    help="The signed network directory: who is in the network, signed by k of n governance keys.",
    no_args_is_help=True,
)

DEFAULT_GOVERNANCE = "gov-1,gov-2,gov-3"


def _codes(text: str) -> list[str]:
    codes = [c.strip() for c in text.split(",") if c.strip()]
    if not codes:
        raise ValueError("--cities needs at least one division code")
    for code in codes:
        divisions.city(code)
    if len(set(codes)) != len(codes):
        raise ValueError("--cities lists a code twice")
    return codes


def _endpoints_from_network(state: Path) -> tuple[CertificateAuthority, dict[str, str], str]:
    """A `network up` state dir's CA, its cities' endpoints by code, and its aggregator's endpoint."""
    import json

    data: dict[str, Any] = json.loads(read_network(state).read_text(encoding="utf-8"))
    root = read_network(state).parent
    ca = CertificateAuthority.load((root / data["ca"]).parent)
    endpoints = {code: str(entry["endpoint"]) for code, entry in data["cities"].items()}
    return ca, endpoints, str(data["aggregator"]["endpoint"])


@app.command("init")
def init(
    out: Annotated[Path, typer.Option(help="Directory to write into (created; must not hold a directory).")],
    network: Annotated[
        Path | None, typer.Option("--network", help="A `network up` state dir: its CA and endpoints.")
    ] = None,
    ca_dir: Annotated[
        Path | None, typer.Option("--ca-dir", help="Directory holding ca.pem and ca.key.")
    ] = None,
    cities: Annotated[str, typer.Option(help="Member cities, comma-separated division codes.")] = ",".join(
        PILOT_CITIES
    ),
    endpoint: Annotated[
        list[str] | None, typer.Option(help="CODE=HOST:PORT (repeatable); default 127.0.0.1:7100, 7101, ...")
    ] = None,
    aggregator_endpoint: Annotated[
        str | None,
        typer.Option(help="HOST:PORT of the national aggregator; comma-separated for its replicas."),
    ] = None,
    governance: Annotated[
        str, typer.Option(help="Governance key names, comma-separated.")
    ] = DEFAULT_GOVERNANCE,
    threshold: Annotated[int, typer.Option(help="How many governance keys must sign (k).")] = 2,
    max_age_hours: Annotated[float, typer.Option(help="The directory's maximum age, in hours.")] = 168.0,
    refresh_seconds: Annotated[float, typer.Option(help="How often members refresh, in seconds.")] = 300.0,
) -> None:
    """Make version 1 of a network directory, its governance keys and its log keys; sign it k times.

    Writes OUT/directory.json (signed by the first k governance keys),
    OUT/anchor.sha256 (pin it in every member's configuration),
    OUT/governance/NAME.pem|.key and OUT/logkeys/NAME.pem|.key.
    """
    with errors():
        if (out / "directory.json").exists():
            fail(f"{out} already holds a directory; refusing to overwrite it")
        codes = _codes(cities)
        names = [n.strip() for n in governance.split(",") if n.strip()]
        given: dict[str, str] = {}
        agg_ep = aggregator_endpoint
        if network is not None:
            ca, given, from_state = _endpoints_from_network(network)
            agg_ep = agg_ep or from_state
        elif ca_dir is not None:
            ca = CertificateAuthority.load(ca_dir)
        else:
            fail("give --network STATE or --ca-dir DIR (the CA that certifies the governance keys)", 2)
        for item in endpoint or []:
            code, sep, ep = item.partition("=")
            if not sep:
                raise ValueError(f"--endpoint {item!r} is not CODE=HOST:PORT")
            given[divisions.city(code).code] = ep
        policy = Policy(
            refresh_interval=dt.timedelta(seconds=refresh_seconds), max_age=dt.timedelta(hours=max_age_hours)
        )
        made = init_directory(
            ca,
            out,
            codes=codes,
            endpoints=given,
            aggregator_endpoint=[e.strip() for e in agg_ep.split(",") if e.strip()] if agg_ep else None,
            governance=names,
            threshold=threshold,
            policy=policy,
        )
        anchor = made.anchor
        console.print(
            f"directory version 1 of {len(codes)} cities → {out / 'directory.json'}\n"
            f"signed by {', '.join(names[:threshold])} ({threshold} of {len(names)}); trust anchor (pin it):"
        )
        typer.echo(anchor)


@app.command("sign")
def sign_cmd(
    file: Annotated[Path, typer.Argument(help="A signed (or unsigned) directory file.")],
    cert: Annotated[Path, typer.Option(help="The governance key's certificate (PEM).")],
    key: Annotated[Path, typer.Option(help="The governance key (PEM).")],
    out: Annotated[Path | None, typer.Option(help="Write here instead of over FILE.")] = None,
) -> None:
    """Add one governance signature over the directory's exact payload bytes."""
    with errors():
        env = load(file)
        Directory.from_payload(env.payload)
        add_signature(env, Identity.load(cert, key))
        save(env, out or file)
        console.print(f"signed → {out or file} ({len(env.signatures)} signature(s))")


@app.command("verify")
def verify_cmd(
    file: Annotated[Path, typer.Argument(help="The candidate directory file.")],
    ca: Annotated[Path, typer.Option(help="The network CA certificate (PEM).")],
    anchor: Annotated[str | None, typer.Option(help="SHA-256 (hex) of a first directory's payload.")] = None,
    trusted: Annotated[
        Path | None, typer.Option(help="The directory trusted now (file), to update from.")
    ] = None,
    at: Annotated[str | None, typer.Option(help="Verify as of this ISO 8601 time (default now).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Verify a directory against a pinned anchor or the directory trusted now (exit 1 if refused)."""
    with errors():
        if (anchor is None) == (trusted is None):
            raise ValueError("give exactly one of --anchor HEX or --trusted FILE")
        when = dt.datetime.fromisoformat(at) if at else utcnow()
        if when.tzinfo is None:
            raise ValueError("--at needs a time zone, e.g. 2026-06-01T08:00:00+00:00")
        store = TrustStore.load(ca)
        held: VerifiedDirectory | None = None
        if trusted is not None:
            t_env = load(trusted)
            issued = Directory.from_payload(t_env.payload).issued_at
            held = verify(t_env, trust=store, anchor_sha256=hashlib.sha256(t_env.payload).digest(), at=issued)
        try:
            pinned = bytes.fromhex(anchor) if anchor else None
        except ValueError:
            raise ValueError("--anchor is not hex") from None
        try:
            v = verify(load(file), trust=store, trusted=held, anchor_sha256=pinned, at=when)
        except CreditnetError as exc:
            if json_out:
                print_json({"valid": False, "rule": exc.rule, "message": exc.message})
                raise typer.Exit(1) from None
            raise
        d = v.directory
        if json_out:
            print_json(
                {"valid": True, "version": d.version, "sha256": v.digest.hex(), "expires_at": d.expires_at}
            )
        else:
            console.print(
                f"valid: version {d.version}, expires {d.expires_at.isoformat()}, sha256 {v.digest.hex()}"
            )


def _summary(file: Path) -> dict[str, Any]:
    env = load(file)
    d = Directory.from_payload(env.payload)
    signers = []
    for sig in env.signatures:
        try:
            signers.append(role_of(x509.load_der_x509_certificate(sig.certificate_chain[0])).uri)
        except (ValueError, IndexError, CreditnetError):
            signers.append("(unreadable certificate)")
    p = d.policy
    return {
        "network": d.network,
        "version": d.version,
        "issued_at": d.issued_at.isoformat(),
        "expires_at": d.expires_at.isoformat(),
        "sha256": hashlib.sha256(env.payload).hexdigest(),
        "cities": [
            {
                "code": c.code,
                "name_zh": c.name_zh,
                "name_en": c.name_en,
                "endpoints": list(c.endpoints),
                "tls_server_name": c.tls_server_name,
            }
            for c in d.cities
        ],
        "aggregators": [
            {"name": a.name, "endpoints": list(a.endpoints), "tls_server_name": a.tls_server_name}
            for a in d.aggregators
        ],
        "witness_assignments": [
            {"log": w.log, "witnesses": list(w.witnesses), "quorum": w.quorum} for w in d.witness_assignments
        ],
        "policy": {
            "witness_quorum": p.witness_quorum,
            "clock_skew_seconds": p.clock_skew.total_seconds(),
            "max_message_bytes": p.max_message_bytes,
            "bank_rate_per_second": p.bank_rate_per_second,
            "bank_rate_burst": p.bank_rate_burst,
            "refresh_interval_seconds": p.refresh_interval.total_seconds(),
            "max_age_seconds": p.max_age.total_seconds(),
        },
        "revoked_certificates": [
            {
                "serial": r.serial.hex(),
                "spki_sha256": r.spki_sha256.hex(),
                "reason": r.reason,
                "revoked_at": r.revoked_at,
            }
            for r in d.revoked
        ],
        "governance": {
            "threshold": d.governance.threshold,
            "keys": [{"name": k.name, "spki_sha256": k.spki_sha256.hex()} for k in d.governance.keys],
        },
        "signatures_by": signers,
    }


@app.command("show")
def show(
    file: Annotated[Path, typer.Argument(help="A directory file.")],
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show a directory's members, witnesses, policy, revocations and governance (signatures unchecked)."""
    with errors():
        s = _summary(file)
        if json_out:
            print_json(s)
            return
        console.print(
            f"[bold]{s['network']}[/] directory version {s['version']}, "
            f"issued {s['issued_at']}, expires {s['expires_at']}\n"
            f"sha256 {s['sha256']}"
        )
        t = Table("code", "city", "endpoints", "TLS server name", "witnesses (quorum)")
        witnesses = {w["log"]: w for w in s["witness_assignments"]}
        for c in s["cities"]:
            w = witnesses.get(c["code"])
            t.add_row(
                c["code"],
                f"{c['name_en']} {c['name_zh']}",
                ", ".join(c["endpoints"]),
                c["tls_server_name"],
                f"{', '.join(w['witnesses'])} ({w['quorum']})" if w else "policy default",
            )
        for a in s["aggregators"]:
            t.add_row(a["name"], "aggregator", ", ".join(a["endpoints"]), a["tls_server_name"], "")
        console.print(t)
        g = s["governance"]
        console.print(
            f"governance: {g['threshold']} of {', '.join(k['name'] for k in g['keys'])}; "
            f"signed by: {', '.join(s['signatures_by']) or 'nobody'}\n"
            f"revoked certificates: {len(s['revoked_certificates'])}; "
            f"refresh every {s['policy']['refresh_interval_seconds']:g} s, "
            f"max age {s['policy']['max_age_seconds'] / 3600:g} h"
        )


@app.command("anchor")
def anchor_cmd(file: Annotated[Path, typer.Argument(help="A directory file.")]) -> None:
    """Print the SHA-256 of a directory's payload: the value a first directory is pinned by."""
    with errors():
        env = load(file)
        Directory.from_payload(env.payload)
        typer.echo(hashlib.sha256(env.payload).hexdigest())


@app.command("publish")
def publish_cmd(
    file: Annotated[Path, typer.Argument(help="The newly signed directory file.")],
    network: Annotated[Path, typer.Option("--network", help="A `network up` state dir.")],
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Offer a signed directory to every node and the aggregator of a running network.

    Each server verifies it against the directory it holds and keeps it only
    if it is valid and newer. A version any server took is kept as
    STATE/directory/directory-vN.json (`pki revoke` walks them across a
    governance rotation). Exit 0 when every server holds it afterwards,
    1 when any refused it or could not be reached (each is listed with why),
    2 on bad usage.
    """
    import asyncio

    from creditnet.directory.publish import keep, publish
    from creditnet.network import NetworkLayout

    with errors():
        env = load(file)
        version = Directory.from_payload(env.payload).version
        layout = NetworkLayout.load(read_network(network).parent)
        answers = asyncio.run(publish(layout, env))
        if any(a.ok and a.version == version for a in answers):
            # Taken by a server: a version `pki revoke` may need to walk (a rotation).
            keep(layout, env)
        if json_out:
            print_json(
                [
                    {"server": a.target, "status": a.status, "version": a.version, "changed": a.changed}
                    | ({"detail": a.detail} if a.detail else {})
                    for a in answers
                ]
            )
        else:
            for a in answers:
                if a.ok:
                    note = "took it" if a.changed else "already held it"
                    console.print(f"{a.target}: holds version {a.version} ({note})")
                else:
                    console.print(f"{a.target}: [bold red]{a.status}[/] {a.detail}")
        if not all(a.ok and a.version == version for a in answers):
            raise typer.Exit(1)
