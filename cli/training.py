"""The training commands (``train``, ``train-member``, ``assemble``), registered on the ``ensemble`` app.

``train`` = validate config and data, ``train-member`` for every index in parallel processes,
then ``assemble`` (and log the run to the registry). The two steps are commands of their own so a
cluster can run them as an Indexed Job and a follow-up Job.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from contracts.errors import one_line

if TYPE_CHECKING:
    from rich.console import Console

    from training.config import TrainConfig

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML training config (see examples/).", show_default=False),
]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output directory of the run.")]


def _fail(message: str, code: int = 2) -> typer.Exit:
    print(f"error: {message}", file=sys.stderr)
    return typer.Exit(code)


def _console() -> Console:
    from rich.console import Console

    console = Console()
    # Off a terminal (CI logs, pipes) rich assumes 80 columns and would squeeze the report table.
    return console if console.is_terminal else Console(width=160)


def split_line(config: TrainConfig) -> str:
    """How members are validated, in one line for the console."""
    if config.data.split.method == "holdout":
        return "every member early-stops on the validation split; weights are fitted on it (holdout)"
    folds = config.fold_count
    extra = ", plus their out-of-bag rows" if config.members.bootstrap else ""
    return (
        f"cross-fitting: {folds} folds, member i early-stops on fold i % {folds} and never trains on it; "
        f"weights are learned on the rows members never trained on{extra}"
    )


def _track(
    out_dir: Path, tracking_uri: str | None, register: bool, alias: str | None, console: Console
) -> bool:
    """Log the run to the registry; a missing registry module is a warning, a failure is an error."""
    from registry.defaults import tracking_uri as resolve_uri

    try:
        from registry.tracking import record_training, training_summary
    except ImportError:
        console.print("[yellow]warning:[/] registry tracking is not available; the run was not logged")
        return True
    uri = resolve_uri(tracking_uri)
    try:
        logged = record_training(out_dir, uri, register=register, alias=alias)
    except Exception as exc:  # the run itself is complete; report the registry's problem in one line
        reason = one_line(exc)
        print(f"error: logging to {uri} failed: {reason}", file=sys.stderr)
        return False
    for line in training_summary(logged):
        print(line, flush=True)
    return True


def _assemble_and_report(out_dir: Path, console: Console) -> None:
    from contracts.run_layout import RunLayout
    from training.assemble import assemble
    from training.report import print_report

    layout = RunLayout(out_dir)
    report = assemble(out_dir)
    print_report(report, console)
    console.print(f"Manifest: {layout.manifest}", f"Report: {layout.report}", sep="   ")
    console.print(f"Plots: {layout.plots}")


TrackingUriOpt = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns.db in the "
        "working directory, artifacts in ./mlartifacts).",
        show_default=False,
    ),
]
NoTrackOpt = Annotated[bool, typer.Option("--no-track", help="Do not log the run to MLflow.")]
RegisterOpt = Annotated[bool, typer.Option("--register", help="Register the members and the manifest.")]
AliasOpt = Annotated[
    str | None,
    typer.Option("--alias", help="Point this registry alias at the new ensemble (implies --register)."),
]


def train(
    config: ConfigOpt = None,
    data: Annotated[
        str | None,
        typer.Option(
            help="CSV/Parquet path or sklearn:digits, sklearn:breast_cancer, sklearn:diabetes, penguins.",
            show_default=False,
        ),
    ] = None,
    target: Annotated[
        str | None, typer.Option(help="Target column(s), comma-separated.", show_default=False)
    ] = None,
    task: Annotated[
        str | None, typer.Option(help="classification or regression (default: inferred).", show_default=False)
    ] = None,
    members: Annotated[
        int | None,
        typer.Option(help="Number of members (with a search: candidates kept).", show_default=False),
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs per member.", show_default=False)] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed of the split and the members.", show_default=False)
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(help="Parallel worker processes (default: number of cores).", show_default=False),
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Ensemble name (default: from the data).", show_default=False)
    ] = None,
    out: OutOpt = Path("runs/latest"),
    tracking_uri: TrackingUriOpt = None,
    no_track: NoTrackOpt = False,
    register: RegisterOpt = False,
    alias: AliasOpt = None,
) -> None:
    """Train an ensemble: every member in parallel, then assemble, report and log it."""
    from training.errors import TrainingError
    from training.prepare import prepare_run, resolve_config
    from training.runner import available_cores, run_members

    overrides: dict[str, Any] = {
        "data.source": data,
        "data.targets": target,
        "data.task": task,
        "members.defaults.fit.epochs": epochs,
        "seed": seed,
        "name": name,
    }
    console = _console()
    try:
        if workers is not None and workers < 1:
            raise TrainingError("--workers must be at least 1")
        resolved = resolve_config(config, overrides, members)
        prepare_run(resolved, out)
        count = resolved.candidate_count
        console.print(f"Training {count} members of [bold]{resolved.name}[/] into {out}")
        console.print(f"  {split_line(resolved)}", highlight=False)
        try:
            run_members(out, list(range(count)), workers or available_cores(), console)
        except TrainingError as exc:
            if not resolved.search.trials:
                raise
            # A search goes on without its failed trials: the study marked them failed.
            console.print(f"[yellow]warning:[/] {exc}; assembling the trials that finished", highlight=False)
        _assemble_and_report(out, console)
    except TrainingError as exc:
        raise _fail(str(exc)) from None
    if not no_track and not _track(out, tracking_uri, register or alias is not None, alias, console):
        raise typer.Exit(1)


def train_member(
    index: Annotated[
        list[int],
        typer.Option("--index", "-i", help="Member index, from 0; repeat to train several in this process."),
    ],
    out: OutOpt = Path("runs/latest"),
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="Config to write to <out>/config.yaml first (default: use the one there).",
            show_default=False,
        ),
    ] = None,
    threads: Annotated[
        int | None, typer.Option(help="TensorFlow threads (default: all).", show_default=False)
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue from the member's checkpoint and its epoch (after a crash or an eviction); "
            "a member that finished is left as it is.",
        ),
    ] = False,
    study_storage: Annotated[
        str | None,
        typer.Option(
            "--study-storage",
            help="Optuna storage URL of the search's shared study, e.g. sqlite:///study.db or "
            "postgresql://... (default: $ENSEMBLE_STUDY_STORAGE, else search.storage, else "
            "<out>/study.db).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Train one member (a Kubernetes Indexed Job runs one per pod with --index $JOB_COMPLETION_INDEX).

    Several --index values train those members one after another in this process.
    """
    from contracts.run_layout import RunLayout
    from training.errors import TrainingError
    from training.layout import load_config
    from training.prepare import prepare_run, resolve_config
    from training.search_config import storage_problem

    try:
        problem = storage_problem(study_storage) if study_storage is not None else None
        if problem:
            raise TrainingError(f"--study-storage: {problem}")
        layout = RunLayout(out)
        if config is not None:
            prepare_run(resolve_config(config, {}, None), out)
        elif not layout.config.is_file():
            raise TrainingError(f"{layout.config} not found: pass --config or run `ensemble train` first")
        count = load_config(layout).candidate_count
        bad = [i for i in index if not 0 <= i < count]
        if bad:
            raise TrainingError(f"--index {bad[0]} is out of range: members are 0 to {count - 1}")
        from training.member import train_member as run

        for i in index:
            if resume and layout.member(i).record.is_file():
                print(f"member {i}: already trained, nothing to resume", flush=True)
                continue
            record = run(out, i, threads=threads, resume=resume, study_storage=study_storage)
            print(
                f"member {i}: {record.model_name} v{record.version} "
                f"({record.epochs_trained} epochs, {record.train_seconds:.1f}s)",
                flush=True,
            )
    except TrainingError as exc:
        raise _fail(str(exc)) from None


def assemble(
    out: OutOpt = Path("runs/latest"),
    tracking_uri: TrackingUriOpt = None,
    no_track: NoTrackOpt = False,
    register: RegisterOpt = False,
    alias: AliasOpt = None,
) -> None:
    """Weights, test report, manifest, models.config and plots, after every member has finished."""
    from training.errors import TrainingError

    console = _console()
    try:
        _assemble_and_report(out, console)
    except TrainingError as exc:
        raise _fail(str(exc)) from None
    if not no_track and not _track(out, tracking_uri, register or alias is not None, alias, console):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add this package's commands to ``app``; heavy imports stay inside each command."""
    app.command("train")(train)
    app.command("train-member")(train_member)
    app.command("assemble")(assemble)
