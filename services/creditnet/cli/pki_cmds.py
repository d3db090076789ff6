"""`creditnet pki`: the network CA and the certificates it issues."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from cryptography import x509

from creditnet.cli.common import console, errors, fail, print_json
from creditnet.domain import Category, City
from creditnet.pki import (
    CertificateAuthority,
    Identity,
    Role,
    RoleKind,
    cert_to_pem,
    generate_key,
    write_public,
)

__all__ = [
    "app",
    "build_role",
    "init",
    "issue",
    "revoke_cmd",
    "show",
]

app = typer.Typer(help="The network CA: create it, issue role-bound certificates.", no_args_is_help=True)


@app.command("init")
def init(
    ca_dir: Annotated[Path, typer.Option("--ca-dir", help="Directory for ca.pem and ca.key (0600).")],
    name: Annotated[
        str, typer.Option(help="The CA's common name.")
    ] = "creditnet Yangtze River Delta network CA",
) -> None:
    """Create the network CA."""
    with errors():
        if (ca_dir / "ca.key").exists():
            fail(f"{ca_dir} already holds a CA; refusing to overwrite it")
        CertificateAuthority.create(name).save(ca_dir)
        console.print(f"CA created: {ca_dir / 'ca.pem'} (key {ca_dir / 'ca.key'}, keep it offline)")


def build_role(
    role: str,
    city: str | None,
    code: str | None,
    uscc: str | None,
    provider_id: str | None,
    categories: str | None,
) -> Role:
    kind = RoleKind(role)
    match kind:
        case RoleKind.NODE | RoleKind.OPERATOR:
            if not city:
                raise ValueError(f"--city is required for a {role} certificate")
            return Role(kind, city=City.parse(city))
        case RoleKind.BANK:
            if not code:
                raise ValueError("--code (the bank's institution code) is required")
            return Role.bank(code)
        case RoleKind.ENTERPRISE:
            if not uscc:
                raise ValueError("--uscc is required for an enterprise certificate")
            return Role.enterprise(uscc)
        case RoleKind.PROVIDER:
            if not (city and provider_id and categories):
                raise ValueError("--city, --provider-id and --categories are required for a provider")
            return Role.provider(City.parse(city), provider_id, Category.parse_many(categories))
        case RoleKind.AGGREGATOR:
            return Role.aggregator(code or "national")
        case RoleKind.LOGKEY:
            if not code:
                raise ValueError("--code (the city, or 'national') is required for a log key")
            return Role.logkey(code)
        case RoleKind.GOVERNANCE:
            if not code:
                raise ValueError("--code (the governance key's name) is required for a governance key")
            return Role.governance(code)


@app.command("issue")
def issue(
    ca_dir: Annotated[Path, typer.Option("--ca-dir", help="Directory holding ca.pem and ca.key.")],
    role: Annotated[
        str,
        typer.Option(help="node, operator, aggregator, bank, enterprise, provider, logkey or governance."),
    ],
    out: Annotated[Path, typer.Option(help="Write OUT.pem (and OUT.key unless --csr is given).")],
    city: Annotated[str | None, typer.Option(help="City, for node/operator/provider.")] = None,
    code: Annotated[str | None, typer.Option(help="Bank institution code (or aggregator name).")] = None,
    uscc: Annotated[str | None, typer.Option(help="Enterprise USCC.")] = None,
    provider_id: Annotated[str | None, typer.Option(help="Provider id.")] = None,
    categories: Annotated[str | None, typer.Option(help="Provider categories, comma separated.")] = None,
    csr: Annotated[Path | None, typer.Option(help="Issue for this certificate request (PEM).")] = None,
    dns: Annotated[list[str] | None, typer.Option(help="Extra DNS names for a server.")] = None,
) -> None:
    """Issue a certificate whose role is bound in (the CA decides the role, never the request)."""
    with errors():
        ca = CertificateAuthority.load(ca_dir)
        r = build_role(role, city, code, uscc, provider_id, categories)
        if csr is not None:
            try:
                request = x509.load_pem_x509_csr(csr.read_bytes())
            except ValueError:
                fail(f"{csr} is not a PEM certificate request")
            cert = ca.issue_from_csr(request, r, dns_names=dns or ())
            write_public(out.with_suffix(".pem"), cert_to_pem(cert))
        elif r.kind is RoleKind.LOGKEY:
            from creditnet.chain.keys import LogKey

            LogKey.issue(ca, r.subject).save(out.with_suffix(".pem"), out.with_suffix(".key"))
        else:
            key = generate_key()
            cert = ca.issue(r, key.public_key(), dns_names=dns or ())
            Identity.from_objects(key, cert).save(out.with_suffix(".pem"), out.with_suffix(".key"))
        console.print(f"issued {r.uri} → {out.with_suffix('.pem')}")


@app.command("show")
def show(
    cert: Annotated[Path, typer.Argument(help="A certificate (PEM).")],
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show the role, names and validity of a certificate."""
    from creditnet.pki import load_cert, role_of

    with errors():
        c = load_cert(cert)
        info = {
            "role": role_of(c).uri,
            "subject": c.subject.rfc4514_string(),
            "issuer": c.issuer.rfc4514_string(),
            "not_before": c.not_valid_before_utc.isoformat(),
            "not_after": c.not_valid_after_utc.isoformat(),
            "serial": format(c.serial_number, "x"),
        }
        if json_out:
            print_json(info)
        else:
            for k, v in info.items():
                console.print(f"[bold]{k:>10}[/] {v}")


