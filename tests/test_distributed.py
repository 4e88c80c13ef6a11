"""Inference on a Dask cluster: same numbers as one process, Zarr written atomically."""

from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import calmdown
from calmdown.io import open_movie, save_array
from calmdown.pipeline import iter_apply, prepare

distributed = pytest.importorskip(
    "distributed", reason="dask.distributed is not installed (pip install 'calmdown[dask]')"
)

from calmdown.cli import app  # noqa: E402
from calmdown.distributed import (  # noqa: E402
    DistributedError,
    _block_length,
    _light,
    dask_apply,
    iter_dask_apply,
    store_chunk_frames,
)

runner = CliRunner()
SHAPE = (120, 32, 32)
# PyTorch's results depend (in the last bits) on its thread count, and the surprise guard can
# turn last-bit differences into visible ones; every run here uses one thread per task.
THREADS = 1
DASK2 = ["--dask-workers", "2", "--max-steps", "5", "--threads", str(THREADS), "-q"]


@pytest.fixture(scope="module")
def raw_zarr(tmp_path_factory):
    sim = calmdown.simulate("dense", photons=2.0, shape=SHAPE, seed=0)
    return save_array(tmp_path_factory.mktemp("dask") / "raw.zarr", sim.raw)


@pytest.fixture(scope="module")
def model(raw_zarr):
    threads = torch.get_num_threads()
    yield calmdown.train(raw_zarr, max_steps=5, seed=0)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(model, raw_zarr):
    """Single-process results, whole movie, with a 90 % interval."""
    threads = torch.get_num_threads()
    chunks = list(iter_apply(model, raw_zarr, interval=0.9, threads=THREADS))
    torch.set_num_threads(threads)
    return {
        name: np.concatenate([getattr(c, name) for c in chunks])
        for name in ("denoised", "lower", "upper")
    }


@pytest.fixture(scope="module")
def client():
    """Two single-threaded workers in this process (processes start too slowly to share)."""
    threads = torch.get_num_threads()
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0"
    )
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()
    torch.set_num_threads(threads)


def read(path):
    with open_movie(path) as reader:
        return reader.read(0, reader.shape[0])


def test_model_pickles_without_its_cached_network(model):
    model.network(torch.device("cpu"))
    light = pickle.loads(pickle.dumps(_light(model)))
    assert light._net is None and model._net is not None
    assert light.state_dict.keys() == model.state_dict.keys()


def test_blocks_are_whole_store_chunks():
    assert store_chunk_frames((1000, 128, 128)) == 64
    assert store_chunk_frames((1000, 128, 128), frames_per_task=96) == 48
    assert store_chunk_frames((1000, 128, 128), frames_per_task=97) == 64  # prime: rounded up
    assert _block_length(1000, 64, 128, slots=2, frames_per_task=97) == 128
    assert _block_length(6000, 64, 128, slots=2, frames_per_task=None) == 768  # 4 per slot
    assert _block_length(200, 64, 128, slots=8, frames_per_task=None) == 128  # >= one chunk


def test_matches_single_process_with_interval(tmp_path, model, raw_zarr, reference, client):
    out = tmp_path / "den.zarr"
    seen = []
    result = dask_apply(
        model,
        raw_zarr,
        out,
        interval=0.9,
        client=client,
        frames_per_task=32,
        threads=THREADS,
        progress=seen.append,
    )
    assert result.n_tasks == 4 and result.n_frames == SHAPE[0]
    assert sorted((b.start, b.stop) for b in seen) == [(0, 32), (32, 64), (64, 96), (96, 120)]
    assert len(result.workers) == 2, "both workers should have run tasks"
    assert {p.name for p in result.paths.values()} == {
        "den.zarr",
        "den.lower.zarr",
        "den.upper.zarr",
    }
    for name, path in result.paths.items():
        got = read(path)
        assert got.dtype == np.float32 and got.shape == SHAPE
        np.testing.assert_allclose(got, reference[name], rtol=1e-5, atol=1e-3, err_msg=name)
    assert (read(result.paths["lower"]) <= read(result.paths["upper"])).all()
    assert not list(tmp_path.glob("*.partial"))


