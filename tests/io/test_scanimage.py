"""ScanImage TIFFs: de-interleaving channels and planes, metadata, and choice errors."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import tifffile

from calmdown.errors import InputError
from calmdown.io import open_movie
from calmdown.io.scanimage import (
    ScanImageReader,
    is_scanimage,
    scanimage_layout,
    scanimage_rois,
)


def si_software(channels: list[int], planes: int, **extra: object) -> str:
    """ScanImage-like ``SI.*`` frame data, as ScanImage puts in each page's Software tag."""
    saved = "[" + ";".join(str(c) for c in channels) + "]" if len(channels) > 1 else channels[0]
    lines = {
        "SI.VERSION_MAJOR": "'2021'",
        "SI.hChannels.channelSave": saved,
        "SI.hStackManager.numSlices": planes,
        "SI.hStackManager.actualNumSlices": planes,
        "SI.hFastZ.enable": "true" if planes > 1 else "false",
        "SI.hRoiManager.scanFrameRate": 30.0,
        "SI.hRoiManager.scanVolumeRate": 30.0 / planes,
        "SI.hRoiManager.scanZoomFactor": 2.5,
        **extra,
    }
    return "\n".join(f"{k} = {v}" for k, v in lines.items())


def write_si(
    path: Path,
    movie: np.ndarray,
    channels: list[int],
    *,
    flyback: int = 0,
    extra_pages: int = 0,
    **extra: object,
) -> Path:
    """Write `movie` (T, planes, channels, Y, X) page by page in ScanImage's order."""
    t, planes, n_channels, y, x = movie.shape
    assert n_channels == len(channels)
    software = si_software(channels, planes, **extra)
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        number = 0
        for frame in range(t):
            for plane in range(planes + flyback):
                for c in range(n_channels):
                    page = movie[frame, plane, c] if plane < planes else np.zeros((y, x), "i2")
                    number += 1
                    tw.write(
                        page,
                        software=software,
                        description=f"frameNumbers = {number}\nframeTimestamps_sec = {number}",
                        metadata=None,
                    )
        for _ in range(extra_pages):
            tw.write(np.zeros((y, x), "i2"), software=software, metadata=None)
    return path


def make(t: int = 5, planes: int = 3, channels: int = 2, y: int = 6, x: int = 7) -> np.ndarray:
    """Frames whose values encode (t, plane, channel), so mix-ups show."""
    grid = np.zeros((t, planes, channels, y, x), dtype="int16")
    for i in range(t):
        for z in range(planes):
            for c in range(channels):
                grid[i, z, c] = 1000 * c + 100 * z + i
    return grid + np.arange(y * x, dtype="int16").reshape(y, x)


def test_detects_scanimage(tmp_path: Path) -> None:
    si = write_si(tmp_path / "si.tif", make(2, 1, 1), [1])
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.zeros((3, 4, 4), "u2"))
    assert is_scanimage(si)
    assert not is_scanimage(plain)
    assert not is_scanimage(tmp_path / "missing.tif")


@pytest.mark.parametrize(("channel", "plane"), [(1, 1), (2, 1), (1, 3), (2, 2)])
def test_deinterleaves_each_channel_and_plane(tmp_path: Path, channel: int, plane: int) -> None:
    movie = make()
    path = write_si(tmp_path / "vol.tif", movie, [1, 2])
    with open_movie(path, channel=channel, plane=plane) as reader:
        assert isinstance(reader, ScanImageReader)
        assert reader.shape == (5, 6, 7)
        assert reader.dtype == np.int16
        expected = movie[:, plane - 1, channel - 1].astype(np.float32)
        np.testing.assert_array_equal(reader.read(0, 5), expected)
        np.testing.assert_array_equal(reader.read(2, 4), expected[2:4])
        assert reader.read(5, 5).shape == (0, 6, 7)
        meta = reader.metadata
    assert meta["frame_rate"] == pytest.approx(10.0)  # the volume rate: one frame per volume
    assert meta["zoom"] == 2.5
    assert meta["channels"] == [1, 2]
    assert meta["planes"] == 3
    assert (meta["channel"], meta["plane"]) == (channel, plane)


