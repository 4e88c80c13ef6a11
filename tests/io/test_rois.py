"""ROIs: label images, suite2p stat.npy (with iscell.npy), ImageJ ROI sets, and errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from calmdown.errors import InputError
from calmdown.io.rois import Rois, read_rois

roifile = pytest.importorskip("roifile", reason="ImageJ ROI sets are read with roifile")

SHAPE = (20, 24)


def labels() -> np.ndarray:
    image = np.zeros(SHAPE, dtype=np.uint16)
    image[2:5, 3:6] = 4
    image[10:12, 10:20] = 9
    image[15, 1] = 2
    return image


def as_sets(rois: Rois) -> dict[int, set[tuple[int, int]]]:
    return {
        int(i): set(zip(ys.tolist(), xs.tolist(), strict=True))
        for i, (ys, xs, _) in zip(rois.ids, rois.masks, strict=True)
    }


@pytest.mark.parametrize("suffix", [".npy", ".tif"])
def test_label_image(tmp_path: Path, suffix: str) -> None:
    image = labels()
    path = tmp_path / f"labels{suffix}"
    if suffix == ".npy":
        np.save(path, image)
    else:
        tifffile.imwrite(path, image)
    rois = read_rois(path, SHAPE)
    assert rois.ids.tolist() == [2, 4, 9]
    assert rois.ids.dtype == np.int64
    sets = as_sets(rois)
    assert sets[4] == {(y, x) for y in range(2, 5) for x in range(3, 6)}
    assert sets[2] == {(15, 1)}
    assert all(w.dtype == np.float32 and np.all(w == 1) for _, _, w in rois.masks)
    np.testing.assert_array_equal(rois.label_image(), image.astype(np.int32))


def test_mask_stack(tmp_path: Path) -> None:
    stack = np.zeros((2, *SHAPE), np.float32)
    stack[0, 1:3, 1:3] = 0.5
    stack[1, 5, 5] = 2.0
    path = tmp_path / "masks.npy"
    np.save(path, stack)
    rois = read_rois(path, SHAPE)
    assert rois.ids.tolist() == [1, 2]
    assert rois.masks[0][2].tolist() == [0.5] * 4


def write_stat(folder: Path, *, iscell: list[int] | None = None, shift: int = 0) -> list[dict]:
    stat = [
        {"ypix": np.array([1, 1, 2]), "xpix": np.array([3, 4, 3]) + shift, "lam": np.ones(3) * 2},
        {"ypix": np.array([10, 11]), "xpix": np.array([10, 10]), "lam": np.array([0.2, 0.8])},
        {"ypix": np.array([5]), "xpix": np.array([5]), "lam": np.array([1.0])},
    ]
    np.save(folder / "stat.npy", np.array(stat, dtype=object), allow_pickle=True)
    if iscell is not None:
        np.save(folder / "iscell.npy", np.column_stack([iscell, np.linspace(0, 1, len(iscell))]))
    return stat


def test_suite2p_stat_with_and_without_iscell(tmp_path: Path) -> None:
    write_stat(tmp_path)
    rois = read_rois(tmp_path / "stat.npy", SHAPE)
    assert rois.ids.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(rois.masks[1][2], np.array([0.2, 0.8], np.float32))
    write_stat(tmp_path, iscell=[1, 0, 1])
    rois = read_rois(tmp_path, SHAPE)  # the plane folder works too
    assert rois.ids.tolist() == [0, 2]
    assert as_sets(rois)[2] == {(5, 5)}
    assert rois.label_image()[1, 3] == 0  # id 0 is suite2p's first ROI; shown as 0 as well


def test_label_image_overlap_takes_heaviest() -> None:
    ys, xs = np.array([0, 0]), np.array([0, 1])
    rois = Rois(
        np.array([1, 2]),
        [(ys, xs, np.array([0.2, 0.9], "f4")), (ys, xs, np.array([0.5, 0.1], "f4"))],
        (1, 2),
    )
    assert rois.label_image().tolist() == [[2, 1]]


def test_imagej_roi_set(tmp_path: Path) -> None:
    rect = roifile.ImagejRoi(roitype=roifile.ROI_TYPE.RECT, top=2, left=3, bottom=5, right=7)
    rect.name = "rect"
    oval = roifile.ImagejRoi(roitype=roifile.ROI_TYPE.OVAL, top=10, left=10, bottom=16, right=16)
    oval.name = "oval"
    poly = roifile.ImagejRoi.frompoints([[1, 12], [8, 12], [1, 19]], name="triangle")
    path = tmp_path / "RoiSet.zip"
    roifile.roiwrite(path, [rect, oval, poly])
    rois = read_rois(path, SHAPE)
    assert rois.ids.tolist() == [1, 2, 3]
    assert rois.names == ("rect", "oval", "triangle")
    sets = as_sets(rois)
    assert sets[1] == {(y, x) for y in range(2, 5) for x in range(3, 7)}
    oval_pixels = sets[2]
    assert (12, 12) in oval_pixels and (10, 10) not in oval_pixels
    assert len(oval_pixels) == 32  # a 6-pixel circle as ImageJ draws it
    triangle = sets[3]
    assert (12, 1) in triangle and (18, 7) not in triangle
    single = tmp_path / "one.roi"
    rect.tofile(single)
    assert len(read_rois(single, SHAPE)) == 1


def test_imagej_errors(tmp_path: Path) -> None:
    line = roifile.ImagejRoi(roitype=roifile.ROI_TYPE.LINE, x1=1, y1=1, x2=5, y2=5)
    line.name = "a line"
    path = tmp_path / "lines.zip"
    roifile.roiwrite(path, [line])
    with pytest.raises(InputError, match=r"lines\.zip: ROI 1 \('a line'\) is a line.*no area"):
        read_rois(path, SHAPE)
    far = roifile.ImagejRoi(roitype=roifile.ROI_TYPE.RECT, top=50, left=50, bottom=60, right=60)
    path = tmp_path / "far.zip"
    roifile.roiwrite(path, [far])
    with pytest.raises(
        InputError, match=r"far\.zip: ROI 1 .*outside the movie's frames of 20 x 24"
    ):
        read_rois(path, SHAPE)
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"PK not really a zip")
    with pytest.raises(InputError, match=r"junk\.zip: cannot read as ImageJ ROIs"):
        read_rois(junk, SHAPE)


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nothere\.npy: no such ROI file"):
        read_rois(tmp_path / "nothere.npy", SHAPE)
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.tif: is empty \(0 bytes\)"):
        read_rois(empty, SHAPE)
    np.save(tmp_path / "small.npy", labels()[:10])
    with pytest.raises(InputError, match=r"label image is 10 x 24 pixels but the movie's frames"):
        read_rois(tmp_path / "small.npy", SHAPE)
    np.save(tmp_path / "zeros.npy", np.zeros(SHAPE, int))
    with pytest.raises(InputError, match=r"zeros\.npy: holds no ROIs"):
        read_rois(tmp_path / "zeros.npy", SHAPE)
    np.save(tmp_path / "neg.npy", -labels().astype(int))
    with pytest.raises(InputError, match=r"negative labels"):
        read_rois(tmp_path / "neg.npy", SHAPE)
    np.save(tmp_path / "frac.npy", labels() * 0.5)
    with pytest.raises(InputError, match=r"fractional"):
        read_rois(tmp_path / "frac.npy", SHAPE)
    (tmp_path / "rois.csv").write_text("1,2\n")
    with pytest.raises(InputError, match=r"unknown extension '\.csv'"):
        read_rois(tmp_path / "rois.csv", SHAPE)
    with pytest.raises(InputError, match=r"folder without suite2p's stat\.npy"):
        read_rois(tmp_path, SHAPE)
    s2p = tmp_path / "s2p"
    s2p.mkdir()
    write_stat(s2p, shift=30)
    with pytest.raises(InputError, match=r"ROI 0 reaches pixel .* frames are 20 x 24.*another"):
        read_rois(s2p / "stat.npy", SHAPE)
    write_stat(s2p, iscell=[1, 0])
    with pytest.raises(InputError, match=r"iscell\.npy: classifies 2 ROIs but stat\.npy.*3"):
        read_rois(s2p / "stat.npy", SHAPE)
    write_stat(s2p, iscell=[0, 0, 0])
    with pytest.raises(InputError, match=r"classifies none of the 3 ROIs as a cell"):
        read_rois(s2p / "stat.npy", SHAPE)


def test_rois_cropped_to_the_rows_and_columns_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    labels = np.zeros((10, 12), dtype=np.int32)
    labels[0:2, 0:2] = 1  # wholly outside the crop: left out, with a warning
    labels[2:5, 2:6] = 2  # partly outside
    labels[6:8, 6:8] = 3
    path = tmp_path / "labels.npy"
    np.save(path, labels)
    with caplog.at_level("WARNING"):
        rois = read_rois(path, (10, 12), crop=((3, 9), (3, 12)))
    assert "wholly outside" in caplog.text and "ids 1" in caplog.text
    assert rois.ids.tolist() == [2, 3] and rois.shape == (6, 9)
    np.testing.assert_array_equal(rois.label_image(), labels[3:9, 3:12] * (labels[3:9, 3:12] > 1))
    with pytest.raises(InputError, match="no ROI has a pixel in the rows 8:10"):
        read_rois(path, (10, 12), crop=((8, 10), (0, 5)))
