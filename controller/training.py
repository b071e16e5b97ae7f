"""Training runs for a command: which specs to train, executors that train them, one writer of the database.

:func:`run_trainings` is what ``nnflash train`` does below the CLI. It checks every spec against the
dataset (input shape, classes), skips what is done (an ``ok`` training of the same key -- spec id,
dataset, protocol hash, seed), gives up on a spec after ``max_attempts`` failed or diverged
trainings of that key, and hands the rest to an executor. The executor yields one
:class:`TrainingOutcome` per spec as each finishes; this process alone stores them: the final
weights first (atomically, under ``weights_dir``), then one row per training, committed at once.
A failure is a stored result, never a crash of the batch: ``diverged`` (NaN or infinite loss, with
the engine's reason), ``failed`` (an exception in the training, a lost worker or Ray task).

Executors:

- :class:`LocalExecutor` (the default). With one worker the trainings run in this process, one after
  another: the dataset is already in memory here, torch's intra-op threads already use every core
  of a CPU, and Ctrl-C lands where the database is written. With ``workers > 1`` each training runs
  in one of ``workers`` spawned subprocesses (a fork of a process holding torch's thread pools is
  unsafe), each receiving the dataset once, using ``cores // workers`` threads, and on CUDA its own
  GPU (worker ``i`` takes ``cuda:i mod count``): one process per GPU.
- :class:`RayExecutor`: each training a Ray task (``num_gpus=1`` where the cluster has GPUs), the
  dataset put in the object store once (``ray.put``), results consumed with ``ray.wait`` as they
  finish. ``import ray`` happens only inside it (``pip install 'nnflash[cluster]'``).

Resume: the engine writes a checkpoint after every epoch (``weights_dir/checkpoints``); a spec
interrupted by Ctrl-C (or a killed process) resumes from its last epoch on the next run, which is
the same command again. Under Ray the checkpoint path is this machine's: on a multi-node cluster
it helps only where the workers share that filesystem; elsewhere an interrupted spec restarts.

Ctrl-C (``KeyboardInterrupt`` on the main thread, also when an observer raises it) stops the run:
workers are ended, nothing half-written stays in the database (each row is one committed insert,
written after its weights), and the result says ``interrupted``.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import queue
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Protocol, Union

from nnflash.controller.errors import ConfigError
from nnflash.controller.store import ResultsDB
from nnflash.models.datasets import Dataset, load_dataset
from nnflash.models.metrics import compute_metrics
from nnflash.models.spec import AnySpec, parse_spec
from nnflash.models.training import (
    EpochInfo,
    TrainingError,
    TrainingResult,
    check_compatible,
    resolve_device,
    train_spec,
)
from nnflash.models.training_protocol import TrainingProtocol

__all__ = [
    "DEFAULT_MAX_ATTEMPTS",
    "Executor",
    "LocalExecutor",
    "RayExecutor",
    "TrainingJob",
    "TrainingObserver",
    "TrainingOutcome",
    "TrainingPlan",
    "TrainingRunResult",
    "make_executor",
    "run_trainings",
    "weights_dir_for",
]

DEFAULT_MAX_ATTEMPTS = 2
#: Training throughput x forward MACs (images/s x MACs) of the engine on the 2-core development CPU
#: (torch 2.13, 28x28 grey input: 7.3M MACs at 499 images/s, 59M at 57): the estimate before any
#: training of this database has finished on this device.
CPU_MAC_IMAGES_PER_S = 3.5e9


def weights_dir_for(db_path: str | Path) -> Path:
    """Default folder of trained weights and checkpoints: ``<db stem>-weights`` beside the database."""
    p = Path(db_path)
    return p.parent / f"{p.stem}-weights"


# ------------------------------------------------------------------------------------ records


@dataclass(frozen=True)
class TrainingJob:
    """One training to run: the spec (canonical JSON, so it travels to any process) and its checkpoint."""

    spec_id: str
    spec_json: str
    checkpoint_path: Optional[str]


@dataclass
class TrainingOutcome:
    """What an executor hands back: the engine's result (``ok``/``diverged``) or ``failed`` with an error."""

    spec_id: str
    status: str
    result: Optional[TrainingResult] = None
    error: Optional[str] = None