def test_channel_numbers_are_scanimage_numbers(tmp_path: Path) -> None:
    movie = make(4, 1, 2)
    path = write_si(tmp_path / "ch23.tif", movie, [2, 3])
    with open_movie(path, channel=3) as reader:
        np.testing.assert_array_equal(reader.read(0, 4), movie[:, 0, 1].astype(np.float32))
        assert reader.metadata["frame_rate"] == pytest.approx(30.0)
    with pytest.raises(InputError, match=r"ch23\.tif: has no channel 1; .*2 or 3.*--channel"):
        open_movie(path, channel=1)


def test_single_channel_single_plane_needs_no_choice(tmp_path: Path) -> None:
    movie = make(6, 1, 1)
    path = write_si(tmp_path / "one.tif", movie, [1])
    with open_movie(path) as reader:
        np.testing.assert_array_equal(reader.read(0, 6), movie[:, 0, 0].astype(np.float32))
        assert "plane" in reader.metadata


def test_ambiguous_choice_lists_the_options(tmp_path: Path) -> None:
    path = write_si(tmp_path / "vol.tif", make(), [1, 2])
    with pytest.raises(InputError, match=r"vol\.tif.*2 channels \(1 or 2\).*--channel 1 or 2"):
        open_movie(path)
    with pytest.raises(InputError, match=r"vol\.tif.*--channel.*and a plane with --plane"):
        open_movie(path)
    with pytest.raises(InputError, match=r"vol\.tif.*volume recording of 3 planes.*--plane 1 to 3"):
        open_movie(path, channel=1)
    with pytest.raises(InputError, match=r"has no plane 4.*--plane 1 to 3"):
        open_movie(path, channel=1, plane=4)
    with pytest.raises(InputError, match=r"has no plane 0"):
        open_movie(path, channel=1, plane=0)
    with pytest.raises(InputError, match=r"--key 'x' applies only"):
        open_movie(path, key="x", channel=1, plane=1)


def test_flyback_frames_are_skipped(tmp_path: Path) -> None:
    movie = make(4, 2, 1)
    path = write_si(
        tmp_path / "fly.tif",
        movie,
        [1],
        flyback=1,
        **{"SI.hFastZ.discardFlybackFrames": "true", "SI.hFastZ.numDiscardFlybackFrames": 1},
    )
    with open_movie(path, plane=2) as reader:
        assert reader.shape == (4, 6, 7)
        np.testing.assert_array_equal(reader.read(0, 4), movie[:, 1, 0].astype(np.float32))


def test_incomplete_last_volume_is_dropped_with_a_warning(tmp_path: Path) -> None:
    movie = make(3, 2, 2)
    path = write_si(tmp_path / "stopped.tif", movie, [1, 2], extra_pages=3)
    with (
        pytest.warns(UserWarning, match=r"3 pages after the last complete volume"),
        open_movie(path, channel=2, plane=2) as reader,
    ):
        assert len(reader) == 3
        np.testing.assert_array_equal(reader.read(0, 3), movie[:, 1, 1].astype(np.float32))


def test_slow_stack_is_slice_major(tmp_path: Path) -> None:
    movie = make(4, 2, 1)  # 4 frames at each of 2 slices
    software = si_software([1], 2, **{"SI.hFastZ.enable": "false"})
    software += "\nSI.hStackManager.framesPerSlice = 4"
    path = tmp_path / "slow.tif"
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for z in range(2):
            for t in range(4):
                tw.write(movie[t, z, 0], software=software, metadata=None)
    with open_movie(path, plane=2) as reader:
        np.testing.assert_array_equal(reader.read(0, 4), movie[:, 1, 0].astype(np.float32))


def test_classic_tiff_scanimage_and_pickle(tmp_path: Path) -> None:
    movie = make(5, 1, 2)
    path = tmp_path / "classic.tif"
    software = si_software([1, 2], 1)
    with tifffile.TiffWriter(path) as tw:  # not BigTIFF: tifffile would guess page offsets
        for t in range(5):
            for c in range(2):
                tw.write(movie[t, 0, c], software=software, metadata=None)
    with open_movie(path, channel=2) as reader:
        np.testing.assert_array_equal(reader.read(0, 5), movie[:, 0, 1].astype(np.float32))
        copy = pickle.loads(pickle.dumps(reader))
        np.testing.assert_array_equal(copy.read(1, 3), reader.read(1, 3))
        copy.close()


