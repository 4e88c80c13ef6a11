"""NWB: reading a TwoPhotonSeries lazily, choosing among several, writing a denoised copy."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from calmdown.errors import InputError
from calmdown.io import MovieWriter, open_movie
from calmdown.io.nwb import NWBReader, write_nwb_copy

pynwb = pytest.importorskip("pynwb", reason="NWB support is the optional extra calmdown[nwb]")


def write_nwb(
    path: Path,
    series: dict[str, np.ndarray],
    *,
    rate: float | None = 30.0,
    module_series: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write an NWB file with TwoPhotonSeries of data laid out (frames, x, y) as the schema says."""
    from pynwb.ophys import OpticalChannel, TwoPhotonSeries

    nwb = pynwb.NWBFile(
        session_description="test",
        identifier="calmdown-test",
        session_start_time=datetime(2024, 1, 1, tzinfo=timezone.utc),
    )
    device = nwb.create_device(name="scope")
    channel = OpticalChannel(name="green", description="GCaMP", emission_lambda=520.0)
    plane = nwb.create_imaging_plane(
        name="plane",
        optical_channel=channel,
        description="L2/3",
        device=device,
        excitation_lambda=920.0,
        imaging_rate=30.0,
        indicator="GCaMP6s",
        location="V1",
    )

    def make(name: str, data: np.ndarray) -> TwoPhotonSeries:
        timing = {"rate": rate} if rate else {"timestamps": np.arange(len(data)) / 7.0}
        return TwoPhotonSeries(name=name, data=data, imaging_plane=plane, unit="n.a.", **timing)

    for name, data in series.items():
        nwb.add_acquisition(make(name, data))
    if module_series:
        module = nwb.create_processing_module(name="ophys", description="processed")
        for name, data in module_series.items():
            module.add(make(name, data))
    with pynwb.NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    return path


def txy(frames: int = 8, x: int = 7, y: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4000, (frames, x, y)).astype("uint16")


def test_reads_the_only_series_transposed_to_tyx(tmp_path: Path) -> None:
    data = txy()
    path = write_nwb(tmp_path / "rec.nwb", {"TwoPhotonSeries": data})
    with open_movie(path) as reader:
        assert isinstance(reader, NWBReader)
        assert reader.shape == (8, 5, 7)
        assert reader.dtype == np.uint16
        np.testing.assert_array_equal(reader.read(0, 8), data.transpose(0, 2, 1))
        np.testing.assert_array_equal(reader.read(3, 5), data[3:5].transpose(0, 2, 1))
        assert reader.metadata["frame_rate"] == 30.0
        assert reader.metadata["key"] == "TwoPhotonSeries"


def test_several_series_need_a_key(tmp_path: Path) -> None:
    a, b = txy(seed=1), txy(seed=2)
    path = write_nwb(tmp_path / "two.nwb", {"raw": a, "other": b}, module_series={"motion": a})
    with pytest.raises(InputError, match=r"two\.nwb: holds several imaging series.*'raw'.*--key"):
        open_movie(path)
    with open_movie(path, key="other") as reader:
        np.testing.assert_array_equal(reader.read(0, 8), b.transpose(0, 2, 1))
    with open_movie(path, key="processing/ophys/motion") as reader:
        assert reader.key == "ophys/motion"
    with pytest.raises(
        InputError, match=r"has no TwoPhotonSeries 'nope'.*'other', 'raw', 'ophys/motion'"
    ):
        open_movie(path, key="nope")
    with pytest.raises(InputError, match=r"--channel 1 does not apply to an NWB"):
        open_movie(path, key="raw", channel=1)


def test_volume_series_needs_a_plane(tmp_path: Path) -> None:
    data = np.random.default_rng(0).integers(0, 100, (6, 4, 3, 2)).astype("int16")
    path = write_nwb(tmp_path / "vol.nwb", {"vol": data})
    with pytest.raises(InputError, match=r"volume of 2 planes.*--plane 1 to 2"):
        open_movie(path)
    with open_movie(path, plane=2) as reader:
        np.testing.assert_array_equal(reader.read(0, 6), data[..., 1].transpose(0, 2, 1))


def test_write_copy_with_denoised_series(tmp_path: Path) -> None:
    data = txy()
    src = write_nwb(tmp_path / "rec.nwb", {"TwoPhotonSeries": data}, rate=None)
    before = src.read_bytes()
    dst = tmp_path / "rec_denoised.nwb"
    with open_movie(src) as reader:
        denoised = reader.read(0, len(reader)) / 2
        write_nwb_copy(src, dst, denoised, name="denoised")
    assert src.read_bytes() == before
    assert not list(tmp_path.glob("*.partial"))
    with pynwb.NWBHDF5IO(str(dst), "r") as io:
        nwb = io.read()
        new = nwb.processing["ophys"]["denoised"]
        np.testing.assert_allclose(new.data[:], data / 2)  # stored (frames, x, y) like its source
        assert new.imaging_plane.name == "plane"
        np.testing.assert_allclose(new.timestamps[:], np.arange(8) / 7.0)
        assert "TwoPhotonSeries" in nwb.acquisition
    with open_movie(dst, key="ophys/denoised") as reader:
        np.testing.assert_allclose(reader.read(0, 8), denoised)


def test_movie_writer_nwb_output(tmp_path: Path) -> None:
    data = txy()
    src = write_nwb(tmp_path / "rec.nwb", {"TwoPhotonSeries": data})
    out = tmp_path / "out.nwb"
    with MovieWriter(out, (8, 5, 7), inputs=[src], key="TwoPhotonSeries") as writer:
        writer.write(0, np.ones((8, 5, 7), np.float32))
    with open_movie(out, key="ophys/TwoPhotonSeries_denoised") as reader:
        assert reader.metadata["frame_rate"] == 30.0
        np.testing.assert_array_equal(reader.read(0, 8), np.ones((8, 5, 7)))
    plain = tmp_path / "raw.tif"
    plain.write_bytes(b"")
    with pytest.raises(InputError, match=r"NWB output is a copy of an NWB input"):
        MovieWriter(tmp_path / "x.nwb", (8, 5, 7), inputs=[plain])
    with pytest.raises(InputError, match=r"does not match the movie written"):
        MovieWriter(tmp_path / "y.nwb", (8, 7, 5), inputs=[src])
    assert not list(tmp_path.glob("*.partial"))


def test_not_nwb(tmp_path: Path) -> None:
    junk = tmp_path / "junk.nwb"
    junk.write_bytes(b"\0" * 2048)
    with pytest.raises(InputError, match=r"junk\.nwb: cannot open as an NWB file"):
        open_movie(junk)