@dataclass
class TrainingPlan:
    """What a run will do, reported once before any training starts."""

    todo: list[str]  # spec ids to train, in order
    done: list[str]  # already trained (ok) for this key: skipped
    gave_up: list[str]  # max_attempts failed/diverged trainings stored: skipped
    train_images: int  # per spec: training images x epochs
    estimate_s: float  # rough wall time of the whole plan (see run_trainings)
    estimate_basis: str  # where the estimate comes from, in words


@dataclass
class TrainingRunResult:
    planned: int = 0
    ok: int = 0
    diverged: int = 0
    failed: int = 0
    skipped: int = 0
    gave_up: int = 0
    interrupted: bool = False
    wall_s: float = 0.0
    rows: list[dict[str, Any]] = field(default_factory=list)  # every spec of the input, in order of completion


class TrainingObserver:
    """What a training run reports; every method a no-op here. All calls come on the caller's thread."""

    def planned(self, plan: TrainingPlan) -> None:
        """Once, before any training starts."""

    def skipped(self, row: dict[str, Any]) -> None:
        """A spec not trained (``status`` the stored one, ``skipped`` ``done`` or ``gave_up``)."""

    def epoch(self, spec_id: str, info: EpochInfo) -> None:
        """One epoch of ``spec_id`` finished (not reported by every executor)."""

    def trained(self, row: dict[str, Any]) -> None:
        """One training finished and is stored (``status`` ``ok``, ``diverged`` or ``failed``)."""

    def closed(self) -> None:
        """The run is over (also after Ctrl-C or an error)."""


def _row(spec_id: str, outcome: TrainingOutcome, weights_path: Optional[str]) -> dict[str, Any]:
    r = outcome.result
    row: dict[str, Any] = {
        "spec_id": spec_id,
        "status": outcome.status,
        "val_accuracy": r.val_accuracy if r else None,
        "test_accuracy": r.test_accuracy if r else None,
        "error": outcome.error if outcome.error is not None else (r.reason if r else None),
    }
    if r is not None:
        row.update(
            epochs=r.epochs_done,
            train_loss=r.train_loss,
            wall_s=round(r.wall_s, 3),
            images_per_s=round(r.images_per_s, 1),
            torch_device=r.torch_device,
            resumed_from_epoch=r.resumed_from_epoch,
        )
    row["weights_path"] = weights_path
    return row


# ------------------------------------------------------------------------------------ executors


class Executor(Protocol):
    """Runs trainings and yields their outcomes as they finish (in any order), one per job.

    Closing the iterator early (Ctrl-C, an exception in the consumer) ends what is still running.
    """

    def run(
        self,
        jobs: Sequence[TrainingJob],
        dataset: Dataset,
        protocol: TrainingProtocol,
        seed: int,
        torch_device: str,
        on_epoch: Optional[Any] = None,
    ) -> Iterator[TrainingOutcome]: ...


def _failed(job: TrainingJob, exc: BaseException) -> TrainingOutcome:
    msg = str(exc).strip().splitlines()
    return TrainingOutcome(job.spec_id, "failed", error=f"{type(exc).__name__}: {msg[-1] if msg else ''}".strip())


def _train_job(
    job: TrainingJob,
    dataset: Dataset,
    protocol: TrainingProtocol,
    seed: int,
    torch_device: str,
    on_epoch: Optional[Any] = None,
) -> TrainingOutcome:
    """Train one job here; an exception of the training (not Ctrl-C) becomes a ``failed`` outcome."""
    try:
        spec = parse_spec(job.spec_json)
        result = train_spec(spec, dataset, protocol, seed, torch_device, on_epoch, job.checkpoint_path)
    except Exception as e:  # a failure of one spec is a result, never the end of the batch
        return _failed(job, e)
    return TrainingOutcome(job.spec_id, result.status, result=result)


