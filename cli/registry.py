"""The registry commands, registered on the ``ensemble`` app.

``registry list``, ``registry show``, ``promote`` and ``rollback``; ``sync`` (cli/sync.py) shares
this module's ``--tracking-uri`` option and error handling. mlflow and rich are imported inside the
commands, so ``ensemble --help`` stays instant. Every RegistryError becomes a one-line message on
stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from collections.abc import Sequence

    from rich.console import Console
    from rich.table import Table

    from registry.aliases import AliasMove
    from registry.client import MlflowClient
    from registry.online_gate import OnlineThresholds

TrackingUri = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns.db).",
        show_default=False,
    ),
]


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Turn a RegistryError into ``error: ...`` on stderr and its exit code."""
    from registry.errors import RegistryError

    try:
        yield
    except RegistryError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None


def connect_client(tracking_uri: str | None) -> MlflowClient:
    """A client for ``tracking_uri`` (the default store when None); mlflow is imported only now."""
    from registry.client import connect

    return connect(tracking_uri)


def _console() -> Console:
    from rich.console import Console

    # Piped output would otherwise wrap at 80 columns, which folds every table cell.
    console = Console()
    return console if console.is_terminal else Console(width=160)


def _metric_order(metric: str) -> tuple[int, str]:
    """The metrics a promotion usually looks at first."""
    preferred = ("test_nll", "test_accuracy", "test_rmse", "test_mae")
    return (preferred.index(metric) if metric in preferred else len(preferred), metric)


def _fmt_metrics(metrics: dict[str, float], limit: int = 4) -> str:
    return ", ".join(f"{key}={value:.4g}" for key, value in sorted(metrics.items())[:limit])


def registry_list(
    tracking_uri: TrackingUri = None,
    members: Annotated[bool, typer.Option("--members", help="Also list the members' models.")] = False,
) -> None:
    """List registered ensembles: versions, latest, aliases."""
    from rich.table import Table

    from registry.views import list_models

    with one_line_errors():
        rows = list_models(connect_client(tracking_uri), include_members=members)
    if not rows:
        typer.echo("no registered ensembles")
        return
    table = Table("name", "kind", "versions", "latest", "aliases", "updated")
    for row in rows:
        aliases = ", ".join(f"{alias}→{version}" for alias, version in sorted(row.aliases.items()))
        table.add_row(row.name, row.kind, str(row.versions), str(row.latest or ""), aliases, row.updated)
    _console().print(table)


def registry_show(
    ref: Annotated[str, typer.Argument(help="NAME, NAME@ALIAS or NAME/VERSION.")],
    tracking_uri: TrackingUri = None,
) -> None:
    """Show an ensemble's versions and alias history, or one version's manifest in detail."""
    from registry.resolve import parse_ref

    console = _console()
    with one_line_errors():
        parsed = parse_ref(ref)
        client = connect_client(tracking_uri)
        if parsed.alias is None and parsed.version is None:
            _show_ensemble(console, client, parsed.name)
        else:
            _show_version(console, client, parsed.name, parsed.alias, parsed.version)


def _history_table(moves: Sequence[AliasMove]) -> Table:
    from rich.table import Table

    table = Table("when (UTC)", "alias", "from", "to", "action", "who", "why", title="alias history")
    for move in moves:
        action = f"{move.action} (forced)" if move.forced else move.action
        previous = "—" if move.from_version is None else str(move.from_version)
        table.add_row(
            move.when.replace("T", " ")[:19],
            move.alias,
            previous,
            str(move.to_version),
            action,
            move.who,
            move.why,
        )
    return table


def _show_ensemble(console: Console, client: MlflowClient, name: str) -> None:
    from rich.table import Table

    from registry.aliases import history
    from registry.views import version_rows

    rows = version_rows(client, name)
    metric_names = sorted({key for row in rows for key in row.metrics}, key=_metric_order)[:4]
    table = Table("version", "aliases", *metric_names, "members", "test data", "created (UTC)", title=name)
    for row in rows:
        # Member models are named <ensemble>-m<i>: the suffix is enough inside this table.
        members = " ".join(
            f"{member.removeprefix(name + '-')}/{version}" for member, version in sorted(row.members.items())
        )
        metrics = [f"{row.metrics[key]:.4g}" if key in row.metrics else "" for key in metric_names]
        table.add_row(
            str(row.version),
            ", ".join(row.aliases),
            *metrics,
            members,
            row.test_fingerprint[:8],
            row.created,
        )
    console.print(table)
    moves = history(client, name)
    if moves:
        console.print(_history_table(moves))