def test_legacy_scanimage_description(tmp_path: Path) -> None:
    movie = make(4, 1, 2)
    description = (
        "state.software.version = 3.8\nstate.acq.numberOfChannelsSave = 2\n"
        "state.acq.numberOfZSlices = 1\nstate.acq.frameRate = 4\nstate.acq.zoomFactor = 3"
    )
    path = tmp_path / "si3.tif"
    with tifffile.TiffWriter(path) as tw:
        for t in range(4):
            for c in range(2):
                tw.write(movie[t, 0, c], description=description, metadata=None)
    with open_movie(path, channel=1) as reader:
        np.testing.assert_array_equal(reader.read(0, 4), movie[:, 0, 0].astype(np.float32))
        assert reader.metadata["zoom"] == 3
        assert reader.metadata["frame_rate"] == 4


def test_truncated_scanimage_file(tmp_path: Path) -> None:
    path = write_si(tmp_path / "cut.tif", make(20, 1, 2, 32, 32), [1, 2])
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    with (
        pytest.raises(InputError, match=r"cut\.tif.*(truncated|corrupt)"),
        open_movie(path, channel=1) as reader,
    ):
        reader.read(0, len(reader))


def test_layout_settings() -> None:
    layout = scanimage_layout({"SI.hChannels.channelSave": 2})
    assert layout.channels == (2,) and layout.planes == 1
    off = scanimage_layout({"SI.hStackManager.numSlices": 5, "SI.hStackManager.enable": False})
    assert off.planes == 1
    with pytest.raises(ValueError, match="channel numbers"):
        scanimage_layout({"SI.hChannels.channelSave": "abc"})


def test_bad_settings_are_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.tif"
    software = "SI.hChannels.channelSave = [1;1]\nSI.hStackManager.numSlices = 1"
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for _ in range(4):
            tw.write(np.zeros((4, 4), "i2"), software=software, metadata=None)
    with pytest.raises(InputError, match=r"bad\.tif.*ScanImage settings.*export"):
        open_movie(path)


# -- multi-ROI (mROI) pages --------------------------------------------------------------------


def roi_json(sizes: list[tuple[int, int]], *, planes: int = 1, **roi_extra: object) -> str:
    """ScanImage-like ROI-group JSON: one ROI per (width, height), scanfields per z if planes."""
    rois = []
    for i, (width, height) in enumerate(sizes, start=1):
        field = {"pixelResolutionXY": [width, height], "centerXY": [0, i]}
        rois.append(
            {
                "name": f"ROI {i}",
                "zs": list(range(planes)) if planes > 1 else 0,
                "scanfields": [dict(field) for _ in range(planes)] if planes > 1 else field,
                "discretePlaneMode": 0,
                **roi_extra,
            }
        )
    group = {"imagingRoiGroup": {"name": "", "rois": rois if len(rois) > 1 else rois[0]}}
    return json.dumps({"RoiGroups": group})


def make_rois(
    sizes: list[tuple[int, int]], t: int = 4, planes: int = 1, channels: int = 2
) -> list[np.ndarray]:
    """One movie (T, planes, channels, height, width) per ROI, all values distinct."""
    out, start = [], 1
    for width, height in sizes:
        n = t * planes * channels * height * width
        out.append(
            np.arange(start, start + n, dtype="int32").reshape(t, planes, channels, height, width)
        )
        start += n
    return out


