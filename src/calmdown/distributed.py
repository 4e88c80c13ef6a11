"""Inference over time blocks on a Dask cluster, written in parallel to Zarr.

The client trains (or loads) the model and makes the first pass (:func:`~calmdown.prepare`:
the noise model and the running mean image); both, and the model, are scattered to the
workers once. Each task then opens the movie itself (path and key), denoises its own block of
frames with :func:`~calmdown.iter_apply` (``frames=(start, stop)``; the rest of the movie is
still read as context, so the result equals those frames of a single-process run) and writes
them into Zarr stores created beforehand under ``<out>.partial``. Blocks are whole Zarr chunks
along time, so no two tasks write the same chunk. Only when every task has succeeded are the
stores renamed to their final names (:func:`os.replace`); on failure, or when the caller stops
early, the partial stores are removed and the final names are left as they were.

A local cluster (:class:`distributed.LocalCluster`) is started unless a client or a scheduler
address is given. Each worker runs one task at a time and PyTorch uses the worker's share of
its machine's cores (workers x threads <= cores). Dask's nanny starts worker processes with
``MALLOC_TRIM_THRESHOLD_=65536``, under which calmdown's inference runs 2.5-3x slower; the
local cluster unsets it, and workers started by hand (``dask worker``) should too, with the
Dask setting ``distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_: null``.

References
----------
.. [1] Dask.distributed documentation, "Futures" and "Managing computation",
   https://distributed.dask.org/en/stable/
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from calmdown.config import Config, make_config
from calmdown.context import MeanImage
from calmdown.errors import CalmdownError, InputError
from calmdown.io import (
    cast_block,
    open_movie,
    output_dtype,
    output_paths_like,
    round_for_output,
    same_file,
)
from calmdown.io.gaps import BlankFrames, SkipFramesReader
from calmdown.io.padding import Crop, Region, region_of
from calmdown.noise import NoiseModel
from calmdown.pipeline import Prepared, TrainedModel, iter_apply, prepare

__all__ = [
    "BlockDone",
    "DaskResult",
    "DistributedError",
    "check_dask_output",
    "dask_apply",
    "dask_output_paths",
    "iter_dask_apply",
    "require_distributed",
    "store_chunk_frames",
]

logger = logging.getLogger(__name__)

#: Tasks per worker slot the default block length aims for (load balance vs. overhead).
TASKS_PER_SLOT = 4
#: Most workers a default local cluster starts.
MAX_LOCAL_WORKERS = 8
#: Dask setting that makes worker processes trim memory eagerly (slow for calmdown).
_TRIM_KEY = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"


class DistributedError(CalmdownError, RuntimeError):
    """A Dask run that could not start or did not finish (no output was written)."""


@dataclass(frozen=True)
class BlockDone:
    """One finished task: frames ``start..stop`` written by ``worker`` in ``seconds``."""

    start: int
    stop: int
    seconds: float
    worker: str


@dataclass
class DaskResult:
    """What :func:`dask_apply` wrote.

    Attributes
    ----------
    paths : dict of str to Path
        The Zarr stores by output (``denoised``; ``lower`` and ``upper`` with an interval).
    n_frames : int
        Frames written.
    seconds : float
        Wall-clock time from submitting the tasks to the final rename.
    startup_seconds : float
        Time before the first task: the first pass (unless given), starting (or connecting
        to) the cluster, scattering the model, creating the stores.
    n_tasks : int
        Tasks run.
    frames_per_task : int
        Frames in each task's block (the last may be shorter).
    workers : list of str
        Addresses of the workers that ran tasks.
    """

    paths: dict[str, Path]
    n_frames: int
    seconds: float
    startup_seconds: float
    n_tasks: int
    frames_per_task: int
    workers: list[str] = field(default_factory=list)

    @property
    def frames_per_second(self) -> float:
        """Inference throughput, not counting the cluster start."""
        return self.n_frames / max(self.seconds, 1e-9)


# -- helpers that need no cluster ------------------------------------------------------------


def require_distributed() -> Any:
    """Return the `distributed` module, or say how to install it.

    Raises
    ------
    DistributedError
        When `distributed` is not installed.
    """
    try:
        import distributed
    except ImportError as err:
        raise DistributedError(
            "running on Dask needs the `distributed` package; install the extra with "
            "`pip install 'calmdown[dask]'`"
        ) from err
    return distributed


def dask_output_paths(
    out: str | os.PathLike[str], interval: float | None, samples: int = 0
) -> dict[str, Path]:
    """Name the Zarr stores a run writes: the denoised movie, its bounds, its samples.

    Parameters
    ----------
    out : path
        The denoised movie, ``*.zarr``.
    interval : float or None
        Credible-interval level; when given, ``<out>.lower.zarr`` and ``<out>.upper.zarr``
        are written too (as the single-process CLI names them).
    samples : int
        Joint posterior samples, written to ``<out>.sample1.zarr`` ... (as the CLI names them).

    Returns
    -------
    dict of str to Path
        ``{"denoised": ..., "lower": ..., "upper": ..., "sample1": ...}``.

    Examples
    --------
    >>> sorted(p.name for p in dask_output_paths("run.zarr", 0.9, samples=1).values())
    ['run.lower.zarr', 'run.sample1.zarr', 'run.upper.zarr', 'run.zarr']
    """
    out = Path(out).expanduser()
    paths = {"denoised": out}
    if interval is not None:
        lower, upper = output_paths_like(out, ["lower", "upper"])
        paths.update(lower=lower, upper=upper)
    names = [f"sample{j + 1}" for j in range(samples)]
    paths.update(zip(names, output_paths_like(out, names), strict=True))
    return paths


def check_dask_output(out: str | os.PathLike[str], source: object | None = None) -> None:
    """Refuse, before any work, an output Dask tasks cannot write in parallel.

    Parameters
    ----------
    out : path
        The output movie; it must be a ``.zarr`` store in an existing folder.
    source : path, optional
        The input movie, which the output must not be.

    Raises
    ------
    InputError
        When the output is not ``.zarr``, its folder is missing, or it is the input.
    """
    out = Path(out).expanduser()
    if out.suffix.lower() != ".zarr":
        raise InputError(
            "with --dask the output must be a Zarr store (tasks write their frames in "
            f"parallel, which {out.suffix or 'this format'} cannot take); name it *.zarr, "
            "or leave out --dask",
            path=out,
        )
    if not out.parent.is_dir():
        raise InputError(
            f"cannot write there: the folder {out.parent} does not exist; create it or choose "
            "another output",
            path=out,
        )
    if isinstance(source, (str, os.PathLike)) and Path(source).exists():
        for path in dask_output_paths(out, 0.9).values():
            if same_file(path, Path(source)):
                raise InputError(
                    "the output is the input movie; it would be overwritten: choose another output",
                    path=path,
                )


def store_chunk_frames(shape: tuple[int, int, int], frames_per_task: int | None = None) -> int:
    """Frames per Zarr chunk along time for an output of ``shape``.

    About 4 MiB of float32 per chunk, 16 to 64 frames (as :class:`calmdown.io.MovieWriter`
    writes Zarr). With ``frames_per_task`` given, the largest divisor of it not above that
    length, so that every task's block is made of whole chunks; when that divisor would be
    tiny (``frames_per_task`` prime, say) the default is kept and the blocks are rounded up.

    Parameters
    ----------
    shape : tuple of int
        ``(T, Y, X)``.
    frames_per_task : int, optional
        Frames each task writes.

    Returns
    -------
    int

    Examples
    --------
    >>> store_chunk_frames((1000, 128, 128)), store_chunk_frames((1000, 128, 128), 96)
    (64, 48)
    """
    t, y, x = shape
    default = max(1, min(t, max(16, min(64, 2**22 // max(1, y * x * 4)))))
    if frames_per_task is None or frames_per_task % default == 0:
        return default
    divisor = max(d for d in range(1, default + 1) if frames_per_task % d == 0)
    return divisor if divisor >= min(8, frames_per_task) else default


def _block_length(
    n_frames: int, store_chunk: int, chunk_frames: int, slots: int, frames_per_task: int | None
) -> int:
    """Frames per task: whole store chunks, enough tasks to balance ``slots`` workers."""
    if frames_per_task is not None:
        if frames_per_task < 1:
            raise InputError(f"frames_per_task must be at least 1, got {frames_per_task}")
        return store_chunk * math.ceil(frames_per_task / store_chunk)
    target = max(chunk_frames, math.ceil(n_frames / (TASKS_PER_SLOT * max(1, slots))))
    unit = math.lcm(store_chunk, chunk_frames)
    if unit > 4 * max(store_chunk, chunk_frames):  # whole inference chunks would be too long
        unit = store_chunk
    return unit * math.ceil(target / unit)


def _usable_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def _partial(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def _create_stores(
    paths: dict[str, Path],
    shape: tuple[int, int, int],
    store_chunk: int,
    metadata: dict[str, Any],
    dtype: np.dtype,
) -> dict[str, str]:
    """Create an empty Zarr array of ``dtype`` under each ``<path>.partial``; return paths."""
    import zarr

    stores: dict[str, str] = {}
    for name, path in paths.items():
        partial = _partial(path)
        _remove(partial)  # left over from a run that crashed
        try:
            array = zarr.open_array(
                store=str(partial),
                mode="w",
                shape=shape,
                chunks=(store_chunk, shape[1], shape[2]),
                dtype=dtype,
            )
            array.attrs.update({**metadata, "output": name})
        except OSError as err:
            _remove(partial)
            raise InputError(
                f"cannot create {partial}: {err}; choose a writable location", path=path
            ) from err
        stores[name] = os.fspath(partial.resolve())
    return stores


def _commit(paths: dict[str, Path], overwrite: bool) -> None:
    """Rename every partial store to its final name (an old store is moved aside first)."""
    for path in paths.values():
        partial = _partial(path)
        if path.exists() or path.is_symlink():
            if not overwrite:
                raise InputError(
                    "already exists; pass overwrite=True or choose another output", path=path
                )
            old = path.with_name(f"{path.name}.old-{os.getpid()}")
            _remove(old)
            os.replace(path, old)
            try:
                os.replace(partial, path)
            except OSError:
                os.replace(old, path)
                raise
            _remove(old)
        else:
            os.replace(partial, path)


def _light(model: TrainedModel) -> TrainedModel:
    """Return the model without its cached network (workers rebuild it from the weights)."""
    return dataclasses.replace(model, _net=None, _runtime=None)


# -- what runs on a worker -------------------------------------------------------------------


def _worker_threads(threads: dict[str, int]) -> int | None:
    """Return the PyTorch threads meant for the worker running this task, if known."""
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:  # not on a worker (e.g. a synchronous test run)
        return None
    if worker.address in threads:
        return threads[worker.address]
    # A worker that joined after the run started: its cores over its own task slots.
    return max(1, _usable_cores() // max(1, int(getattr(worker, "nthreads", 1))))


def _run_block(
    model: TrainedModel,
    noise: NoiseModel,
    mean_image: MeanImage,
    *,
    source: str,
    movie_key: str | None,
    channel: int | None,
    plane: int | None,
    roi: int | None,
    crop: Crop | Region | None,
    start: int,
    stop: int,
    interval: float | None,
    samples: int,
    config: Config,
    stores: dict[str, str],
    threads: dict[str, int],
    blank: BlankFrames | None = None,
) -> BlockDone:
    """Denoise frames ``start..stop`` of ``source`` and write them into the partial stores.

    ``blank``: the movie's blank frames, found by the client's first pass; the worker reads
    the movie without them, as the client did, and passes them through.

    Joint samples are drawn by the same seeded stream as in one process; a block that starts
    later runs the stream's correlation recursion from 64 frames before its start, which
    differs from the unbroken stream by at most ``decay ** 64`` of a unit field.
    """
    import zarr
    from distributed import get_worker

    t0 = time.perf_counter()
    n = _worker_threads(threads)
    cfg = (
        config
        if n is None or config.threads is not None
        else config.model_copy(update={"threads": n})
    )
    reader = open_movie(source, key=movie_key, channel=channel, plane=plane, roi=roi, crop=crop)
    expected = mean_image.n_frames if blank is None else blank.n_frames  # blank ones included
    if reader.shape[0] != expected:
        reader.close()
        raise InputError(
            f"has {reader.shape[0]} frames on this worker but {expected} on the client; every "
            "worker must see the same file (a shared filesystem)",
            path=source,
        )
    if blank is not None:
        reader = SkipFramesReader(reader, blank)
    prep = Prepared(
        reader=reader, noise=noise, mean_image=mean_image, owns_reader=True, blank=blank
    )
    try:
        for chunk in iter_apply(
            model,
            reader,
            prepared=prep,
            interval=interval,
            samples=samples,
            config=cfg,
            frames=(start, stop),
        ):
            for name, store in stores.items():
                # Opened per chunk: a run that was called off has removed the store, and a
                # task still running then fails here instead of writing into nothing.
                array = zarr.open_array(store=store, mode="r+")
                block = round_for_output(name, chunk.output(name), array.dtype)
                array[chunk.start : chunk.stop] = cast_block(block, array.dtype)
    finally:
        prep.close()
    try:
        worker = get_worker().address
    except ValueError:
        worker = "local"
    return BlockDone(start, stop, time.perf_counter() - t0, worker)


# -- the client side -------------------------------------------------------------------------


def _torch_threads(client: Any, config: Config) -> dict[str, int]:
    """PyTorch threads for each worker: its machine's cores over the tasks that share them."""
    workers = client.scheduler_info(n_workers=-1)["workers"]
    if config.threads is not None:
        return dict.fromkeys(workers, config.threads)
    cores = client.run(_usable_cores)
    per_host: dict[str, int] = {}
    for info in workers.values():
        per_host[info["host"]] = per_host.get(info["host"], 0) + int(info.get("nthreads", 1))
    return {
        address: max(1, int(cores.get(address, 1)) // max(1, per_host[info["host"]]))
        for address, info in workers.items()
    }


def _connect(
    client: Any,
    scheduler: str | None,
    workers: int | None,
    processes: bool,
    stack: list[Callable[[], None]],
) -> Any:
    """Return a client: the one given, one for ``scheduler``, or one on a new local cluster."""
    distributed = require_distributed()
    if client is not None:
        return client
    if scheduler is not None:
        try:
            client = distributed.Client(scheduler, timeout=30)
        except (OSError, TimeoutError) as err:
            raise DistributedError(
                f"cannot reach the Dask scheduler at {scheduler} ({err}); check the address "
                "(e.g. tcp://host:8786) and that the scheduler is running"
            ) from err
        stack.append(client.close)
        return client
    cores = _usable_cores()
    n = workers if workers is not None else max(1, min(cores, MAX_LOCAL_WORKERS))
    if n < 1:
        raise InputError(f"the number of Dask workers must be at least 1, got {n}")
    import dask

    try:
        # Dask starts worker processes with MALLOC_TRIM_THRESHOLD_=65536, which makes glibc
        # hand every large temporary back to the system: inference ran 2.5-3x slower.
        with dask.config.set({_TRIM_KEY: None}):
            cluster = distributed.LocalCluster(
                n_workers=n,
                threads_per_worker=1,
                processes=processes,
                dashboard_address=":0",  # any free port: never a warning about 8787 being taken
                silence_logs=logging.ERROR,
            )
    except (OSError, RuntimeError, TimeoutError) as err:
        raise DistributedError(
            f"could not start a local Dask cluster of {n} workers ({err}); try fewer "
            "--dask-workers, or start a cluster yourself and pass --dask-scheduler"
        ) from err
    stack.append(cluster.close)
    client = distributed.Client(cluster)
    stack.append(client.close)
    return client


def iter_dask_apply(
    model: TrainedModel,
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    key: str | None = None,
    channel: int | None = None,
    plane: int | None = None,
    roi: int | None = None,
    crop: Crop | Region | str | None = None,
    interval: float | None = None,
    samples: int = 0,
    dtype: str | np.dtype = "float32",
    client: Any = None,
    scheduler: str | None = None,
    workers: int | None = None,
    processes: bool = True,
    frames_per_task: int | None = None,
    prepared: Prepared | None = None,
    config: Config | None = None,
    overwrite: bool = True,
    metadata: dict[str, Any] | None = None,
    timings: dict[str, float] | None = None,
    **options: Any,
) -> Iterator[BlockDone]:
    """Denoise a movie on a Dask cluster, yielding each block as its task finishes.

    The stores are renamed to their final names after the last block is yielded; closing the
    generator early cancels the tasks and removes the partial stores. Parameters are those of
    :func:`dask_apply`, plus ``timings``: a dict that receives ``startup_seconds``.

    Yields
    ------
    BlockDone
        In the order the tasks finish.
    """
    distributed = require_distributed()
    base = config or model.config
    cfg = make_config(base, **options).model_copy(update={"model": model.config.model})
    if cfg.model.plane_context:
        raise InputError(
            "a model with plane context (neighbouring planes as input) does not run on Dask "
            "yet: each task would have to read the neighbouring planes too; leave out --dask"
        )
    if interval is not None and not 0 < interval < 1:
        raise InputError(f"interval must be between 0 and 1 (e.g. 0.9), got {interval}")
    if samples < 0:
        raise InputError(f"samples must be 0 or more, got {samples}")
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            "source must be the path of the movie (each Dask task opens it itself), not "
            f"{type(source).__name__}; write the movie to Zarr first"
        )
    source = os.fspath(Path(source).expanduser().resolve())
    out = Path(out).expanduser()
    check_dask_output(out, source)
    paths = dask_output_paths(out, interval, samples)
    if not overwrite:
        for path in paths.values():
            if path.exists():
                raise InputError(
                    "already exists; pass overwrite=True or choose another output", path=path
                )
    t_start = time.perf_counter()
    prep = prepared
    if prep is None:
        reader = open_movie(source, key=key, channel=channel, plane=plane, roi=roi, crop=crop)
        try:
            prep = prepare(reader, cfg)
        finally:
            reader.close()
    if crop is not None:
        crop = region_of(prep.reader)  # "auto" found once, here, not by every task
    shape = tuple(int(s) for s in prep.shape)  # blank frames included, passed through
    assert len(shape) == 3
    store_chunk = store_chunk_frames(shape, frames_per_task)  # type: ignore[arg-type]

    cleanup: list[Callable[[], None]] = []
    futures: list[Any] = []
    committed = False
    try:
        client = _connect(client, scheduler, workers, processes, cleanup)
        if not client.scheduler_info(n_workers=-1)["workers"]:
            try:
                client.wait_for_workers(1, timeout=60)
            except TimeoutError as err:
                raise DistributedError(
                    "the Dask cluster has no workers (waited 60 s); start some with "
                    "`dask worker <scheduler address>`"
                ) from err
        info = client.scheduler_info(n_workers=-1)["workers"]
        slots = sum(int(w.get("nthreads", 1)) for w in info.values())
        block = _block_length(
            shape[0], store_chunk, cfg.inference.chunk_frames, slots, frames_per_task
        )
        threads = _torch_threads(client, cfg)
        model_f, noise_f, mean_f = (
            client.scatter(obj, broadcast=True, hash=False)
            for obj in (_light(model), prep.noise, prep.mean_image)
        )
        stores = _create_stores(
            paths,
            shape,  # type: ignore[arg-type]
            store_chunk,
            metadata or {},
            output_dtype(dtype, prep.reader.dtype) if isinstance(dtype, str) else np.dtype(dtype),
        )
        if timings is not None:
            timings["startup_seconds"] = time.perf_counter() - t_start
        logger.info(
            "denoising %d frames on %d Dask workers: %d tasks of %d frames",
            shape[0],
            len(info),
            math.ceil(shape[0] / block),
            block,
        )
        for start in range(0, shape[0], block):
            stop = min(start + block, shape[0])
            futures.append(
                client.submit(
                    _run_block,
                    model_f,
                    noise_f,
                    mean_f,
                    source=source,
                    movie_key=key,
                    channel=channel,
                    plane=plane,
                    roi=roi,
                    crop=crop,
                    start=start,
                    stop=stop,
                    interval=interval,
                    samples=samples,
                    config=cfg,
                    stores=stores,
                    threads=threads,
                    blank=prep.blank,
                    key=f"calmdown-block-{start}-{stop}-{os.getpid()}-{id(futures)}",
                    pure=False,
                    retries=0,
                )
            )
        ranges = {
            f.key: (f_start, min(f_start + block, shape[0]))
            for f, f_start in zip(futures, range(0, shape[0], block), strict=True)
        }
        for future in distributed.as_completed(futures):
            try:
                done = future.result()
            except Exception as err:
                a, b = ranges[future.key]
                raise DistributedError(
                    f"the Dask task for frames {a}:{b} failed ({type(err).__name__}: {err}); "
                    f"nothing was written to {out}"
                ) from err
            yield done
        _commit(paths, overwrite)
        committed = True
        logger.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    finally:
        if not committed:
            for future in futures:
                future.cancel()
            if futures and client is not None:
                # A task already running goes on writing into the partial stores after its
                # future is cancelled: wait for it, or it would re-create what is removed below.
                _wait_until_not_executing(client, {f.key for f in futures})
        for close in reversed(cleanup):
            try:
                close()
            except (OSError, RuntimeError, TimeoutError) as err:  # shutting down anyway
                logger.debug("while closing the Dask cluster: %s", err)
        if not committed:
            for path in paths.values():
                _remove(_partial(path))


