"""Look-alike data: shapes, binary masks, ribs where the masks are, seeds, layouts on disk."""

import numpy as np
import pytest
from skimage.measure import label, regionprops

from lungseg.data import (
    ensure_dataset,
    find_pairs,
    load_frames,
    lus_phantom,
    lus_phantoms_needed,
    lus_sequence,
    salient_composite,
    select_lus_frames,
    write_lus_dataset,
    write_salient_dataset,
)
from lungseg.data import FrameSet, synthetic
from lungseg.data.synthetic import lus_frame_number, random_lus_scene
from lungseg.errors import ConfigError, DataError


def folder_bytes(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("seed", range(4))
def test_phantom_frames_show_bright_rib_arcs_where_the_masks_are(seed):
    rng = np.random.default_rng(seed)
    image, mask = lus_phantom(rng, scene=random_lus_scene(rng, n_ribs=seed % 2 + 1))
    assert image.shape == mask.shape == (960, 128)
    assert image.dtype == mask.dtype == np.uint8
    assert set(np.unique(mask)) == {0, 1}
    assert image[mask > 0].mean() > image.mean() + 80
    for rib in regionprops(label(mask)):
        top, left, bottom, right = rib.bbox
        assert 30 <= right - left <= 80, rib.bbox
        thickness = mask[:, left:right].sum(axis=0)
        assert 12 <= thickness.min() and thickness.max() <= 31, thickness
        assert top > 100  # ribs lie below the soft tissue, above the lung
    # The acoustic shadow: far below a rib it is much darker than the frame on average.
    assert image[700:, mask.any(axis=0)].mean() < 0.5 * image[700:].mean() + 10


def test_frames_without_ribs_have_empty_masks():
    image, mask = lus_phantom(3, scene=random_lus_scene(np.random.default_rng(3), n_ribs=0))
    assert not mask.any() and image.std() > 10
    with pytest.raises(ConfigError):
        random_lus_scene(0, n_ribs=3)


def test_neighbouring_frames_differ_slightly():
    (first, first_mask), (second, second_mask) = list(lus_sequence(np.random.default_rng(0), 2))
    other, _ = next(lus_sequence(np.random.default_rng(1), 1))  # another probe position
    overlap = (first_mask & second_mask).sum() / (first_mask | second_mask).sum()
    assert 0.5 < overlap < 1  # the rib moved a little
    assert not np.array_equal(first, second)

    def difference(a, b):
        return np.abs(a.astype(float) - b).mean()

    assert difference(first, second) < 0.8 * difference(first, other)


def test_lus_data_set_has_the_paper_layout_and_is_reproducible(tmp_path):
    out = write_lus_dataset(tmp_path / "a", n=5, seed=1)
    pairs = find_pairs(out)
    assert [p.name for p in pairs] == [
        "lung_pos2_5", "lung_pos2_10", "lung_pos2_15", "lung_pos3_5", "lung_pos3_10"
    ]
    assert pairs[0].image.name == "img_lung_pos2_5.tif"
    assert pairs[0].mask.name == "mask_lung_pos2_5.tif"
    frames = load_frames(pairs, (960, 128))
    assert frames.masks.any(axis=(1, 2, 3)).all()
    write_lus_dataset(tmp_path / "b", n=5, seed=1)
    write_lus_dataset(tmp_path / "c", n=5, seed=2)
    assert folder_bytes(tmp_path / "a") == folder_bytes(tmp_path / "b")
    assert folder_bytes(tmp_path / "a") != folder_bytes(tmp_path / "c")


def paper_names(last):
    """The paper's frames per probe position: n mod 100 in 5..``last``, hundreds 0-9."""
    return [
        f"lung_pos{p}_{h + n}" for p in (2, 3) for h in range(0, 1000, 100)
        for n in range(5, last + 1, 5)
    ]


def test_phantoms_carry_the_papers_300_names_and_its_sets_select_them(tmp_path):
    assert [lus_frame_number(t) for t in (0, 1, 14, 15, 16, 149)] == [5, 10, 75, 105, 110, 975]
    out = write_lus_dataset(tmp_path / "lus", n=300, seed=0, shape=(24, 8))  # tiny frames
    frames = load_frames(find_pairs(out), (24, 8))
    assert frames.names == paper_names(75)
    chosen, _ = select_lus_frames(frames, 400)
    assert chosen.names[:200] == paper_names(50) and len(chosen) == 400
    chosen, _ = select_lus_frames(frames, 600)
    assert chosen.names[:300] == paper_names(75)
    # Only the names follow the paper's numbering; frame t of a position is the t-th picture.
    sequence = list(lus_sequence(np.random.default_rng([0, 0]), 150, shape=(24, 8)))
    for t in (0, 14, 15, 149):
        np.testing.assert_array_equal(frames.images[t, ..., 0], sequence[t][0])
        np.testing.assert_array_equal(frames.masks[t, ..., 0], sequence[t][1])


@pytest.mark.parametrize("n_frames, flips", [(400, True), (200, False), (80, True), (600, True),
                                             (42, True), (802, True)])
def test_enough_phantoms_are_generated_for_every_set_size(n_frames, flips):
    originals = n_frames // 2 if flips else n_frames
    n = lus_phantoms_needed(originals)
    per_position = [(n + 1) // 2, n // 2]  # write_lus_dataset's split over pos2 and pos3
    names = [f"lung_pos{p}_{lus_frame_number(t)}" for p, count in zip((2, 3), per_position)
             for t in range(count)]
    images = np.zeros((len(names), 1, 1, 1), np.uint8)
    frames = select_lus_frames(FrameSet(names, names, images, images.copy()), n_frames, flips)[0]
    assert len(frames) == n_frames
    assert lus_phantoms_needed(200) == 290 and lus_phantoms_needed(300) == 300


def test_salient_composites(tmp_path):
    image, mask = salient_composite(np.random.default_rng(0))
    assert image.dtype == mask.dtype == np.uint8 and image.shape == mask.shape
    assert all(300 <= side <= 500 for side in image.shape)
    assert set(np.unique(mask)) == {0, 1} and 0.01 < mask.mean() < 0.8
    out = write_salient_dataset(tmp_path / "a", n=2, seed=4)
    pairs = find_pairs(out, layout="salient")
    assert [(p.image.name, p.mask.name) for p in pairs] == [
        ("salient_0000.jpg", "salient_0000.png"), ("salient_0001.jpg", "salient_0001.png")
    ]
    load_frames(pairs, (32, 32))  # JPEG frame and PNG mask read back cleanly
    write_salient_dataset(tmp_path / "b", n=2, seed=4)
    assert folder_bytes(tmp_path / "a") == folder_bytes(tmp_path / "b")


def test_ensure_dataset_generates_once_and_reuses(tmp_path):
    out = tmp_path / "data" / "lus"
    assert ensure_dataset("lus", out, n=2, seed=0) == out
    manifest = (out / "synthetic.json").stat().st_mtime_ns
    first = folder_bytes(out)
    ensure_dataset("lus", out, n=2, seed=0)
    assert (out / "synthetic.json").stat().st_mtime_ns == manifest  # reused, not rewritten
    ensure_dataset("lus", out, n=3, seed=0)  # a different generated set is replaced
    assert len(find_pairs(out)) == 3 and folder_bytes(out) != first
    assert sorted(p.name for p in out.parent.iterdir()) == ["lus"]  # no temporary folders left


def test_ensure_dataset_never_leaves_half_a_set_or_touches_foreign_files(tmp_path, monkeypatch):
    def interrupted(out, n, seed, progress):
        write_lus_dataset(out, n=1, seed=seed)
        raise KeyboardInterrupt

    monkeypatch.setitem(synthetic._WRITERS, "lus", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ensure_dataset("lus", tmp_path / "lus", n=4, seed=0)
    assert list(tmp_path.iterdir()) == []
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="did not write"):
        ensure_dataset("salient", foreign, n=1, seed=0)
    assert (foreign / "notes.txt").read_text() == "keep me"
    with pytest.raises(ConfigError, match="unknown data set kind"):
        ensure_dataset("xpie", tmp_path / "x", n=1, seed=0)
    with pytest.raises(ConfigError, match="positive integer"):
        ensure_dataset("lus", tmp_path / "x", n=0, seed=0)


# --- subjects, probes and targets (issue 16) ----------------------------------------------


def frames_written(root):
    """The images and masks of a generated set (its manifest left out), by relative path."""
    return {path: data for path, data in folder_bytes(root).items() if path.name != "synthetic.json"}


def folder_sha256(root):
    import hashlib

    digest = hashlib.sha256()
    for path, data in folder_bytes(root).items():
        digest.update(str(path).encode())
        digest.update(data)
    return digest.hexdigest()


def test_default_set_is_byte_identical_to_the_one_before_subjects(tmp_path):
    # Hashes of sets written by the generator before subjects, probes and targets existed
    # (commit 8f6bb22), file names and bytes: the default set must not change.
    assert folder_sha256(write_lus_dataset(tmp_path / "a", n=4, seed=0)) == (
        "30c201f447327522123bc04931075f33f456bbaf457564da80052e9e64e92183"
    )
    assert folder_sha256(write_lus_dataset(tmp_path / "b", n=30, seed=5, shape=(48, 16))) == (
        "f5a8ae0f82845ab560696a81a9875c3b100563bfb6c7fdf8afdaa5ddafb195fd"
    )
    # The explicit defaults are the same set, and its manifest is what it was.
    explicit = write_lus_dataset(tmp_path / "c", n=4, seed=0, subjects=None, probe="linear",
                                 target="rib")
    assert folder_bytes(explicit) == folder_bytes(tmp_path / "a")
    ensure_dataset("lus", tmp_path / "d", n=2, seed=0, probe="linear", target="rib")
    assert (tmp_path / "d" / "synthetic.json").read_text().count(":") == 4  # kind n seed version


def test_subjects_differ_in_their_drawn_settings_and_image_statistics(tmp_path):
    subjects = [synthetic.random_subject(np.random.default_rng([0, k, 1])) for k in (1, 2, 3)]
    for field in ("pleura", "skin", "fascia", "rib_half_width", "rib_inset", "rib_thickness",
                  "rib_echo", "gain_db", "attenuation_db", "tgc_db", "speckle"):
        values = [getattr(subject, field) for subject in subjects]
        assert len(set(values)) == 3, field
    out = write_lus_dataset(tmp_path / "s", n=36, seed=0, subjects=3, shape=(240, 64))
    frames = load_frames(find_pairs(out), (240, 64))
    subject_of = np.array([name.split("_")[1] for name in frames.names])
    assert sorted(set(subject_of)) == ["subj01", "subj02", "subj03"]
    assert set(frames.groups) == {"subj01", "subj02", "subj03"}  # default groups: subjects

    def spread(statistic):
        """Spread of the subjects' means against the spread within subjects."""
        per_subject = [statistic[subject_of == s] for s in ("subj01", "subj02", "subj03")]
        between = np.std([values.mean() for values in per_subject])
        within = np.mean([values.std() for values in per_subject])
        return between / within

    images = frames.images[..., 0].astype(np.float64)
    assert spread(images.mean(axis=(1, 2))) > 2  # gain, attenuation, echogenicity
    depth_of_ribs = np.array([np.argwhere(m[..., 0])[:, 0].mean() for m in frames.masks])
    assert spread(depth_of_ribs) > 2  # pleural depth and layers


def test_subject_sets_are_reproducible_and_select_per_subject(tmp_path):
    a = write_lus_dataset(tmp_path / "a", n=8, seed=2, subjects=2, shape=(48, 16))
    b = write_lus_dataset(tmp_path / "b", n=8, seed=2, subjects=2, shape=(48, 16))
    c = write_lus_dataset(tmp_path / "c", n=8, seed=3, subjects=2, shape=(48, 16))
    assert folder_bytes(a) == folder_bytes(b) and folder_bytes(a) != folder_bytes(c)
    pairs = find_pairs(a, groups=r"subj\d+")  # the documented regex: same groups as default
    assert [p.name for p in pairs] == [
        f"lung_subj0{k}_pos{p}_{n}" for k in (1, 2) for p in (2, 3) for n in (5, 10)
    ]
    assert [p.group for p in pairs] == [p.group for p in find_pairs(a)] == ["subj01"] * 4 + [
        "subj02"] * 4
    frames = load_frames(pairs, (48, 16))
    chosen, rule = select_lus_frames(frames, 8)  # 4 originals: one per subject and position
    assert chosen.names[:4] == [f"lung_subj0{k}_pos{p}_5" for k in (1, 2) for p in (2, 3)]
    assert "subj01_pos2 1, subj01_pos3 1, subj02_pos2 1, subj02_pos3 1" in rule
    with pytest.raises(ConfigError, match="number of subjects"):
        write_lus_dataset(tmp_path / "x", n=2, subjects=0)


def test_targets_mark_line_band_or_shadow_of_the_same_picture():
    pictures = {}
    for target in synthetic.TARGETS:
        pictures[target] = next(lus_sequence(np.random.default_rng(4), 1, n_ribs=2, target=target))
    (image, rib), line, shadow = pictures["rib"], pictures["line"][1], pictures["shadow"][1]
    for target in ("line", "shadow"):
        np.testing.assert_array_equal(pictures[target][0], image)  # only the mask changes
    assert set(np.unique(line)) == {0, 1}
    thickness = line.sum(axis=0)[line.any(axis=0)]
    assert thickness.max() <= synthetic.LINE_SAMPLES + 1  # a line on the rib's surface
    assert line.sum() < rib.sum() and line.mean() < 0.015
    columns = rib.any(axis=0)
    np.testing.assert_array_equal(line.argmax(axis=0)[columns], rib.argmax(axis=0)[columns])
    assert (rib <= shadow).all() and shadow.mean() > 0.2  # the rib and all beneath it
    assert shadow[-1].any() and not rib[-1].any()
    assert image[700:][shadow[700:] > 0].mean() < 0.5 * image[700:][shadow[700:] == 0].mean()


def test_convex_frames_are_black_outside_the_fan_with_masks_inside(tmp_path):
    geometry = synthetic.ConvexGeometry()
    assert geometry.image_shape == (820, 1124) and geometry.polar_shape == (960, 192)
    fan = synthetic.convex_fan(geometry)
    polar = next(lus_sequence(np.random.default_rng(1), 1, shape=geometry.polar_shape,
                              n_ribs=2, zoom=synthetic.CONVEX_ZOOM, target="shadow"))
    image, mask = synthetic.scan_convert(*polar, geometry)
    assert image.shape == mask.shape == (820, 1124) and image.dtype == mask.dtype == np.uint8
    assert 0.4 < fan.mean() < 0.8 and not fan[0, 0] and fan[410, 562]
    assert not image[~fan].any() and image[fan].mean() > 20
    assert mask.any() and not mask[~fan].any()
    # Rib shadows fan out: the shadowed columns widen with depth.
    rows = np.flatnonzero(mask.any(axis=1))
    shallow, deep = mask[rows[0] + 50].sum(), mask[rows[0] + 450].sum()
    assert deep > 1.3 * shallow
    # Written sets: any frame size, every frame black outside its fan, masks inside.
    out = write_lus_dataset(tmp_path / "c", n=4, seed=0, subjects=1, probe="convex",
                            target="line", shape=(82, 112))
    frames = load_frames(find_pairs(out), (82, 112))
    small_fan = synthetic.convex_fan(synthetic.ConvexGeometry((82, 112)))
    assert not frames.images[:, ~small_fan].any() and not frames.masks[:, ~small_fan].any()
    assert frames.masks.any(axis=(1, 2, 3)).all() and frames.images[:, small_fan].mean() > 20
    with pytest.raises(ConfigError, match="unknown probe 'phased'"):
        write_lus_dataset(tmp_path / "x", n=1, probe="phased")


def test_ensure_dataset_records_options_and_regenerates_when_they_change(tmp_path):
    out = tmp_path / "lus"
    ensure_dataset("lus", out, n=2, seed=0, subjects=1, target="line")
    from lungseg.files import read_json

    manifest = read_json(out / "synthetic.json")
    assert (manifest["subjects"], manifest["target"]) == (1, "line") and "probe" not in manifest
    assert synthetic.is_generated_set(out, "lus", 2, 0, subjects=1, target="line")
    assert not synthetic.is_generated_set(out, "lus", 2, 0, subjects=1)
    line = frames_written(out)
    assert line == frames_written(write_lus_dataset(tmp_path / "line", n=2, seed=0, subjects=1, target="line"))
    ensure_dataset("lus", out, n=2, seed=0, subjects=1, target="shadow")
    assert read_json(out / "synthetic.json")["target"] == "shadow"
    # The files were made again with the new option: those the generator writes for it.
    shadow = frames_written(out)
    assert shadow == frames_written(write_lus_dataset(tmp_path / "shadow", n=2, seed=0, subjects=1,
                                                      target="shadow"))
    assert shadow != line
    with pytest.raises(ConfigError, match="salient data sets take no option subjects"):
        ensure_dataset("salient", tmp_path / "s", n=1, subjects=2)