def write_mroi(
    path: Path,
    rois: list[np.ndarray],
    channels: list[int],
    *,
    flyto: int,
    page_width: int | None = None,
    json_text: str | None = None,
    mroi: str = "true",
    page_height: int | None = None,
) -> Path:
    """Write multi-ROI pages: the ROIs stacked from the top, `flyto` rows of -7 between them."""
    t, planes = rois[0].shape[:2]
    width = page_width or max(r.shape[-1] for r in rois)
    height = page_height or sum(r.shape[-2] for r in rois) + flyto * (len(rois) - 1)
    sizes = [(r.shape[-1], r.shape[-2]) for r in rois]
    software = si_software(channels, planes, **{"SI.hRoiManager.mroiEnable": mroi})
    artist = json_text if json_text is not None else roi_json(sizes, planes=planes)
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for frame in range(t):
            for plane in range(planes):
                for c in range(len(channels)):
                    page = np.full((height, width), -7, dtype="int32")
                    row = 0
                    for roi in rois:
                        h, w = roi.shape[-2:]
                        page[row : row + h, :w] = roi[frame, plane, c]
                        row += h + flyto
                    tw.write(
                        page,
                        software=software,
                        metadata=None,
                        extratags=[(315, "s", 0, artist, True)],  # Artist: the ROI JSON
                    )
    return path


SIZES = [(12, 10), (12, 6)]  # (width, height): pages 12 wide, 10 + 4 fly-to lines + 6 tall


@pytest.mark.parametrize("channel", [1, 2])
@pytest.mark.parametrize("roi", [1, 2])
def test_mroi_each_roi_reads_back_exactly(tmp_path: Path, roi: int, channel: int) -> None:
    rois = make_rois(SIZES)
    path = write_mroi(tmp_path / "mroi.tif", rois, [1, 2], flyto=4)
    expected = rois[roi - 1][:, 0, channel - 1].astype(np.float32)
    with open_movie(path, channel=channel, roi=roi) as reader:
        assert isinstance(reader, ScanImageReader)
        assert reader.shape == (4, *expected.shape[1:])
        np.testing.assert_array_equal(reader.read(0, 4), expected)
        np.testing.assert_array_equal(reader.read(1, 3), expected[1:3])
        meta = reader.metadata
        assert (meta["roi"], meta["rois"], meta["roi_name"]) == (roi, 2, f"ROI {roi}")
        assert f"roi={roi}" in repr(reader)
        copy = pickle.loads(pickle.dumps(reader))
        np.testing.assert_array_equal(copy.read(0, 4), expected)
        copy.close()


def test_mroi_narrower_roi_is_the_left_columns(tmp_path: Path) -> None:
    rois = make_rois([(12, 5), (8, 7), (10, 3)], channels=1)
    path = write_mroi(tmp_path / "narrow.tif", rois, [1], flyto=2)
    for number, roi in enumerate(rois, start=1):
        with open_movie(path, roi=number) as reader:
            assert reader.shape == (4, roi.shape[-2], roi.shape[-1])
            np.testing.assert_array_equal(reader.read(0, 4), roi[:, 0, 0].astype(np.float32))


def test_mroi_needs_a_roi_and_lists_them(tmp_path: Path) -> None:
    path = write_mroi(tmp_path / "two.tif", make_rois(SIZES), [1, 2], flyto=4)
    with pytest.raises(InputError, match=r"two\.tif.*2 ROIs.*--roi 1 or 2") as info:
        open_movie(path, channel=1)
    message = str(info.value)
    assert "1 'ROI 1' (12 x 10 pixels)" in message and "2 'ROI 2' (12 x 6 pixels)" in message
    for bad in (0, 3):
        with pytest.raises(InputError, match=rf"two\.tif.*has no ROI {bad}.*--roi 1 or 2"):
            open_movie(path, channel=1, roi=bad)


def test_single_roi_mroi_needs_no_choice(tmp_path: Path) -> None:
    rois = make_rois([(9, 7)], channels=1)
    path = write_mroi(tmp_path / "one.tif", rois, [1], flyto=3)
    with open_movie(path) as reader:
        assert (reader.metadata["roi"], reader.metadata["rois"]) == (1, 1)
        np.testing.assert_array_equal(reader.read(0, 4), rois[0][:, 0, 0].astype(np.float32))