def _executing_keys(dask_worker: Any) -> list[str]:
    """Keys of the tasks a worker is running now (runs on each worker)."""
    state = getattr(dask_worker, "state", dask_worker)
    return [str(getattr(ts, "key", ts)) for ts in getattr(state, "executing", ())]


def _wait_until_not_executing(client: Any, keys: set[str], timeout: float = 120.0) -> None:
    """Wait until no worker runs any of ``keys`` (cancelled tasks finish their block)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            running = client.run(_executing_keys)
        except (OSError, RuntimeError, TimeoutError, ValueError) as err:  # a closing cluster
            logger.debug("could not ask the workers what they run: %s", err)
            return
        if not any(key in keys for found in running.values() for key in found):
            return
        time.sleep(0.1)
    logger.warning("Dask tasks still running %.0f s after being cancelled", timeout)


def dask_apply(
    model: TrainedModel,
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    key: str | None = None,
    channel: int | None = None,
    plane: int | None = None,
    roi: int | None = None,
    crop: Crop | Region | str | None = None,
    interval: float | None = None,
    samples: int = 0,
    dtype: str | np.dtype = "float32",
    client: Any = None,
    scheduler: str | None = None,
    workers: int | None = None,
    processes: bool = True,
    frames_per_task: int | None = None,
    prepared: Prepared | None = None,
    config: Config | None = None,
    overwrite: bool = True,
    metadata: dict[str, Any] | None = None,
    progress: Callable[[BlockDone], None] | None = None,
    **options: Any,
) -> DaskResult:
    """Denoise a movie on a Dask cluster, writing Zarr stores in parallel, atomically.

    Parameters
    ----------
    model : TrainedModel
        From :func:`calmdown.train` or :func:`calmdown.persist.load_model`.
    source : path
        The raw movie, any format :func:`calmdown.io.open_movie` reads; every worker opens
        it, so on a multi-machine cluster it must be on a shared filesystem.
    out : path
        The denoised movie, ``*.zarr`` (ADU, ``dtype``). Written under ``<out>.partial`` and
        renamed when every task has succeeded.
    key, channel, plane, roi, crop : optional
        Which movie in the file, and which rows and columns of it, as for
        :func:`calmdown.io.open_movie`.
    interval : float, optional
        Also write the central credible interval at this level to ``<out>.lower.zarr`` and
        ``<out>.upper.zarr``.
    samples : int
        Also write this many joint posterior samples to ``<out>.sample1.zarr`` ...
    dtype : str or numpy.dtype
        Type stored in every output: float32, or an integer type to which values are rounded
        (interval ends outward, see :func:`calmdown.io.round_for_output`) and clipped; the
        names of :data:`calmdown.io.OUTPUT_DTYPES` (``"input"``: the source's integer type).
    client : distributed.Client, optional
        A client to run on; it is left open.
    scheduler : str, optional
        Address of a running scheduler (``tcp://host:8786``) to connect to instead.
    workers : int, optional
        Workers of the local cluster started when neither ``client`` nor ``scheduler`` is
        given (default: one per core, at most 8).
    processes : bool
        Local workers as processes (True) or threads of this process.
    frames_per_task : int, optional
        Frames each task denoises; rounded up to whole Zarr chunks along time. By default about
        four tasks per worker, at least one inference chunk (``chunk_frames``) each.
    prepared : Prepared, optional
        The first pass over ``source`` already made on the client (its noise model and mean
        image are sent to the workers).
    config : Config, optional
        Inference settings (default: the model's); ``**options`` override fields. With
        ``threads`` unset, each worker's PyTorch gets its machine's cores divided by the
        tasks running there at once.
    overwrite : bool
        Whether existing outputs may be replaced.
    metadata : dict, optional
        Stored as attributes of every output store (JSON values).
    progress : callable, optional
        Called with each :class:`BlockDone` as its task finishes.
    **options
        Flat overrides such as ``chunk_frames=64`` or ``device="cpu"``.

    Returns
    -------
    DaskResult
        The paths written, frames, seconds and tasks.

    Raises
    ------
    InputError
        For an output that is not ``.zarr``, a bad interval or an unreadable input.
    DistributedError
        When `distributed` is missing, the cluster cannot be reached, or a task fails; no
        output exists under the final names then.

    Examples
    --------
    >>> import calmdown, tempfile, os
    >>> from calmdown.io import save_array
    >>> from calmdown.distributed import dask_apply
    >>> sim = calmdown.simulate("dense", photons=2.0, shape=(60, 32, 32), seed=0)
    >>> folder = tempfile.mkdtemp()
    >>> raw = save_array(os.path.join(folder, "raw.zarr"), sim.raw)
    >>> model = calmdown.train(raw, max_steps=5)
    >>> result = dask_apply(model, raw, os.path.join(folder, "out.zarr"), workers=1,
    ...                     processes=False)  # doctest: +SKIP
    >>> result.n_frames  # doctest: +SKIP
    60
    """
    timings: dict[str, float] = {}
    blocks: list[BlockDone] = []
    t0 = time.perf_counter()
    for done in iter_dask_apply(
        model,
        source,
        out,
        key=key,
        channel=channel,
        plane=plane,
        roi=roi,
        crop=crop,
        interval=interval,
        samples=samples,
        dtype=dtype,
        client=client,
        scheduler=scheduler,
        workers=workers,
        processes=processes,
        frames_per_task=frames_per_task,
        prepared=prepared,
        config=config,
        overwrite=overwrite,
        metadata=metadata,
        timings=timings,
        **options,
    ):
        blocks.append(done)
        if progress is not None:
            progress(done)
    startup = timings.get("startup_seconds", 0.0)
    return DaskResult(
        paths=dask_output_paths(out, interval, samples),
        n_frames=int(sum(b.stop - b.start for b in blocks)),
        seconds=time.perf_counter() - t0 - startup,
        startup_seconds=startup,
        n_tasks=len(blocks),
        frames_per_task=max((b.stop - b.start for b in blocks), default=0),
        workers=sorted({b.worker for b in blocks}),
    )
