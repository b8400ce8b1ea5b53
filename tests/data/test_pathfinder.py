"""Pathfinder / Path-X: the seeded generator, the release layout, the reader and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from ssm_lra.data import pathfinder as pf
from ssm_lra.errors import DataError, UserError
from tests.data.cli import assert_generate_rejects, run_data_cli

EIGHT = np.ones((3, 3), bool)  # 8-connectivity: 1-pixel-wide diagonal lines are 8- but not 4-connected


def _render(resolution, contour, index, seed=0, with_masks=True):
    rng = pf.image_rng(seed, resolution, contour, index)
    return pf.render_sample(rng, pf.PARAMS[resolution], contour, with_masks=with_masks)


# ---------------------------------------------------------------- parameters


def test_parameter_table():
    assert pf.DIFFICULTY_FOLDERS == {6: "curv_baseline", 9: "curv_contour_length_9", 14: "curv_contour_length_14"}
    p32, p128 = pf.PARAMS[32], pf.PARAMS[128]
    assert (p32["paddle_length"], p32["paddle_thickness"], p32["margin"], p32["marker_radius"]) == (2, 0.5, 1, 1.5)
    assert (p32["seed_distance"], p32["continuity"], p32["padding"], p32["antialias_scale"]) == (7, 1.0, 1, 2)
    assert (p128["paddle_length"], p128["paddle_thickness"], p128["marker_radius"]) == (5, 1.5, 3.0)
    assert (p128["seed_distance"], p128["continuity"], p128["margin"]) == (20, 1.8, 2)
    assert set(pf.PARAMS) >= {32, 64, 128}
    # Integer division throughout, like the Python-2 original.
    assert pf.distractor_counts(32, 14) == (4, 5)
    assert pf.distractor_counts(32, 9) == (3, 6)
    assert pf.distractor_counts(32, 6) == (2, 10)
    assert pf.distractor_counts(128, 14) == (4, 8)
    assert pf.distractor_counts(128, 6) == (2, 17)


# ---------------------------------------------------------------- single images


@pytest.mark.parametrize("resolution", [32, 64, 128])
def test_image_size_and_value_range(resolution):
    for index in range(6):
        image, label, masks = _render(resolution, 14, index)
        assert image.shape == (resolution, resolution) and image.dtype == np.uint8
        assert image.max() == 255 and image.min() == 0
        assert len(np.unique(image)) > 10  # anti-aliased, not a binary or constant image
        assert label in (0, 1)
        # Min-max scaling makes the markers (near) the brightest pixels; the paddles stay dimmer.
        aa = masks["aa_scale"]
        on_markers = masks["marker_disks"].any(0).reshape(resolution, aa, resolution, aa).any(axis=(1, 3))
        assert image[on_markers].max() >= 245
        assert np.percentile(image[image > 0], 50) < 200
    assert masks["num_distractors"] > 0


def test_same_stream_same_image_other_stream_other_image():
    a = _render(32, 14, 3)[0]
    assert np.array_equal(a, _render(32, 14, 3)[0])
    assert not np.array_equal(a, _render(32, 14, 4)[0])
    assert not np.array_equal(a, _render(32, 14, 3, seed=1)[0])
    assert not np.array_equal(a, _render(32, 9, 3)[0])


def test_target_snakes_need_two_paddles():
    # The clearance claims a snake's far-end marker disk with its last extension paddle.
    with pytest.raises(ValueError, match="at least 2"):
        _render(32, 1, 0)


def test_labels_are_balanced():
    labels = [_render(32, 6, i, seed=11, with_masks=False)[1] for i in range(200)]
    assert 80 <= sum(labels) <= 120  # 100 +- 2.8 sigma


def _component(mask: np.ndarray, point) -> np.ndarray:
    labels, _ = ndimage.label(mask, EIGHT)
    value = labels[tuple(point)]
    assert value > 0, "the point is not on the mask"
    return labels == value


def _disks(ends: np.ndarray, radius: float, aa: int, size: int) -> np.ndarray:
    """Marker disks of `radius` (final pixels) centred on `ends` (y, x, final pixels), at the aa scale."""
    yy, xx = np.ogrid[:size, :size]
    out = np.zeros((size, size), bool)
    for y, x in ends:
        out |= (yy - y * aa) ** 2 + (xx - x * aa) ** 2 <= (radius * aa) ** 2
    return out


# (resolution, contour, images): every image is checked, none may fail
CONNECTIVITY_CASES = [(32, 14, 150), (32, 6, 120), (64, 9, 100), (128, 14, 100)]


@pytest.mark.parametrize("resolution,contour,count", CONNECTIVITY_CASES)
def test_markers_are_connected_exactly_for_positives(resolution, contour, count):
    """Markers sit on the two ends of one target snake (label 1) or of two (label 0).

    A snake is dashed: its curve is its paddles plus the gaps between them ("links"). Connectivity
    is checked with ndimage.label on the masks at the anti-aliasing scale, 8-connected (a 1-pixel
    diagonal line is not 4-connected), on the two target curves and both marker disks together:
    in EVERY positive the markers are in one component, in EVERY negative in two. The generator
    keeps a 1 aa pixel clearance between the two target snakes, so even with a disk at all four of
    their ends the two snakes never touch, whatever the label.
    """
    radius = pf.PARAMS[resolution]["marker_radius"]
    labels_seen = set()
    for index in range(count):
        image, label, m = _render(resolution, contour, index, seed=2)
        aa = m["aa_scale"]
        size = resolution * aa
        chains = m["targets"] | m["links"]
        origin, terminal = m["marked_snakes"]
        assert (origin == terminal) == (label == 1)
        labels_seen.add(label)
        centres = [tuple(p) for p in m["markers"] * aa]
        # Paddles of different snakes never overlap; the dashes are real gaps.
        assert not (m["targets"][0] & m["targets"][1]).any()
        assert not (m["targets"].any(0) & m["distractors"]).any()
        assert ndimage.label(m["targets"][0], EIGHT)[1] > 1
        for s in (0, 1):
            # Each target snake is one curve, and it runs from its tail to its far end (wide PIL lines
            # may leave out an end pixel itself: within one aa pixel).
            assert ndimage.label(chains[s], EIGHT)[1] == 1
            near_curve = ndimage.binary_dilation(chains[s], EIGHT)
            assert all(near_curve[tuple(p)] for p in m["ends"][s] * aa)
        # The origin marker is on the tail of its snake, the terminal one on the far end of its snake.
        assert tuple(m["markers"][0]) == tuple(m["ends"][origin][0])
        assert tuple(m["markers"][1]) == tuple(m["ends"][terminal][1])
        for j in (0, 1):
            assert np.array_equal(m["marker_disks"][j], _disks(m["markers"][j : j + 1], radius, aa, size))
        # The strict check: the markers are connected exactly in positives.
        both = _component(chains.any(0) | m["marker_disks"].any(0), centres[0])
        assert both[centres[1]] == (label == 1), f"image {index}, label {label}"
        # The clearance: snake 0 and snake 1, each with disks at both of its ends, are not 8-connected.
        snakes = [chains[s] | _disks(m["ends"][s], radius, aa, size) for s in (0, 1)]
        assert not (ndimage.binary_dilation(snakes[0], EIGHT) & snakes[1]).any(), f"image {index}"
    assert labels_seen == {0, 1}


# ---------------------------------------------------------------- release folders


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_release_folders_are_deterministic(tmp_path, monkeypatch):
    monkeypatch.setattr(pf, "_CHUNK", 10)  # several work units, so that both workers get some
    kwargs = dict(resolution=32, contour_length=14, num=30, progress=False)
    a = pf.generate_pathfinder_release(tmp_path / "a", seed=5, workers=1, **kwargs)
    assert a == tmp_path / "a" / "curv_contour_length_14"
    pf.generate_pathfinder_release(tmp_path / "b", seed=5, workers=1, **kwargs)
    pf.generate_pathfinder_release(tmp_path / "c", seed=5, workers=2, **kwargs)
    pf.generate_pathfinder_release(tmp_path / "d", seed=6, workers=1, **kwargs)
    files = _tree_bytes(tmp_path / "a")
    assert len([f for f in files if f.endswith(".png")]) == 30
    assert files == _tree_bytes(tmp_path / "b")
    assert files == _tree_bytes(tmp_path / "c")
    other = _tree_bytes(tmp_path / "d")
    assert set(other) == set(files)
    different = [name for name in files if name.endswith(".png") and files[name] != other[name]]
    assert len(different) == 30


def test_release_layout_and_round_trip(tmp_path):
    folder = pf.generate_pathfinder_release(tmp_path, 32, 6, 25, seed=3, progress=False)
    assert folder == tmp_path / "curv_baseline"
    assert sorted(p.name for p in folder.iterdir()) == ["generator.json", "imgs", "metadata"]
    assert not list(folder.rglob(".*.tmp"))
    lines = (folder / "metadata" / "0.npy").read_text().splitlines()
    assert len(lines) == 25
    fields = lines[7].split(" ")
    assert fields[:3] == ["imgs/0", "sample_7.png", "7"] and fields[3] in ("0", "1")
    assert fields[4:] == ["1.0", "6", "2", "2", "0.5", "1", "1"]  # continuity .. number of contrasts
    meta = json.loads((folder / "generator.json").read_text())
    assert (meta["seed"], meta["num"], meta["resolution"], meta["contour_length"]) == (3, 25, 32, 6)
    assert meta["params"] == pf.PARAMS[32] and meta["num_distractors"] == 10

    paths, labels, stats = pf.read_pathfinder_index(folder)
    assert paths == [folder / "imgs" / "0" / f"sample_{i}.png" for i in range(25)]
    assert labels.dtype == np.int32
    assert labels.tolist() == [int(line.split()[3]) for line in lines]
    assert stats["images"] == 25 and stats["label_counts"][1] == meta["counts"]["label_1"]
    for i in (0, 24):
        image = pf.load_image(paths[i])
        rng = pf.image_rng(3, 32, 6, i)
        expected, label, _ = pf.render_sample(rng, pf.PARAMS[32], 6, with_masks=False)
        assert np.array_equal(image, expected) and label == labels[i]
        assert not pf.is_empty(image)
        unit = pf.to_unit_float(image)
        assert unit.dtype == np.float32 and unit.max() == 1.0 and unit.min() == 0.0


def test_ensure_reuses_matching_folders_and_drops_stale_files(tmp_path, monkeypatch):
    folder = pf.ensure_pathfinder(tmp_path, 32, 9, 12, 1)
    assert folder == tmp_path / "curv_contour_length_9"
    before = _tree_bytes(folder)

    def fail(*args, **kwargs):
        raise AssertionError("regenerated although the folder matches")

    with monkeypatch.context() as m:
        m.setattr(pf, "generate_pathfinder_release", fail)
        pf.ensure_pathfinder(tmp_path, 32, 9, 12, 1, workers=2)
    pf.ensure_pathfinder(tmp_path, 32, 9, 5, 1)  # fewer images: the old ones must not be read
    paths, _, _ = pf.read_pathfinder_index(folder)
    assert len(paths) == 5 and len(list((folder / "imgs" / "0").glob("*.png"))) == 5
    assert all(before[str(p.relative_to(folder))] == p.read_bytes() for p in paths)
    (folder / "metadata" / "0.npy").unlink()
    pf.ensure_pathfinder(tmp_path, 32, 9, 5, 1)
    assert (folder / "metadata" / "0.npy").is_file()


def test_bad_generator_arguments(tmp_path):
    with pytest.raises(UserError, match="contour length"):
        pf.generate_pathfinder_release(tmp_path, 32, 7, 5, progress=False)
    with pytest.raises(UserError, match="resolution"):
        pf.generate_pathfinder_release(tmp_path, 48, 14, 5, progress=False)
    with pytest.raises(UserError, match="at least 1"):
        pf.generate_pathfinder_release(tmp_path, 32, 14, 0, progress=False)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UserError, match="cannot write"):
        pf.generate_pathfinder_release(blocker / "sub", 32, 14, 5, progress=False)


# ---------------------------------------------------------------- the reader on release-format fixtures


def _png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path)


def _fixture(root: Path) -> Path:
    """A difficulty folder as the release has it: text .npy metadata, two batches, an empty image."""
    folder = root / "curv_baseline"
    rng = np.random.default_rng(0)
    meta = folder / "metadata"
    meta.mkdir(parents=True)
    rows = {0: [(2, 1), (10, 0), (0, 1)], 1: [(0, 0), (1, 1)]}
    for batch, entries in rows.items():
        lines = []
        for i, label in entries:
            pixels = np.zeros((32, 32)) if (batch, i) == (0, 10) else rng.integers(0, 256, (32, 32))
            _png(folder / "imgs" / str(batch) / f"sample_{i}.png", pixels)
            lines.append(f"imgs/{batch} sample_{i}.png {i} {label} 1.0 6 2 2 0.5 1 1")
        (meta / f"{batch}.npy").write_text("\n".join(lines) + "\n")
    return folder


def test_reader_reads_release_format_in_order(tmp_path):
    folder = _fixture(tmp_path)
    paths, labels, stats = pf.read_pathfinder_index(folder)
    names = [str(p.relative_to(folder)) for p in paths]
    assert names == ["imgs/0/sample_0.png", "imgs/0/sample_2.png", "imgs/0/sample_10.png",
                     "imgs/1/sample_0.png", "imgs/1/sample_1.png"]  # fmt: skip
    assert labels.tolist() == [1, 1, 0, 0, 1]
    assert stats == {"images": 5, "metadata_files": 2, "label_counts": {0: 2, 1: 3}}
    images = [pf.load_image(p) for p in paths]
    assert all(im.shape == (32, 32) and im.dtype == np.uint8 for im in images)
    assert [pf.is_empty(im) for im in images] == [False, False, True, False, False]


def test_reader_accepts_numpy_metadata(tmp_path):
    folder = _fixture(tmp_path)
    text_result = pf.read_pathfinder_index(folder)
    for path in (folder / "metadata").glob("*.npy"):
        rows = [line.split() for line in path.read_text().splitlines()]
        with open(path, "wb") as f:  # what the original generator's np.save wrote
            np.save(f, np.array(rows))
        assert path.read_bytes().startswith(b"\x93NUMPY")
    paths, labels, _ = pf.read_pathfinder_index(folder)
    assert paths == text_result[0] and labels.tolist() == text_result[1].tolist()


def test_reader_missing_metadata_says_how_to_generate(tmp_path):
    with pytest.raises(DataError) as info:
        pf.read_pathfinder_index(tmp_path / "curv_contour_length_14")
    message = str(info.value)
    assert str(tmp_path / "curv_contour_length_14" / "metadata") in message
    assert "python -m ssm_lra.data generate --task pathfinder32 --out DIR" in message
    (tmp_path / "metadata").mkdir()
    with pytest.raises(DataError, match="no <batch>.npy"):
        pf.read_pathfinder_index(tmp_path)


BAD_LINES = {
    "truncated": ("imgs/1 sample_1.png", "at least 4"),
    "bad label": ("imgs/1 sample_1.png 1 2 1.0 6 2 2 0.5 1 1", "not 0 or 1"),
    "bad index": ("imgs/1 sample_1.png one 1 1.0 6 2 2 0.5 1 1", "not an integer"),
    "missing image": ("imgs/1 sample_7.png 7 1 1.0 6 2 2 0.5 1 1", "sample_7.png does not exist"),
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_reader_names_file_and_line(tmp_path, case):
    folder = _fixture(tmp_path)
    bad, what = BAD_LINES[case]
    path = folder / "metadata" / "1.npy"
    first = path.read_text().splitlines()[0]
    path.write_text(f"{first}\n{bad}\n")
    with pytest.raises(DataError) as info:
        pf.read_pathfinder_index(folder)
    message = str(info.value)
    assert f"{path}, line 2" in message and what in message


def test_reader_rejects_unreadable_metadata(tmp_path):
    folder = _fixture(tmp_path)
    path = folder / "metadata" / "0.npy"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DataError, match="neither a text metadata file"):
        pf.read_pathfinder_index(folder)
    with open(path, "wb") as f:
        np.save(f, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=str(path)):
        pf.read_pathfinder_index(folder)


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "truncated"])
def test_corrupt_png_is_a_data_error_naming_the_file(tmp_path, content):
    path = tmp_path / "imgs" / "0" / "sample_0.png"
    _png(path, np.arange(32 * 32).reshape(32, 32) % 256)
    path.write_bytes(path.read_bytes()[:60] if content == "truncated" else content)
    with pytest.raises(DataError) as info:
        pf.load_image(path)
    assert str(path) in str(info.value)


def test_split_indices():
    splits = pf.split_indices(1000)
    assert {k: len(v) for k, v in splits.items()} == {"train": 800, "validation": 100, "test": 100}
    everything = np.concatenate(list(splits.values()))
    assert sorted(everything.tolist()) == list(range(1000))
    assert all(np.array_equal(v, np.sort(v)) for v in splits.values())
    again = pf.split_indices(1000)
    assert all(np.array_equal(splits[k], again[k]) for k in splits)
    assert not np.array_equal(splits["test"], pf.split_indices(1000, seed=1)["test"])
    assert {k: len(v) for k, v in pf.split_indices(200_000).items()} == {
        "train": 160_000, "validation": 20_000, "test": 20_000}  # fmt: skip


# ---------------------------------------------------------------- the command line


def test_cli_generates_the_release_layout(tmp_path):
    out = tmp_path / "pathfinder32"
    result = run_data_cli("generate", "--task", "pathfinder32", "--out", str(out), "--num", "20", "--seed", "1",
                  "--workers", "1", "--no-progress")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip().splitlines()) == 1 and "20 curv_contour_length_14 images" in result.stdout
    folder = out / "curv_contour_length_14"
    assert sorted(p.name for p in (folder / "imgs" / "0").iterdir()) == sorted(f"sample_{i}.png" for i in range(20))
    assert [p.name for p in (folder / "metadata").iterdir()] == ["0.npy"]
    paths, labels, _ = pf.read_pathfinder_index(folder)
    assert len(paths) == 20 and pf.load_image(paths[0]).shape == (32, 32)
    lib = pf.generate_pathfinder_release(tmp_path / "lib", 32, 14, 20, seed=1, progress=False)
    assert _tree_bytes(folder) == _tree_bytes(lib)


@pytest.mark.parametrize(
    "args",
    [
        ["--contour-length", "7"],
        ["--task", "pathx", "--contour-length", "6"],
        ["--num", "0"],
        ["--workers", "abc"],
        ["--task", "pathfinder33"],
        ["--out", "{blocked}/sub"],
    ],
    ids=["contour", "pathx-contour", "num0", "workers", "task", "unwritable"],
)
def test_cli_bad_arguments_are_one_line_errors(tmp_path, args):
    defaults = {"--task": "pathfinder32", "--out": str(tmp_path / "out"), "--num": "3", "--workers": "1"}
    assert_generate_rejects(tmp_path, defaults, args)


def test_generators_registry_has_the_pathfinder_tasks():
    from ssm_lra.data.__main__ import GENERATORS, build_parser

    assert {"listops", "pathfinder32", "pathfinder64", "pathfinder128", "pathx"} <= set(GENERATORS)
    args = build_parser().parse_args(["generate", "--task", "pathx", "--out", "x"])
    assert args.contour_length is None and GENERATORS["pathx"].default_num == 200_000
    args = build_parser().parse_args(["generate", "--task", "pathfinder64", "--out", "x", "--contour-length", "9"])
    assert args.contour_length == 9