def test_joint_samples_match_single_process(tmp_path, model, raw_zarr, client):
    # The same seeded stream: the first block is the same draw; later blocks restart the
    # stream's time correlation 64 frames before their start, which differs from the
    # unbroken stream by decay ** 64 of a unit field.
    threads = torch.get_num_threads()
    chunks = list(iter_apply(model, raw_zarr, samples=2, threads=THREADS))
    torch.set_num_threads(threads)
    den = np.concatenate([c.denoised for c in chunks])
    want = np.concatenate([c.samples for c in chunks], axis=1)
    result = dask_apply(
        model,
        raw_zarr,
        tmp_path / "s.zarr",
        samples=2,
        client=client,
        frames_per_task=32,
        threads=THREADS,
    )
    assert {p.name for p in result.paths.values()} == {"s.zarr", "s.sample1.zarr", "s.sample2.zarr"}
    for j in range(2):
        got = read(result.paths[f"sample{j + 1}"])
        assert got.shape == SHAPE and got.dtype == np.float32
        np.testing.assert_allclose(got[:32], want[j, :32], rtol=1e-5, atol=1e-3)
        dev_got, dev_want = (got - den).ravel(), (want[j] - den).ravel()
        assert np.corrcoef(dev_got, dev_want)[0, 1] > 0.999
        assert not np.allclose(got, den)


def test_cli_apply_on_a_running_scheduler(tmp_path, model, raw_zarr, reference, client):
    model_path = tmp_path / "m.pt"
    calmdown.persist.save_model(model, model_path)
    out = tmp_path / "applied.zarr"
    scheduler = ["--dask-scheduler", client.scheduler.address]
    res = runner.invoke(
        app,
        [
            "apply",
            str(model_path),
            str(raw_zarr),
            "-o",
            str(out),
            "-q",
            "--threads",
            "1",
            "--samples",
            "1",
            *scheduler,
        ],
    )
    assert res.exit_code == 0, res.output
    np.testing.assert_allclose(read(out), reference["denoised"], rtol=1e-5, atol=1e-3)
    assert read(tmp_path / "applied.sample1.zarr").shape == SHAPE


def test_one_roi_of_a_multi_roi_tiff(tmp_path, model, raw_zarr, reference, client):
    """Each task opens the file itself and reads the same ROI (issue 7: ScanImage mROI)."""
    from tests.io.test_scanimage import write_mroi

    raw = read(raw_zarr).astype("int32")
    other = (raw[:, :20, :24] + 3).astype("int32")
    rois = [other[:, None, None], raw[:, None, None]]
    mroi = write_mroi(tmp_path / "mroi.tif", rois, [1], flyto=4)
    out = tmp_path / "roi2.zarr"
    dask_apply(model, mroi, out, roi=2, interval=0.9, client=client, threads=THREADS)
    np.testing.assert_allclose(read(out), reference["denoised"], rtol=1e-5, atol=1e-3)


def test_cli_denoise_dask_with_process_workers(tmp_path, raw_zarr):
    """End to end: train, then two worker processes of a local cluster write the Zarr."""
    out = tmp_path / "out.zarr"
    threads = torch.get_num_threads()
    res = runner.invoke(
        app,
        ["denoise", str(raw_zarr), "-o", str(out), "--interval", "0.9", "--dask", *DASK2],
    )
    torch.set_num_threads(threads)
    assert res.exit_code == 0, res.output
    trained = calmdown.persist.load_model(tmp_path / "out.model.pt")
    chunks = list(iter_apply(trained, raw_zarr, interval=0.9, threads=THREADS))
    torch.set_num_threads(threads)
    for name, path in (("denoised", out), ("lower", tmp_path / "out.lower.zarr")):
        expected = np.concatenate([getattr(c, name) for c in chunks])
        np.testing.assert_allclose(read(path), expected, rtol=1e-5, atol=1e-3, err_msg=name)
    assert (tmp_path / "out.calmdown.json").is_file()
    assert not list(tmp_path.glob("*.partial"))


def test_cli_dask_needs_zarr_output(tmp_path, raw_zarr):
    out = tmp_path / "out.tif"
    res = runner.invoke(app, ["denoise", str(raw_zarr), "-o", str(out), "--dask", "-q"])
    assert res.exit_code == 2
    assert "Zarr" in res.output and "*.zarr" in res.output
    assert "Traceback" not in res.output
    assert list(tmp_path.iterdir()) == []  # refused before training