def _show_version(
    console: Console, client: MlflowClient, name: str, alias: str | None, version: int | None
) -> None:
    from rich.table import Table

    from registry.aliases import history
    from registry.promotion import gate_records
    from registry.resolve import load_manifest, version_for_alias
    from registry.views import member_metrics

    resolved = version if version is not None else version_for_alias(client, name, alias or "")
    manifest = load_manifest(client, name, resolved)
    title = f"{name} version {resolved}" + (f" (@{alias})" if alias else "")
    members = Table("member", "version", "weight", "metrics", title=title)
    for member in manifest.members:
        metrics = member_metrics(client, member.name, member.version)
        members.add_row(member.name, str(member.version), f"{member.weight:.4f}", _fmt_metrics(metrics))
    console.print(members)
    combiner = manifest.combiner
    console.print(
        f"combiner: {combiner.method}, quorum {combiner.min_members} member(s)"
        f" / weight {combiner.min_weight:g}"
    )
    console.print(f"metrics: {_fmt_metrics(manifest.metrics, limit=20) or '—'}")
    provenance = manifest.provenance
    console.print(
        f"data: {provenance.dataset or '—'} (fingerprint {provenance.dataset_fingerprint[:12] or '—'}, "
        f"test {provenance.test_fingerprint[:12] or '—'}); parent run {provenance.parent_run_id or '—'}"
    )
    inputs = ", ".join(f"{spec.name}:{spec.dtype}{spec.shape}" for spec in manifest.inputs)
    outputs = ", ".join(f"{spec.name}:{spec.kind}" for spec in manifest.outputs)
    console.print(f"inputs: {inputs}\noutputs: {outputs}")
    gates = gate_records(client, name, resolved)
    if gates:
        table = Table("alias", "gate", "decision", "reason", "when (UTC)", "who", title="promotion gates")
        for record in gates:
            decision = "passed" if record.passed else ("refused, forced" if record.forced else "refused")
            table.add_row(
                record.alias,
                record.gate,
                decision,
                record.reason,
                record.when.replace("T", " ")[:19],
                record.who,
            )
        console.print(table)
    moves = [
        move
        for move in history(client, name, alias)
        if alias is not None or resolved in (move.from_version, move.to_version)
    ]
    if moves:
        console.print(_history_table(moves))