# Per worker-process state of LocalExecutor (set by the initializer, once per process).
_WORKER: dict[str, Any] = {}


def _worker_init(dataset: Dataset, threads: int, events: Any, counter: Any) -> None:
    import signal

    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it ends the workers
    torch.set_num_threads(threads)
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    _WORKER.update(dataset=dataset, events=events, index=index)


def _worker_job(job: TrainingJob, protocol: TrainingProtocol, seed: int, torch_device: str) -> TrainingOutcome:
    import torch

    dev = torch_device
    if torch_device in ("auto", "cuda") and torch.cuda.is_available():
        dev = f"cuda:{_WORKER['index'] % torch.cuda.device_count()}"
    events = _WORKER["events"]

    def on_epoch(info: EpochInfo) -> None:
        events.put((job.spec_id, info))

    outcome = _train_job(job, _WORKER["dataset"], protocol, seed, dev, on_epoch)
    return outcome


class LocalExecutor:
    """Trainings on this machine: in this process (``workers=1``) or in ``workers`` subprocesses."""

    def __init__(self, workers: int = 1) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ConfigError(f"--workers: must be a positive integer, got {workers!r}")
        self.workers = workers

    def run(
        self,
        jobs: Sequence[TrainingJob],
        dataset: Dataset,
        protocol: TrainingProtocol,
        seed: int,
        torch_device: str,
        on_epoch: Optional[Any] = None,
    ) -> Iterator[TrainingOutcome]:
        if self.workers == 1 or len(jobs) <= 1:
            for job in jobs:
                cb = (lambda info, sid=job.spec_id: on_epoch(sid, info)) if on_epoch else None
                yield _train_job(job, dataset, protocol, seed, torch_device, cb)
            return
        yield from self._run_pool(jobs, dataset, protocol, seed, torch_device, on_epoch)

    def _run_pool(
        self,
        jobs: Sequence[TrainingJob],
        dataset: Dataset,
        protocol: TrainingProtocol,
        seed: int,
        torch_device: str,
        on_epoch: Optional[Any],
    ) -> Iterator[TrainingOutcome]:
        ctx = mp.get_context("spawn")
        n = min(self.workers, len(jobs))
        threads = max(1, (os.cpu_count() or 1) // n)
        events = ctx.Queue()
        counter = ctx.Value("i", 0)
        pool = cf.ProcessPoolExecutor(
            max_workers=n, mp_context=ctx, initializer=_worker_init, initargs=(dataset, threads, events, counter)
        )
        futures = {pool.submit(_worker_job, job, protocol, seed, torch_device): job for job in jobs}
        finished = False
        try:
            pending = set(futures)
            while pending:
                done, pending = cf.wait(pending, timeout=0.5, return_when=cf.FIRST_COMPLETED)
                self._drain(events, on_epoch)
                for fut in done:
                    job = futures[fut]
                    try:
                        yield fut.result()
                    except cf.process.BrokenProcessPool as e:
                        yield _failed(job, RuntimeError(f"worker process lost ({e})"))
                    except Exception as e:
                        yield _failed(job, e)
            finished = True
        finally:
            if not finished:  # Ctrl-C or the consumer stopped: end the workers now (checkpoints are atomic)
                for proc in list(getattr(pool, "_processes", {}).values()):
                    proc.terminate()
            pool.shutdown(wait=True, cancel_futures=True)
            events.close()

    @staticmethod
    def _drain(events: Any, on_epoch: Optional[Any]) -> None:
        while True:
            try:
                spec_id, info = events.get_nowait()
            except queue.Empty:
                return
            if on_epoch is not None:
                on_epoch(spec_id, info)


def _ray_train(
    job: TrainingJob, dataset: Dataset, protocol: TrainingProtocol, seed: int, torch_device: str
) -> TrainingOutcome:
    """The body of a Ray task (``dataset`` arrives from the object store, resolved by Ray)."""
    return _train_job(job, dataset, protocol, seed, torch_device)


def ray_missing_message() -> str:
    return "the ray executor needs Ray: pip install 'nnflash[cluster]' (Python >= 3.10)"


class RayExecutor:
    """Each training a Ray task on a cluster (or a local Ray started here); results as they finish.

    ``address``: ``None`` starts a local Ray (or uses one already initialized in this process);
    ``auto`` joins the cluster this machine belongs to; ``ray://HOST:10001`` connects a client.
    ``init_kwargs`` go to ``ray.init`` (tests cap ``num_cpus`` and ``object_store_memory``). A
    task asks for one GPU where the cluster has any (``num_gpus=1``), else ``cpus_per_task`` CPUs.
    A lost worker or task is a ``failed`` outcome of its spec only (retried on a rerun).
    """

    def __init__(
        self, address: Optional[str] = None, *, cpus_per_task: int = 1, init_kwargs: Optional[dict[str, Any]] = None
    ) -> None:
        self.address = address
        self.cpus_per_task = cpus_per_task
        self.init_kwargs = dict(init_kwargs or {})

    @staticmethod
    def check_available() -> None:
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ConfigError(ray_missing_message()) from None

    def run(
        self,
        jobs: Sequence[TrainingJob],
        dataset: Dataset,
        protocol: TrainingProtocol,
        seed: int,
        torch_device: str,
        on_epoch: Optional[Any] = None,
    ) -> Iterator[TrainingOutcome]:
        self.check_available()
        import ray
        from ray.exceptions import RayError

        started_here = not ray.is_initialized()
        if started_here:
            try:
                ray.init(address=self.address, **self.init_kwargs)
            except Exception as e:  # ConnectionError, auth errors, bad address ...
                where = self.address or "a local Ray"
                raise ConfigError(f"ray: cannot connect to {where}: {type(e).__name__}: {e}") from None
        refs: dict[Any, TrainingJob] = {}
        try:
            gpus = float(ray.cluster_resources().get("GPU", 0))
            if gpus >= 1:
                task = ray.remote(_ray_train).options(num_gpus=1, num_cpus=self.cpus_per_task, max_retries=0)
                device = "cuda" if torch_device == "auto" else torch_device
            else:
                task = ray.remote(_ray_train).options(num_cpus=self.cpus_per_task, max_retries=0)
                device = "cpu" if torch_device == "auto" else torch_device
            data_ref = ray.put(dataset)  # once; every task reads it from the object store
            refs = {task.remote(job, data_ref, protocol, seed, device): job for job in jobs}
            while refs:
                done, _ = ray.wait(list(refs), num_returns=1)
                for ref in done:
                    job = refs.pop(ref)
                    try:
                        yield ray.get(ref)
                    except RayError as e:  # a lost worker, node or task: this spec only
                        yield _failed(job, e)
        finally:
            for ref in refs:
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # already finished or gone
                    pass
            if started_here:
                ray.shutdown()


def make_executor(
    kind: str, *, workers: int = 1, ray_address: Optional[str] = None
) -> Union[LocalExecutor, RayExecutor]:
    """``local`` or ``ray`` (which checks that Ray is installed at once, before any work)."""
    if kind == "local":
        if ray_address is not None:
            raise ConfigError("--ray-address: only with --executor ray")
        return LocalExecutor(workers)
    if kind == "ray":
        if workers != 1:
            raise ConfigError("--workers: only with --executor local (Ray places one task per GPU or CPU)")
        RayExecutor.check_available()
        return RayExecutor(ray_address)
    raise ConfigError(f"--executor: unknown executor {kind!r} (local, ray)")


# ------------------------------------------------------------------------------------ the run


def _estimate(
    store: ResultsDB, todo: Sequence[AnySpec], per_spec_images: int, device: str, parallel: int
) -> tuple[float, str]:
    """Seconds for ``todo``: training images / (c / MACs) per spec, c from this database's earlier
    trainings on the same kind of device (median of images/s x MACs), else the development CPU's."""
    kind = device.split(":")[0]
    products = []
    for row in store.trainings(status="ok")[-200:]:
        rec = row.get("record") or {}
        if str(rec.get("torch_device", "")).split(":")[0] != kind or not rec.get("images_per_s"):
            continue
        spec_row = store.get_spec(row["spec_id"])
        if spec_row is None:
            continue
        try:
            macs = compute_metrics(parse_spec(spec_row["json"]))["macs"]
        except Exception:
            continue
        products.append(float(rec["images_per_s"]) * float(macs))
    if products:
        c = statistics.median(products)
        basis = f"from {len(products)} earlier trainings on {kind} in this database"
    else:
        c = CPU_MAC_IMAGES_PER_S * (20 if kind == "cuda" else 1)
        basis = "a rough guess from the development CPU's speed" + (" (x20 for a GPU)" if kind == "cuda" else "")
    total = 0.0
    for spec in todo:
        macs = max(1.0, float(compute_metrics(spec)["macs"]))
        total += per_spec_images / (c / macs) * 1.15  # evaluation and set-up: about 15% more
    return total / max(1, parallel), basis


def run_trainings(
    specs: Sequence[AnySpec],
    dataset: Union[str, Dataset],
    protocol: TrainingProtocol,
    seed: int,
    db_path: str | Path,
    data_dir: str | Path | None = None,
    torch_device: str = "auto",
    executor: Optional[Executor] = None,
    weights_dir: str | Path | None = None,
    observer: Optional[TrainingObserver] = None,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> TrainingRunResult:
    """Train ``specs`` on ``dataset`` (a name read from ``data_dir``, or a ``Dataset``) under
    ``protocol`` with ``seed``; store each result in the database at ``db_path``. See the module
    docstring. Raises ``TrainingError``/``DatasetError``/``ConfigError`` before any training on bad
    input (a spec that does not fit the dataset, missing files, a bad device)."""
    obs = observer or TrainingObserver()
    t0 = time.perf_counter()
    out = TrainingRunResult()
    try:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"--seed: must be a non-negative integer, got {seed!r}")
        if max_attempts < 1:
            raise ConfigError(f"max_attempts: must be >= 1, got {max_attempts}")
        ex: Executor = executor if executor is not None else LocalExecutor()
        if not isinstance(ex, RayExecutor):
            resolve_device(torch_device)  # a bad device is an error now, not one failure per spec
        ds = dataset if isinstance(dataset, Dataset) else load_dataset(dataset, data_dir)
        for what, want, have in (
            ("train_size", protocol.train_size, len(ds.train_y)),
            ("val_size", protocol.val_size, len(ds.val_y)),
        ):
            if want is not None and want > have:
                raise TrainingError(
                    f"protocol {protocol.name}: {what} {want} but dataset {ds.name}'s split has {have} images"
                )
        unique: dict[str, AnySpec] = {}
        for spec in specs:
            check_compatible(spec, ds)
            unique.setdefault(spec.spec_id, spec)
        wdir = Path(weights_dir) if weights_dir is not None else weights_dir_for(db_path)
        ckdir = wdir / "checkpoints"
        ckdir.mkdir(parents=True, exist_ok=True)
        phash = protocol.protocol_hash
        store = ResultsDB(db_path)
        try:
            store.add_training_protocol(phash, protocol.name, protocol.to_dict())
            for spec in unique.values():
                store.add_spec(spec.spec_id, spec.family, spec.to_json_line())
            done = store.trained_spec_ids(ds.name, phash, seed)
            failures = store.training_failure_counts(ds.name, phash, seed)
            todo = [s for s in unique.values() if s.spec_id not in done and failures.get(s.spec_id, 0) < max_attempts]
            gave_up = [i for i in unique if i not in done and failures.get(i, 0) >= max_attempts]
            n_train = protocol.train_size or len(ds.train_y)
            per_spec = (n_train // protocol.batch_size) * protocol.batch_size * protocol.epochs
            dev_kind = "cuda" if isinstance(ex, RayExecutor) else str(resolve_device(torch_device))
            parallel = ex.workers if isinstance(ex, LocalExecutor) else 1
            est, basis = _estimate(store, todo, per_spec, dev_kind, parallel) if todo else (0.0, "nothing to train")
            plan = TrainingPlan(
                [s.spec_id for s in todo], [i for i in unique if i in done], gave_up, per_spec, est, basis
            )
            out.planned, out.skipped, out.gave_up = len(todo), len(plan.done), len(gave_up)
            obs.planned(plan)
            if done & set(unique):
                stored = {
                    r["spec_id"]: r
                    for r in store.trainings(dataset=ds.name, protocol_hash=phash, seed=seed, status="ok")
                }
                for sid in plan.done:
                    r = stored[sid]
                    row = {
                        "spec_id": sid,
                        "status": "ok",
                        "val_accuracy": r["val_accuracy"],
                        "test_accuracy": r["test_accuracy"],
                        "error": None,
                        "weights_path": r["weights_path"],
                        "skipped": "done",
                    }
                    out.rows.append(row)
                    obs.skipped(row)
            for sid in gave_up:
                row = {
                    "spec_id": sid,
                    "status": "failed",
                    "val_accuracy": None,
                    "test_accuracy": None,
                    "error": f"{failures[sid]} failed or diverged trainings stored; not retried",
                    "skipped": "gave_up",
                }
                out.rows.append(row)
                obs.skipped(row)
            stem = f"{ds.name}-{phash}-s{seed}"
            jobs = [TrainingJob(s.spec_id, s.to_json_line(), str(ckdir / f"{s.spec_id}-{stem}.ckpt")) for s in todo]
            outcomes = ex.run(jobs, ds, protocol, seed, torch_device, on_epoch=obs.epoch)
            try:
                ckpts = {j.spec_id: j.checkpoint_path for j in jobs}
                for outcome in outcomes:
                    weights = wdir / f"{outcome.spec_id}-{stem}.pt"
                    row = _store(store, outcome, ds.name, phash, seed, weights, ckpts.get(outcome.spec_id))
                    out.ok += outcome.status == "ok"
                    out.diverged += outcome.status == "diverged"
                    out.failed += outcome.status == "failed"
                    out.rows.append(row)
                    obs.trained(row)
            except KeyboardInterrupt:
                out.interrupted = True
            finally:
                close = getattr(outcomes, "close", None)
                if close is not None:
                    close()  # ends the executor's workers now
        finally:
            store.close()
    except KeyboardInterrupt:
        out.interrupted = True
    finally:
        out.wall_s = time.perf_counter() - t0
        obs.closed()
    return out


def _store(
    store: ResultsDB,
    outcome: TrainingOutcome,
    dataset: str,
    phash: str,
    seed: int,
    weights: Path,
    checkpoint: Optional[str],
) -> dict[str, Any]:
    """Weights first (atomic), then the row (one committed insert): an interruption leaves no half row."""
    r = outcome.result
    weights_path: Optional[str] = None
    status, error = outcome.status, outcome.error
    if status == "ok" and r is not None:
        try:
            r.save_state_dict(weights)
            weights_path = str(weights)
        except Exception as e:  # a full disk is this spec's failure, not the batch's
            status, error = "failed", f"saving weights to {weights}: {type(e).__name__}: {e}"
    elif status == "diverged" and r is not None:
        error = r.reason
    ok = status == "ok" and r is not None
    store.add_training(
        spec_id=outcome.spec_id,
        dataset=dataset,
        protocol_hash=phash,
        seed=seed,
        status=status,
        val_accuracy=r.val_accuracy if ok and r is not None else None,
        test_accuracy=r.test_accuracy if ok and r is not None else None,
        record=r.to_dict() if r is not None else None,
        weights_path=weights_path,
        error=error,
    )
    if checkpoint is not None and status in ("ok", "diverged"):
        Path(checkpoint).unlink(missing_ok=True)  # done with; a rerun of a diverged spec starts afresh
    row = _row(outcome.spec_id, TrainingOutcome(outcome.spec_id, status, r, error), weights_path)
    if status != "ok":
        row["val_accuracy"] = row["test_accuracy"] = None
    return row