def test_failing_task_leaves_nothing_under_the_final_name(tmp_path, model, raw_zarr, client):
    raw = tmp_path / "raw.zarr"
    shutil.copytree(raw_zarr, raw)
    prep = prepare(raw, model.config)
    prep.close()
    # The second chunk along time (zarr format 3 or 2 key) can no longer be read.
    second = [p for p in (raw / "c" / "1" / "0" / "0", raw / "1.0.0") if p.is_file()]
    assert second, sorted(str(p.relative_to(raw)) for p in raw.rglob("*"))
    second[0].write_bytes(b"not a compressed chunk")
    out = tmp_path / "out.zarr"
    save_array(out, np.full((2, 4, 4), 7.0, dtype=np.float32))  # an earlier result
    with pytest.raises(DistributedError, match=r"task for frames \d+:\d+ failed.*nothing"):
        dask_apply(
            model,
            raw,
            out,
            interval=0.9,
            client=client,
            prepared=prep,
            frames_per_task=32,
            threads=THREADS,
        )
    assert read(out).tolist() == np.full((2, 4, 4), 7.0).tolist(), "old output was touched"
    assert not (tmp_path / "out.lower.zarr").exists()
    assert not (tmp_path / "out.upper.zarr").exists()
    assert not list(tmp_path.glob("*.partial"))


def test_stopping_early_removes_the_partial_store(tmp_path, model, raw_zarr, client):
    out = tmp_path / "early.zarr"
    blocks = iter_dask_apply(
        model, raw_zarr, out, client=client, frames_per_task=32, threads=THREADS
    )
    next(blocks)
    blocks.close()
    assert not out.exists()
    assert not list(tmp_path.glob("*.partial"))


def test_crop_auto_cuts_nan_padding_in_every_task(tmp_path, model, raw_zarr, reference, client):
    """The crop is found once, on the client; each task reads the same rows and columns."""
    padded = np.full((SHAPE[0], SHAPE[1] + 6, SHAPE[2] + 6), np.nan, dtype=np.float32)
    padded[:, 3:-3, 3:-3] = read(raw_zarr)
    source = save_array(tmp_path / "padded.zarr", padded)
    out = tmp_path / "cropped.zarr"
    dask_apply(model, source, out, crop="auto", client=client, threads=THREADS)
    np.testing.assert_allclose(read(out), reference["denoised"], rtol=1e-5, atol=1e-3)


def test_integer_output_rounds_as_one_process_would(tmp_path, model, raw_zarr, reference, client):
    result = dask_apply(
        model,
        raw_zarr,
        tmp_path / "den.zarr",
        interval=0.9,
        dtype="uint16",
        client=client,
        frames_per_task=32,
        threads=THREADS,
    )
    for path in result.paths.values():
        with open_movie(path) as reader:
            assert reader.dtype == np.uint16, path
    got = {name: read(path) for name, path in result.paths.items()}
    ref = reference
    # Equal to the rounded single-process values, up to a rounding step where the two agree
    # only to float tolerance; interval ends rounded outward, so they hold the float interval.
    assert np.abs(got["denoised"] - np.rint(ref["denoised"])).max() <= 1
    assert (got["lower"] <= ref["lower"] + 1e-3).all()
    assert (got["lower"] > ref["lower"] - 1 - 1e-3).all()
    assert (got["upper"] >= ref["upper"] - 1e-3).all()
    assert (got["upper"] < ref["upper"] + 1 + 1e-3).all()
    # "input" is the source's type: float32 here (the simulated movie is float).
    out = dask_apply(model, raw_zarr, tmp_path / "f.zarr", dtype="input", client=client)
    with open_movie(out.paths["denoised"]) as reader:
        assert reader.dtype == np.float32


def test_blank_frames_are_passed_through_as_in_one_process(tmp_path, model, client):
    movie = calmdown.simulate("dense", photons=2.0, shape=SHAPE, seed=0).raw
    movie[[0, 30, 31, 64, 119]] = 0  # dropped frames, some at task boundaries (32 frames each)
    raw = save_array(tmp_path / "gaps.zarr", movie)
    kw = {"interval": 0.9, "threads": THREADS}
    chunks = list(iter_apply(model, raw, **kw))
    result = dask_apply(model, raw, tmp_path / "den.zarr", client=client, frames_per_task=32, **kw)
    assert result.n_frames == SHAPE[0]
    for name, path in result.paths.items():
        got, want = read(path), np.concatenate([c.output(name) for c in chunks])
        assert got.shape == SHAPE
        np.testing.assert_array_equal(got[[0, 30, 31, 64, 119]], 0, err_msg=name)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3, err_msg=name)