def promote(
    name: Annotated[str, typer.Argument(help="Ensemble (registered model) name.")],
    version: Annotated[int, typer.Option("--version", min=1, help="Manifest version to promote.")],
    alias: Annotated[str, typer.Option("--alias", help="Alias to move, e.g. champion.")] = "champion",
    metric: Annotated[str, typer.Option("--metric", help="Held-out metric the gate compares.")] = "test_nll",
    force: Annotated[bool, typer.Option("--force", help="Move even if the gate refuses (recorded).")] = False,
    reason: Annotated[str, typer.Option("--reason", help="Why, for the history.")] = "",
    online: Annotated[
        str | None,
        typer.Option(
            "--online",
            metavar="GATEWAY_URL",
            help="Also require live evidence: the gateway's comparison of ALIAS (its champion) with "
            "VERSION (its challenger), e.g. http://gateway:8501.",
        ),
    ] = None,
    min_requests: Annotated[
        int | None, typer.Option("--min-requests", help="With --online: paired requests needed [200].")
    ] = None,
    min_agreement: Annotated[
        float | None, typer.Option("--min-agreement", help="With --online: least argmax agreement [0.95].")
    ] = None,
    max_rel_diff: Annotated[
        float | None,
        typer.Option(
            "--max-rel-diff", help="With --online: largest regression mean relative difference [0.05]."
        ),
    ] = None,
    max_p99_ratio: Annotated[
        float | None,
        typer.Option("--max-p99-ratio", help="With --online: largest challenger/champion p99 ratio [1.25]."),
    ] = None,
    max_error_rate_increase: Annotated[
        float | None,
        typer.Option(
            "--max-error-rate-increase",
            help="With --online: largest challenger error rate over the champion's [0.01].",
        ),
    ] = None,
    gateway_token: Annotated[
        str | None,
        typer.Option(
            "--gateway-token",
            envvar="GATEWAY_AUTH_TOKEN",
            show_default=False,
            help="With --online: the gateway's bearer token, if it requires one.",
        ),
    ] = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Point ALIAS at VERSION if its held-out metric is at least as good, on the same test data.

    With --online, the gateway's live comparison must also show enough paired traffic, agreement,
    error rate and p99 within bounds. Every gate's decision is recorded on VERSION.
    """
    from registry import promotion

    thresholds = _online_thresholds(
        online,
        {
            "min_requests": min_requests,
            "min_agreement": min_agreement,
            "max_rel_diff": max_rel_diff,
            "max_p99_ratio": max_p99_ratio,
            "max_error_rate_increase": max_error_rate_increase,
        },
    )
    with one_line_errors():
        check = None
        if online is not None and thresholds is not None:
            from registry.online_gate import check_gateway_url, fetch_evidence

            evidence = fetch_evidence(check_gateway_url(online), name, token=gateway_token)
            check = promotion.OnlineCheck(evidence, thresholds)
        result = promotion.promote(
            connect_client(tracking_uri),
            name,
            version,
            alias,
            metric=metric,
            force=force,
            reason=reason,
            online=check,
        )
    if result.move is None:
        typer.echo(result.verdict.reason)
        return
    previous = "nothing" if result.move.from_version is None else f"version {result.move.from_version}"
    forced = " (forced over the gate)" if result.move.forced else ""
    typer.echo(f"{name}@{alias}: {previous} -> version {version}{forced}: {result.verdict.reason}")
    if result.online is not None:
        typer.echo(f"{name}@{alias}: {result.online.reason}")


def _online_thresholds(online: str | None, given: dict[str, float | int | None]) -> OnlineThresholds | None:
    """The online gate's thresholds (defaults where not given); exit 2 for a bad or orphan one."""
    from pydantic import ValidationError

    from registry.online_gate import OnlineThresholds

    chosen = {key: value for key, value in given.items() if value is not None}
    flags = ", ".join(f"--{key.replace('_', '-')}" for key in chosen)
    if online is None:
        if chosen:
            typer.echo(f"error: {flags} need --online GATEWAY_URL", err=True)
            raise typer.Exit(2)
        return None
    try:
        return OnlineThresholds(**chosen)
    except ValidationError as exc:
        from contracts.errors import validation_problem

        where, message = validation_problem(exc)
        flag = "--" + where.split(".")[0].replace("_", "-")
        typer.echo(f"error: {flag}: {message}", err=True)
        raise typer.Exit(2) from None


def rollback(
    name: Annotated[str, typer.Argument(help="Ensemble (registered model) name.")],
    alias: Annotated[str, typer.Option("--alias", help="Alias to move back.")] = "champion",
    reason: Annotated[str, typer.Option("--reason", help="Why, for the history.")] = "",
    tracking_uri: TrackingUri = None,
) -> None:
    """Move ALIAS back to the version it pointed at before its last move."""
    from registry import promotion

    with one_line_errors():
        move = promotion.rollback(connect_client(tracking_uri), name, alias, reason=reason)
    typer.echo(f"{name}@{alias}: version {move.from_version} -> version {move.to_version} (rollback)")


def register(app: typer.Typer) -> None:
    """Add this package's commands to ``app``; heavy imports stay inside each command."""
    registry_app = typer.Typer(help="Registered ensembles: list them, show versions and alias history.")
    registry_app.command("list")(registry_list)
    registry_app.command("show")(registry_show)
    app.add_typer(registry_app, name="registry")
    app.command("promote")(promote)
    app.command("rollback")(rollback)