@app.command("revoke")
def revoke_cmd(
    network: Annotated[Path, typer.Option("--network", help="A running `network up` state dir.")],
    cert: Annotated[Path | None, typer.Option(help="The certificate to revoke (PEM).")] = None,
    serial: Annotated[
        str | None, typer.Option(help="Its serial (hex), if it is one of the state dir's certificates.")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Revoke a certificate network-wide: a new directory version, signed and published.

    The newest directory the servers hold (verified from the pinned first
    one) gets the certificate's serial and SPKI SHA-256 in its revocation
    list, is signed with the state dir's governance keys and offered to
    every node and the aggregator; a server missed catches up from its
    peers within one refresh interval. Exit 0 when every server holds the
    new version, 1 when any refused it or was unreachable, 2 on bad usage.
    """
    import asyncio

    from creditnet.cli.common import read_network
    from creditnet.directory.revoke import find_certificate, revoke
    from creditnet.network import NetworkLayout
    from creditnet.pki import load_cert

    with errors():
        if (cert is None) == (serial is None):
            raise ValueError("give exactly one of --cert PEM or --serial HEX")
        layout = NetworkLayout.load(read_network(network).parent)
        if cert is not None:
            target = load_cert(cert)
        else:
            try:
                number = int(str(serial), 16)
            except ValueError:
                raise ValueError("--serial is not hexadecimal") from None
            target = find_certificate(layout, number)
        done = asyncio.run(revoke(layout, target))
        answers = [
            {"server": a.target, "status": a.status, "version": a.version}
            | ({"detail": a.detail} if a.detail else {})
            for a in done.answers
        ]
        if json_out:
            print_json(
                {
                    "serial": f"{target.serial_number:x}",
                    "version": done.directory.version,
                    "file": str(done.file),
                    "servers": answers,
                }
            )
        else:
            console.print(
                f"revoked serial {target.serial_number:x} in directory version {done.directory.version} "
                f"({done.file})"
            )
            for a in done.answers:
                console.print(
                    f"{a.target}: " + (f"holds version {a.version}" if a.ok else f"{a.status} {a.detail}")
                )
        if not all(a.ok and a.version == done.directory.version for a in done.answers):
            raise typer.Exit(1)