def test_roi_is_refused_where_there_are_none(tmp_path: Path) -> None:
    si = write_si(tmp_path / "plain_si.tif", make(3, 1, 1), [1])
    with pytest.raises(InputError, match=r"plain_si\.tif.*not a ScanImage multi-ROI.*--roi out"):
        open_movie(si, roi=1)
    with open_movie(si) as reader:
        assert "roi" not in reader.metadata
    tif = tmp_path / "plain.tif"
    tifffile.imwrite(tif, np.zeros((3, 4, 4), "u2"))
    with pytest.raises(InputError, match=r"plain\.tif.*--roi 1.*ScanImage multi-ROI.*--roi out"):
        open_movie(tif, roi=1)
    npy = tmp_path / "movie.npy"
    np.save(npy, np.zeros((3, 4, 4), "u2"))
    with pytest.raises(InputError, match=r"movie\.npy.*--roi 2.*multi-ROI"):
        open_movie(npy, roi=2)
    with pytest.raises(InputError, match=r"--roi 1.*in-memory array"):
        open_movie(np.zeros((3, 4, 4)), roi=1)


def test_mroi_heights_that_do_not_fit_the_page(tmp_path: Path) -> None:
    rois = make_rois(SIZES, channels=1)
    # 10 + 6 + 2 rows of ROIs in pages of 23 rows: the 2 gaps cannot share 5 spare rows
    three = make_rois([(12, 10), (12, 6), (12, 2)], channels=1)
    path = write_mroi(tmp_path / "odd.tif", three, [1], flyto=2, page_height=23)
    with pytest.raises(InputError, match=r"odd\.tif.*leave 5 rows.*fly-to.*export the ROI"):
        open_movie(path, roi=1)
    text = roi_json([(12, 30), (12, 6)])  # taller than the page
    path = write_mroi(tmp_path / "tall.tif", rois, [1], flyto=4, json_text=text)
    with pytest.raises(InputError, match=r"tall\.tif.*leave -16 rows.*do not match the pages"):
        open_movie(path, roi=1)
    text = roi_json([(20, 10), (12, 6)])  # wider than the page
    path = write_mroi(tmp_path / "wide.tif", rois, [1], flyto=4, json_text=text)
    with pytest.raises(InputError, match=r"wide\.tif.*ROI 1 is 20 pixels wide"):
        open_movie(path, roi=1)
    path = write_mroi(tmp_path / "nojson.tif", rois, [1], flyto=4, json_text="not json")
    with pytest.raises(InputError, match=r"nojson\.tif.*ROI definitions.*missing"):
        open_movie(path, roi=1)


def test_mroi_multi_plane(tmp_path: Path) -> None:
    rois = make_rois(SIZES, planes=2, channels=1)
    path = write_mroi(tmp_path / "vol.tif", rois, [1], flyto=4)
    with open_movie(path, plane=2, roi=2) as reader:
        np.testing.assert_array_equal(reader.read(0, 4), rois[1][:, 1, 0].astype(np.float32))
    group = json.loads(roi_json(SIZES, planes=2))
    group["RoiGroups"]["imagingRoiGroup"]["rois"][0]["scanfields"][1]["pixelResolutionXY"] = [6, 5]
    path = write_mroi(tmp_path / "varies.tif", rois, [1], flyto=4, json_text=json.dumps(group))
    with pytest.raises(InputError, match=r"varies\.tif.*resolution with z.*ScanImage or suite2p"):
        open_movie(path, plane=1, roi=1)


def test_mroi_parts_of_a_recording(tmp_path: Path) -> None:
    rois = make_rois(SIZES, t=6, channels=1)
    folder = tmp_path / "rec"
    folder.mkdir()
    for i, frames in enumerate((slice(0, 4), slice(4, 6)), start=1):
        write_mroi(folder / f"rec_{i:05d}.tif", [r[frames] for r in rois], [1], flyto=4)
    with open_movie(folder, roi=2) as reader:
        assert reader.metadata["roi"] == 2
        np.testing.assert_array_equal(reader.read(0, 6), rois[1][:, 0, 0].astype(np.float32))


def test_scanimage_rois_skips_disabled() -> None:
    text = roi_json([(12, 10), (12, 6), (12, 4)])
    data = json.loads(text)
    data["RoiGroups"]["imagingRoiGroup"]["rois"][1]["enable"] = 0
    found = scanimage_rois(data, (18, 12))
    assert [(r.number, r.name, r.row, r.height) for r in found] == [
        (1, "ROI 1", 0, 10),
        (2, "ROI 3", 14, 4),
    ]
