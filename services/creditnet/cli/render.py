"""Human-readable credit reports (rich tables)."""

from __future__ import annotations

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table

from creditnet.domain import Category, City
from creditnet.v2 import records_pb2
from creditnet_bank import Report, SectionStatus

__all__ = [
    "render_report",
    "yuan",
]

_STATUS_STYLE = {
    SectionStatus.OK: "green",
    SectionStatus.NO_RECORDS: "cyan",
    SectionStatus.DENIED: "red",
    SectionStatus.UNAVAILABLE: "yellow",
    SectionStatus.TIMEOUT: "yellow",
    SectionStatus.INVALID: "bold red",
    SectionStatus.NOT_ASKED: "dim",
    SectionStatus.MISSING: "bold red",
}


def yuan(fen: int) -> str:
    return f"¥{fen / 100:,.2f}"


def _date(d: records_pb2.CreditRecord) -> str:
    return f"{d.record_date.year:04d}-{d.record_date.month:02d}-{d.record_date.day:02d}"


def render_report(report: Report, console: Console) -> None:
    p = report.profile
    title = f"{p.name}  {report.enterprise_uscc}" if p else report.enterprise_uscc
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    if p:
        head.add_row("industry", p.industry)
        head.add_row("registered in", City.from_proto(p.home_city).display if p.home_city else "?")
        head.add_row("registered capital", yuan(p.registered_capital_fen))
        head.add_row("founded", f"{p.founded.year:04d}-{p.founded.month:02d}-{p.founded.day:02d}")
    head.add_row("purpose", report.purpose.value)
    head.add_row("query id", report.query_id)
    console.print(Panel(head, title=f"[bold]credit report — {title}[/]", expand=False))

    cities = Table(
        title="per-city answers (each verified: the node's signature, every record's provider"
        " signature, and its credit-chain receipt cosigned by witnesses)"
    )
    for col in ("city", "status", "records", "as of", "latency", "credit chain", "routing", "reason"):
        cities.add_column(col)
    for s in report.sections:
        style = _STATUS_STYLE.get(s.status, "")
        cities.add_row(
            s.city.display if s.in_scope else f"{s.city.display} (outside the scope)",
            f"[{style}]{s.status.value}[/]",
            # Records no provider signed are never shown, only counted.
            f"{len(s.records)} (+{s.withheld_unsigned} unsigned, withheld)"
            if s.withheld_unsigned
            else str(len(s.records)),
            s.as_of.strftime("%Y-%m-%d %H:%M:%S") if s.as_of else "",
            f"{s.latency_ms} ms",
            f"logged #{s.ledger_index} ✓" if s.ledger_index is not None else "",
            s.routing.replace("_", " "),
            s.reason if s.status is not SectionStatus.NOT_ASKED else s.routing_detail,
        )
    console.print(cities)

    ind = report.indicators
    kt = Table(title="key indicators", show_header=False)
    kt.add_column(style="bold")
    kt.add_column()
    kt.add_row(
        "utility arrears",
        f"{ind.utility_max_arrears_months} months max, {yuan(ind.utility_arrears_fen)} owed",
    )
    kt.add_row(
        "social insurance",
        f"{ind.social_insurance_headcount} insured, arrears {ind.social_insurance_arrears_months} months",
    )
    kt.add_row(
        "housing fund",
        f"{ind.housing_fund_headcount} contributors, arrears {ind.housing_fund_arrears_months} months",
    )
    kt.add_row("tax credit grade", f"{ind.tax_grade or '—'} ({ind.tax_grade_year or '—'})")
    kt.add_row(
        "judicial",
        f"{ind.judicial_cases} cases, {ind.judicial_as_defendant} as defendant"
        + (", [bold red]DISHONEST DEBTOR[/]" if ind.dishonest_debtor else ""),
    )
    kt.add_row(
        "penalties", f"{ind.penalties} ({ind.serious_penalties} serious), fines {yuan(ind.penalty_fines_fen)}"
    )
    kt.add_row(
        "loans",
        f"{ind.loans} loans, balance {yuan(ind.loan_balance_fen)}, {ind.overdue_loans} overdue "
        f"(max {ind.max_days_overdue} days)",
    )
    kt.add_row("IP", f"{ind.patents} patents, {ind.ip_pledges} IP pledges")
    kt.add_row("pledged goods", yuan(ind.pledged_goods_value_fen))
    console.print(kt)

    per = Table(title="records by category and city")
    per.add_column("category")
    scope = report.scope
    for c in scope:
        per.add_column(c.display, justify="right")
    for cat in Category:
        row = report.by_category.get(cat, {})
        per.add_row(cat.value, *(str(len(row.get(c, []))) or "" for c in scope))
    console.print(per)
    if report.missing_cities:
        console.print(
            Group(
                f"[yellow]missing cities:[/] {', '.join(c.value for c in report.missing_cities)} "
                "— the report is incomplete for them"
            )
        )
    if report.unexpected_cities:
        console.print(
            f"[bold red]sections outside the query's scope:[/] "
            f"{', '.join(c.value for c in report.unexpected_cities)} — refused, not opened"
        )
