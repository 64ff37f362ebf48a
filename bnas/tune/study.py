"""Studies in optuna's RDB storage, and the pruners and samplers that drive them.

The storage is SQLite by default (``sqlite:///<out>/tune.db``) or any SQLAlchemy database URL
(``postgresql://user@host/db``, ``mysql+pymysql://...``): optuna's own distributed mode, where
every ``bnas tune`` process on every machine that opens the same study takes the next trial
from the shared storage. Trial numbers are assigned by the storage, so workers never repeat one.
"""
from __future__ import annotations

import secrets
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna

from ..errors import BnasError
from ..registry import Registry
from .setup import DIRECTIONS, STUDY_ATTR, TuneSetup

#: Seconds a SQLite connection waits for another worker's write lock before failing.
SQLITE_TIMEOUT_S = 60
#: Seconds between a running trial's heartbeats; a trial silent for twice as long (its worker
#: was killed) is marked failed when another worker starts a trial.
HEARTBEAT_S = 60


def storage_url(storage: str | None, out: Path) -> str:
    """The database URL: ``storage`` as given, a plain file path as SQLite, else ``<out>/tune.db``."""
    if storage is None:
        out.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{(out / 'tune.db').resolve()}"
    if "://" not in storage:
        return f"sqlite:///{Path(storage).expanduser().resolve()}"
    return storage


def _shown(url: str) -> str:
    """``url`` with any password masked, for messages."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not parseable: the caller's error says so
        return url


def _creation_race(exc: Exception) -> bool:
    """Whether ``exc`` comes from another worker creating the same tables at this instant."""
    text = str(exc).lower()
    return "already exists" in text or "unique constraint" in text or "duplicate" in text


def open_storage(url: str, attempts: int = 5) -> optuna.storages.RDBStorage:
    """Connect to the study database now, so a bad URL fails before any training (one line).

    Workers starting together on a new database race to create its tables; the losers retry.
    """
    engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if url.startswith("sqlite") else {}
    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs,
                                                  heartbeat_interval=HEARTBEAT_S)
        except Exception as exc:  # sqlalchemy/driver errors of every kind: one line for the user
            if attempt + 1 < attempts and _creation_race(exc):
                time.sleep(0.5 * (attempt + 1))
                continue
            reason = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
            if isinstance(exc.__cause__, ImportError):  # the database driver is not installed
                reason += f" ({exc.__cause__})"
            raise BnasError(f"cannot open study storage {_shown(url)}: {reason}") from None
    raise AssertionError("unreachable")


# -- pruners ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PrunerOptions:
    """``epochs``: the proxy budget (the largest resource); ``startup``: trials that complete
    before the median rule prunes anything."""

    epochs: int
    startup: int


PRUNERS: Registry[Callable[[PrunerOptions], optuna.pruners.BasePruner]] = Registry("pruner")
PRUNERS.add("median", lambda o: optuna.pruners.MedianPruner(n_startup_trials=o.startup))
PRUNERS.add("hyperband", lambda o: optuna.pruners.HyperbandPruner(min_resource=1,
                                                                  max_resource=max(o.epochs, 1)))
PRUNERS.add("none", lambda o: optuna.pruners.NopPruner(), aliases=("nop",))

# -- samplers -----------------------------------------------------------------------------------
SAMPLERS: Registry[Callable[[int], optuna.samplers.BaseSampler]] = Registry("sampler")
# constant_liar: a worker treats trials running elsewhere as poor, so parallel workers spread out.
SAMPLERS.add("tpe", lambda seed: optuna.samplers.TPESampler(seed=seed, constant_liar=True))
SAMPLERS.add("random", lambda seed: optuna.samplers.RandomSampler(seed=seed))


def load_setup(storage: optuna.storages.BaseStorage, name: str, wait_s: float = 30.0) -> TuneSetup | None:
    """The setup stored with study ``name``, or None if there is no such study.

    A study another worker is creating this instant may exist without its setup for a moment:
    wait for it (up to ``wait_s``).
    """
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        return None
    deadline = time.monotonic() + wait_s
    while True:
        attrs = storage.get_study_user_attrs(study_id)
        if STUDY_ATTR in attrs:
            return TuneSetup.from_json(attrs[STUDY_ATTR])
        if time.monotonic() > deadline:
            raise BnasError(f"study '{name}' exists but was not made by bnas tune (no setup stored)")
        time.sleep(0.2)


def open_study(storage: optuna.storages.BaseStorage, name: str, setup: TuneSetup, *,
               seed: int) -> tuple[optuna.Study, TuneSetup, bool]:
    """Create study ``name`` with ``setup``, or join it if it exists (then its stored setup wins).

    Returns the study, the setup it runs and whether this process created it. The creator's
    sampler is seeded with ``seed`` (a single-process run is reproducible); a process joining or
    resuming draws a fresh seed, or it would replay the creator's first random samples.
    """
    created = True
    try:
        optuna.create_study(storage=storage, study_name=name,
                            directions=[DIRECTIONS[o] for o in setup.objectives])
        optuna.load_study(study_name=name, storage=storage).set_user_attr(STUDY_ATTR, setup.to_json())
    except optuna.exceptions.DuplicatedStudyError:
        created = False
        setup = load_setup(storage, name)
        seed = secrets.randbits(31)
    options = PrunerOptions(epochs=int(setup.budget.get("epochs") or 1), startup=setup.pruner_startup)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = optuna.load_study(study_name=name, storage=storage,
                                  sampler=SAMPLERS.get(setup.sampler)(seed),
                                  pruner=PRUNERS.get(setup.pruner)(options))
    return study, setup, created
