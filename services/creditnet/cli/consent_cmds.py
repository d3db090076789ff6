"""`creditnet consent`: an enterprise grants, shows and revokes consents."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from pathlib import Path
from typing import Annotated

import typer
from google.protobuf.message import DecodeError

from creditnet import consent as consent_mod
from creditnet import uscc as uscc_mod
from creditnet.cli.common import console, errors, fail, print_json
from creditnet.dates import utcnow
from creditnet.domain import ALL_CATEGORIES, Category, City, Purpose
from creditnet.envelope import CONSENT_TYPE, EnvelopeVerifier, digest, load_envelope, save_envelope
from creditnet.pki import Identity, TrustStore
from creditnet.v2 import aggregator_pb2, consent_pb2

__all__ = [
    "app",
    "grant",
    "revoke",
    "show",
]

app = typer.Typer(help="Consents: grant one to a bank, show one, revoke one.", no_args_is_help=True)

CertOpt = Annotated[Path, typer.Option("--cert", help="The enterprise's certificate (PEM).")]
KeyOpt = Annotated[Path, typer.Option("--key", help="The enterprise's private key (PEM).")]


def _ordered(cats: tuple[Category, ...]) -> tuple[Category, ...]:
    return tuple(c for c in Category if c in cats)


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a date (YYYY-MM-DD)") from None


@app.command("grant")
def grant(
    bank: Annotated[str, typer.Option(help="Institution code of the bank allowed to query.")],
    purpose: Annotated[str, typer.Option(help=", ".join(p.value for p in Purpose))],
    cert: CertOpt,
    key: KeyOpt,
    out: Annotated[Path, typer.Option(help="Where to write the signed consent (JSON).")],
    categories: Annotated[str, typer.Option(help="Comma-separated categories, or 'all'.")] = "all",
    cities: Annotated[
        str,
        typer.Option(
            help="City codes (310000,340100) or Chinese names, comma-separated; empty: every member city."
        ),
    ] = "",
    data_from: Annotated[
        str | None, typer.Option("--from", help="First date of data covered (default: 3 years ago).")
    ] = None,
    data_to: Annotated[
        str | None, typer.Option("--to", help="Last date of data covered (default: today).")
    ] = None,
    valid_days: Annotated[int, typer.Option(min=1, max=1095, help="Days the consent can be used.")] = 30,
    max_uses: Annotated[int, typer.Option(min=0, help="Queries allowed per node; 0 = no limit.")] = 0,
    uscc: Annotated[str | None, typer.Option(help="The enterprise (default: from the certificate).")] = None,
) -> None:
    """Sign a consent for one bank, one purpose, some categories and a period of data."""
    with errors():
        ident = Identity.load(cert, key)
        now = utcnow()
        terms = consent_mod.ConsentTerms(
            # What a person types is normalised here; signed objects carry the canonical form.
            enterprise_uscc=uscc_mod.validate(uscc) if uscc else ident.role.subject,
            bank_code=bank,
            purpose=Purpose.parse(purpose),
            categories=ALL_CATEGORIES
            if categories.strip() == "all"
            else _ordered(Category.parse_many(categories)),
            cities=City.parse_many(cities),
            data_from=_date(data_from) if data_from else dt.date(now.year - 3, now.month, 1),
            data_to=_date(data_to) if data_to else now.date(),
            not_before=now - dt.timedelta(minutes=1),
            not_after=now + dt.timedelta(days=valid_days),
            max_uses=max_uses,
        )
        env = consent_mod.grant(ident, terms)
        save_envelope(env, out)
        console.print(
            f"consent {terms.consent_id} for bank {bank} ({terms.purpose.value}) written to {out}; "
            f"valid until {terms.not_after:%Y-%m-%d %H:%M} UTC"
        )


@app.command("show")
def show(
    file: Annotated[Path, typer.Argument(help="A consent file.")],
    ca: Annotated[Path | None, typer.Option(help="Verify the signature against this CA certificate.")] = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Show what a consent allows (and verify it with --ca)."""
    with errors():
        env = load_envelope(file)
        if env.payload_type != CONSENT_TYPE:
            fail(f"{file} is not a consent (payload type {env.payload_type})")
        if ca is not None:
            terms = consent_mod.verify_consent(EnvelopeVerifier(TrustStore.load(ca)), env).terms
            verified = True
        else:
            msg = consent_pb2.Consent()
            try:
                msg.ParseFromString(env.payload)
            except DecodeError:
                fail(f"{file} holds a malformed consent")
            terms = consent_mod.ConsentTerms.from_proto(msg)
            verified = False
        info = {
            "consent_id": terms.consent_id,
            "digest": digest(env.payload).hex(),
            "enterprise": terms.enterprise_uscc,
            "bank": terms.bank_code,
            "purpose": terms.purpose.value,
            "categories": [c.value for c in terms.categories],
            "cities": [c.value for c in terms.cities],
            "data_period": [terms.data_from.isoformat(), terms.data_to.isoformat()],
            "valid": [terms.not_before.isoformat(), terms.not_after.isoformat()],
            "max_uses": terms.max_uses,
            "signature_verified": verified,
        }
        if json_out:
            print_json(info)
        else:
            for k, v in info.items():
                if k == "cities" and not v:
                    v = "every member city of the network"
                console.print(f"[bold]{k:>18}[/] {', '.join(v) if isinstance(v, list) else v}")


@app.command("revoke")
def revoke(
    consent: Annotated[Path, typer.Option("--consent", help="The consent file to revoke.")],
    cert: CertOpt,
    key: KeyOpt,
    out: Annotated[Path, typer.Option(help="Where to write the signed revocation.")],
    reason: Annotated[str, typer.Option(help="Why (kept with the revocation).")] = "",
    aggregator: Annotated[
        list[str] | None,
        typer.Option(
            help="Also deliver it through this aggregator (HOST:PORT) to every node; repeat it for "
            "replicas, tried in turn while one is unavailable."
        ),
    ] = None,
    ca: Annotated[
        Path | None, typer.Option(help="The network CA certificate (needed with --aggregator).")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for delivery.")] = 10.0,
) -> None:
    """Sign a revocation; with --aggregator, deliver it to every node at once."""
    with errors():
        ident = Identity.load(cert, key)
        consent_env = load_envelope(consent)
        env = consent_mod.revoke(ident, consent_env, reason=reason)
        save_envelope(env, out)
        console.print(f"revocation written to {out}")
        if not aggregator:
            return
        if ca is None:
            fail("--ca is required with --aggregator")
        trust = TrustStore.load(ca)

        async def deliver() -> aggregator_pb2.BroadcastRevocationResponse:
            from creditnet_bank.replicas import BROADCAST_REVOCATION, Replicas

            # Unavailable or frozen: the next replica, within the one deadline; a refusal is the answer.
            replicas = Replicas(aggregator, ident, trust)
            try:
                return await replicas.unary(
                    BROADCAST_REVOCATION,
                    aggregator_pb2.BroadcastRevocationRequest(revocation=env, consent=consent_env),
                    aggregator_pb2.BroadcastRevocationResponse,
                    time.monotonic() + timeout,
                )
            finally:
                await replicas.close()

        resp = asyncio.run(deliver())
        for d in resp.deliveries:
            city = City.from_proto(d.city).value
            state = "[green]delivered[/]" if d.delivered else f"[yellow]pending[/] ({d.error})"
            console.print(f"  {city:<9} {state}")
