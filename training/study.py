"""The shared Optuna study of a search: its storage, sampler and pruner, and one worker's trial.

Every worker (a local process or a pod) opens the same study in RDB storage and asks it for its
next trial, so TPE learns from trials finished anywhere. A running trial beats a heartbeat; one
whose worker died goes silent and is marked failed by the next worker that asks
(``search.grace``), so the search goes on without it.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.config import MemberConfig, TrainConfig, ensemble_name, member_base, set_dotted
from training.search_config import ParamSpace

STORAGE_ENV = "ENSEMBLE_STUDY_STORAGE"
STUDY_FILE = "study.db"
# SQLite serialises writers; a worker waits this long for another's write instead of failing.
SQLITE_TIMEOUT_S = 60
CREATE_ATTEMPTS = 5


def storage_url(config: TrainConfig, out_dir: Path, override: str | None = None) -> str:
    """The study's URL: the flag, else $ENSEMBLE_STUDY_STORAGE, else search.storage, else a SQLite
    file next to the run."""
    url = override or os.environ.get(STORAGE_ENV) or config.search.storage
    return url or f"sqlite:///{(out_dir / STUDY_FILE).resolve()}"


def study_name(config: TrainConfig) -> str:
    return config.search.study or f"{ensemble_name(config)}-search"


def _sampler(config: TrainConfig, seed: int) -> Any:
    import optuna

    search = config.search
    if search.sampler == "grid":
        grid = {key: space.grid() for key, space in search.space.items()}
        # The grid's order comes from the seed, so every worker must share it: each grid point's
        # id then names the same values in every worker.
        return optuna.samplers.GridSampler(grid, seed=config.seed)
    if search.sampler == "tpe":
        # A third of the budget (at least 4 trials) is random before TPE models the space.
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(4, search.trials // 3))
    return optuna.samplers.RandomSampler(seed=seed)


def _pruner(config: TrainConfig) -> Any:
    import optuna

    pruner = config.search.pruner
    if pruner == "median":
        # Compare once a few trials have finished, and never before a trial's 3rd epoch.
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=3)
    if pruner == "hyperband":
        epochs = config.members.defaults.fit.epochs
        return optuna.pruners.HyperbandPruner(min_resource=3, max_resource=max(epochs, 4))
    return optuna.pruners.NopPruner()


def open_study(config: TrainConfig, url: str, seed: int) -> Any:
    """The run's study in ``url``, created by the first worker; ``seed`` seeds this worker's sampler
    (workers sharing one seed would draw the same values)."""
    import optuna
    from sqlalchemy.exc import IntegrityError, OperationalError

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    engine: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    for attempt in range(CREATE_ATTEMPTS):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats
                storage = optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=engine,
                    heartbeat_interval=config.search.heartbeat,
                    grace_period=config.search.grace,
                )
            break
        except (OperationalError, IntegrityError):
            # Workers starting together race to create the schema (a locked database, or the
            # alembic version row inserted twice); the loser finds it made on the next try.
            if attempt == CREATE_ATTEMPTS - 1:
                raise
            time.sleep(0.5 * (attempt + 1))
    return optuna.create_study(
        storage=storage,
        study_name=study_name(config),
        direction="minimize",
        sampler=_sampler(config, seed),
        pruner=_pruner(config),
        load_if_exists=True,
    )


def _suggest(trial: Any, key: str, space: ParamSpace) -> Any:
    if space.choices is not None:
        return trial.suggest_categorical(key, space.choices)
    assert space.low is not None
    assert space.high is not None
    if space.integer:
        step = int(space.step) if space.step else 1
        return trial.suggest_int(key, int(space.low), int(space.high), step=step, log=space.log)
    return trial.suggest_float(key, space.low, space.high, step=space.step, log=space.log)


@dataclass
class Trial:
    """One worker's trial of the shared study, kept alive by a heartbeat until it is told."""

    study: Any
    trial: Any
    hparams: MemberConfig
    _stop: threading.Event = field(default_factory=threading.Event)
    _beat: threading.Thread | None = None
    _told: bool = False

    @property
    def number(self) -> int:
        return int(self.trial.number)

    def start_heartbeat(self) -> None:
        storage = self.study._storage
        interval = storage.get_heartbeat_interval()
        trial_id = self.trial._trial_id

        def beat() -> None:
            while not self._stop.wait(interval):
                storage.record_heartbeat(trial_id)

        storage.record_heartbeat(trial_id)
        self._beat = threading.Thread(target=beat, name=f"trial-{self.number}-heartbeat", daemon=True)
        self._beat.start()

    def report(self, value: float, epoch: int) -> bool:
        """Report ``value`` at ``epoch``; True when the pruner says to stop this trial."""
        self.trial.report(value, epoch)
        return bool(self.trial.should_prune())

    def finish(self, state: str, value: float | None = None) -> None:
        """Tell the study: ``complete`` (with ``value``), ``pruned`` or ``fail``; the first call counts."""
        import optuna

        if self._told:
            return
        self._told = True
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        states = {
            "complete": optuna.trial.TrialState.COMPLETE,
            "pruned": optuna.trial.TrialState.PRUNED,
            "fail": optuna.trial.TrialState.FAIL,
        }
        try:
            self.study.tell(self.trial, value if state == "complete" else None, state=states[state])
        except RuntimeError as exc:
            # GridSampler calls study.stop() once its grid is covered, which only optimize() allows;
            # tell has stored the trial's state by then, and the run's trial count ends the search.
            if "Study.stop" not in str(exc):
                raise


def ask(config: TrainConfig, out_dir: Path, index: int, seed: int, url: str | None = None) -> Trial:
    """Ask the shared study for member ``index``'s trial and its hyperparameters; stale trials of
    dead workers are marked failed first."""
    import optuna

    study = open_study(config, storage_url(config, out_dir, url), seed)
    with warnings.catch_warnings():
        # Optuna expects heartbeats from Study.optimize; ask/tell workers beat through Trial.
        # (both warn, and fail_stale_trials is marked experimental).
        warnings.simplefilter("ignore")
        optuna.storages.fail_stale_trials(study)
        trial = study.ask()
    trial.set_user_attr("member_index", index)
    tree = member_base(config, index).model_dump()
    for key, space in config.search.space.items():
        set_dotted(tree, key, _suggest(trial, key, space))
    return Trial(study, trial, MemberConfig.model_validate(tree))
