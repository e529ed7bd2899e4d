"""Look-alike data: lung-ultrasound phantoms with rib masks, and gray salient-object composites.

Neither the authors' LUS frames nor XPIE can be downloaded here, so the package generates
stand-ins with the same layouts, sizes and file types, good enough to exercise and compare
the whole pipeline (not to reproduce the paper's numbers).

LUS phantom (``lus_phantom``): a 960 x 128 B-mode frame (depth samples x scan lines) built
the way the image forms: an echogenicity map (skin, fat, fascia, striated muscle, the bright
pleural line, A-line reverberations at multiples of the pleural depth, optional B-lines, and
0-2 ribs as bright convex arcs casting an acoustic shadow), depth attenuation and time-gain
compensation, multiplicative Rayleigh speckle, log compression and a light smoothing in the
log domain (the paper's frames were speckle-reduced). The mask (``target``) is the rib's
bright arc band (``"rib"``, the default), a thin line on the rib's surface (``"line"``), or
the rib with the acoustic shadow beneath it (``"shadow"``). ``write_lus_dataset`` writes
sequences per probe position whose neighbouring frames drift smoothly, named as in the paper.

Subjects (``Subject``, ``random_subject``): anatomy and machine settings that stay fixed for
all frames of one person (pleural depth, tissue layers, rib size, spacing and echogenicity,
gain, attenuation and time-gain curve, speckle grain). Without ``subjects`` the set is the
paper-like one volunteer (``PAPER_VOLUNTEER``, byte-identical to earlier versions); with
``subjects=K`` each of K drawn subjects gets two probe positions, named
``lung_subj01_pos2_5``: the regex ``subj\\d+`` (``--groups 'subj\\d+'``) groups by subject,
and ``pairs.default_group`` does so by itself.

Probes (``probe``): ``"linear"`` writes the 960 x 128 frames; ``"convex"`` renders the same
physics on a polar grid (depth samples x scan lines fanning over 60 degrees) and
scan-converts it to an 820 x 1124 sector image (``ConvexGeometry``), black outside the fan,
with rib shadows fanning out; its anatomy is drawn at 0.7 of the linear scale
(``CONVEX_ZOOM``), as a convex probe images a deeper and wider field.

Salient composites (``salient_composite``): a photograph from ``skimage.data`` as background,
1-3 objects (random smooth blobs, ellipses, polygons, the ``skimage.data.horse`` silhouette)
filled with another photograph, and their union as the mask.

Everything is drawn from ``numpy.random.Generator`` seeded by the caller: the same seed gives
byte-identical files.
"""

import functools
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.special import expit

from lungseg.data.frames import PAPER_FRAME_STEP, PAPER_SETS
from lungseg.data.io import write_image
from lungseg.data.pairs import SUBJECT_PREFIX
from lungseg.progress import progress as progress_bar
from lungseg.errors import ConfigError, DataError
from lungseg.files import read_json, temporary_path, write_json

LUS_SHAPE = (960, 128)  # depth samples x scan lines, as the paper's frames
PROBES = ("linear", "convex")
TARGETS = ("rib", "line", "shadow")
# The "line" target: the rib's surface drawn this many samples deep per 960 samples of frame
# height (whatever the anatomy's scale), i.e. 1-2 pixels once resized to about 100 rows.
LINE_SAMPLES = 12
CONVEX_ZOOM = 0.7  # a convex frame images a deeper and wider field: anatomy drawn smaller
# Options of a generated LUS set besides n and seed, and their defaults (the paper-like set).
LUS_OPTIONS = {"subjects": None, "probe": "linear", "target": "rib"}
# Phantom frames are numbered as the paper's 300: every 5th frame, n mod 100 in 5..75.
LUS_FRAME_STEP = PAPER_FRAME_STEP
LUS_FRAMES_PER_HUNDRED = PAPER_SETS[-1][1] // PAPER_FRAME_STEP  # 15: 5, 10, ..., 75
SALIENT_SIDES = (300, 500)  # XPIE-like image sides in pixels
MANIFEST = "synthetic.json"
GENERATOR_VERSION = 2  # bump when generated files (pictures or names) change: sets regenerate
KINDS = ("lus", "salient")

# ---------------------------------------------------------------------------------------------
# Lung-ultrasound phantom


@dataclass(frozen=True)
class Subject:
    """One person on one machine set-up: what stays fixed over all of their frames.

    Depths are in samples of a 960-sample frame and widths in scan lines of a 128-line frame
    (scaled to the frame drawn); a pair is the range a probe position draws its value from.
    The defaults are the paper-like volunteer of the one-subject set; ``random_subject``
    draws others.
    """

    pleura: tuple = (240, 300)  # depth of the pleural line
    skin: tuple = (18, 30)  # depth where the skin ends
    fascia: tuple = (80, 120)  # depth of the fascia under the fat
    rib_gap: tuple = (45, 80)  # how far above the pleural line the ribs' apex sits
    rib_half_width: tuple = (20, 38)  # a lone rib, lines
    rib_pair_half_width: tuple = (20, 27)  # each of two ribs, lines
    rib_inset: tuple = (-3, 4)  # how far two ribs sit in from the frame's sides (spacing), lines
    rib_sag: tuple = (10, 24)  # curvature: how far the arc's ends sit below its apex
    rib_thickness: tuple = (16, 28)  # of the bright band (the "rib" mask)
    rib_echo: float = 1.0  # echogenicity of the rib surface, relative
    gain_db: tuple = (-2, 2)  # overall gain
    attenuation_db: float = 14.0  # loss over the frame's depth left after time-gain compensation
    tgc_db: tuple = ()  # time-gain curve: extra gain (dB) at evenly spaced depths; () flat
    speckle: float = 1.0  # speckle grain size (1: about 3 samples deep, 1.5 lines wide)


PAPER_VOLUNTEER = Subject()


def random_subject(rng):
    """A random ``Subject``: each anatomy and machine setting drawn around its own centre."""
    rng = np.random.default_rng(rng)

    def around(centre, half):
        return (float(centre - half), float(centre + half))

    pleura = rng.uniform(190, 360)
    skin = rng.uniform(12, 36)
    gap = rng.uniform(40, 85)
    # The fascia lies between the skin and the ribs, at a depth share of its own.
    fascia = skin + 15 + rng.uniform(0.2, 0.7) * (pleura - gap - skin - 45)
    size = rng.uniform(0.8, 1.25)
    return Subject(
        pleura=around(pleura, 25),
        skin=around(skin, 5),
        fascia=around(fascia, 12),
        rib_gap=around(gap, 10),
        rib_half_width=(20 * size, 38 * size),
        rib_pair_half_width=(20 * size, 27 * size),
        rib_inset=around(rng.uniform(-8, 10), 3.5),
        rib_sag=around(rng.uniform(12, 22), 5),
        rib_thickness=around(rng.uniform(18, 26), 3),
        rib_echo=float(rng.uniform(0.6, 1.4)),
        gain_db=around(rng.uniform(-6, 6), 1.5),
        attenuation_db=float(rng.uniform(8, 22)),
        tgc_db=tuple(float(gain) for gain in rng.uniform(-4, 4, size=5)),
        speckle=float(rng.uniform(0.7, 1.5)),
    )


@dataclass(frozen=True)
class Rib:
    """A rib seen in cross-section: a bright arc whose ends sit ``sag`` samples below its apex."""

    centre: float  # scan line of the apex
    half_width: float  # scan lines from the apex to either end
    top: float  # depth sample of the apex
    sag: float  # samples
    thickness: float  # samples of the bright band, i.e. of the mask


@dataclass(frozen=True)
class LusScene:
    """Everything that stays fixed while the probe rests: depths in samples, positions in lines."""

    pleura: float  # depth of the pleural line
    skin: float  # depth where the skin ends
    fascia: float  # depth of the fascia between fat and muscle
    septum: float = 0.5  # where a bright septum crosses the fat, as a fraction of fascia depth
    ribs: tuple = ()
    b_lines: tuple = ()  # scan lines of B-line streaks
    wave_phase: float = 0.0  # phase of the gentle waviness of tissue layers
    gain_db: float = 0.0
    texture_seed: int = 0  # muscle fibre pattern, fixed while the probe rests
    subject: Subject = PAPER_VOLUNTEER  # echogenicity, attenuation, time-gain curve, speckle


def random_lus_scene(rng, n_ribs=None, shape=LUS_SHAPE, subject=PAPER_VOLUNTEER, zoom=1.0):
    """A random scene of ``subject``; ``n_ribs`` (0, 1 or 2) is drawn when not given (mostly 1
    or 2). ``zoom`` scales the anatomy against the frame (0.5: a frame twice as deep and wide)."""
    rng = np.random.default_rng(rng)
    width = shape[1]
    scale = shape[0] / LUS_SHAPE[0] * zoom
    if n_ribs is None:
        n_ribs = int(rng.choice(3, p=[0.1, 0.35, 0.55]))
    if n_ribs not in (0, 1, 2):
        raise ConfigError(f"a phantom has 0, 1 or 2 ribs, not {n_ribs}")
    pleura = rng.uniform(*subject.pleura) * scale
    apex = pleura - rng.uniform(*subject.rib_gap) * scale

    def rib(centre, half_width):
        return Rib(
            centre=centre,
            half_width=half_width,
            top=apex + rng.uniform(-6, 6) * scale,
            sag=rng.uniform(*subject.rib_sag) * scale,
            thickness=rng.uniform(*subject.rib_thickness) * scale,
        )

    if n_ribs == 1:
        half_width = rng.uniform(*subject.rib_half_width) / 128 * width * zoom
        ribs = (rib(rng.uniform(half_width, width - half_width), half_width),)
    elif n_ribs == 2:
        left, right = rng.uniform(*subject.rib_pair_half_width, size=2) / 128 * width * zoom
        # Zoomed out, the pair keeps its anatomical spacing around the frame's middle.
        margin = (1 - zoom) * width / 2
        ribs = (
            rib(margin + left + rng.uniform(*subject.rib_inset) * zoom, left),
            rib(width - margin - right - rng.uniform(*subject.rib_inset) * zoom, right),
        )
    else:
        ribs = ()
    gaps = _uncovered_lines(ribs, width)
    b_lines = ()
    if rng.random() < 0.3 and len(gaps) > 8:
        chosen = rng.choice(gaps[4:-4], size=rng.integers(1, 3), replace=False)
        b_lines = tuple(float(line) for line in chosen)
    return LusScene(
        pleura=pleura,
        skin=rng.uniform(*subject.skin) * scale,
        fascia=rng.uniform(*subject.fascia) * scale,
        septum=rng.uniform(0.4, 0.6),
        ribs=ribs,
        b_lines=b_lines,
        wave_phase=rng.uniform(0, 2 * np.pi),
        gain_db=rng.uniform(*subject.gain_db),
        texture_seed=int(rng.integers(2**31)),
        subject=subject,
    )


def lus_phantom(rng, scene=None, speckle=None, shape=LUS_SHAPE, zoom=1.0, target="rib"):
    """One B-mode frame and its mask: (uint8 image 0-255, uint8 mask 0/1), ``shape`` sized.

    ``rng`` is a seed or ``numpy.random.Generator``; ``scene`` defaults to a random one (drawn
    with ``zoom``, which must then be the scene's); ``speckle`` is a complex field from
    ``speckle_field`` (fresh when not given), which a sequence correlates from frame to frame.
    ``target`` is what the mask marks: ``"rib"`` the rib's bright arc band, ``"line"`` its
    surface ``LINE_SAMPLES`` samples deep (per 960 rows, whatever the zoom), ``"shadow"`` the rib
    and the acoustic shadow beneath it down to the frame's bottom. The picture does not depend
    on ``target``.
    """
    _check_choice("target", target, TARGETS)
    rng = np.random.default_rng(rng)
    scene = random_lus_scene(rng, shape=shape, zoom=zoom) if scene is None else scene
    subject = scene.subject
    speckle = speckle_field(rng, shape, grain=subject.speckle) if speckle is None else speckle
    height, width = shape
    scale = height / LUS_SHAPE[0] * zoom
    depth = np.arange(height, dtype=np.float32)[:, None]
    lines = np.arange(width, dtype=np.float32)[None, :]
    wave = np.sin(2 * np.pi * lines / (1.7 * width) + scene.wave_phase)

    # Soft tissue: skin, hypoechoic fat with a bright septum, fascia, striated muscle; lung below.
    skin_end = scene.skin + 3 * scale * wave
    fascia = scene.fascia + 6 * scale * wave
    pleura = scene.pleura + 2 * scale * wave
    fibre_noise = np.random.default_rng(scene.texture_seed).standard_normal(shape, np.float32)
    fibres = cv2.GaussianBlur(fibre_noise, (0, 0), 6, sigmaY=1.2)
    muscle = 0.45 * np.clip(1 + 0.45 * fibres / (fibres.std() + 1e-6), 0.2, None)
    lung = 0.05  # aerated lung shows nothing but reverberations and noise
    tissue = np.select(
        [depth < skin_end, depth < fascia, depth < pleura], [0.9, 0.28, muscle], lung
    ).astype(np.float32)
    _add_line(tissue, fascia * scene.septum, 2 * scale, 0.5)
    _add_line(tissue, fascia, 2.5 * scale, 1.1)

    # Pleural line, A-lines (its reverberations at multiples of its depth, fading) and B-lines.
    _add_line(tissue, pleura, 3 * scale, 1.9)
    b_line_profile = np.zeros((1, width), np.float32)
    for b_line in scene.b_lines:
        b_line_profile = np.maximum(b_line_profile, np.exp(-0.5 * ((lines - b_line) / 1.8) ** 2))
    a_lines = np.zeros(shape, np.float32)
    for repeat in range(2, int(height / scene.pleura) + 1):
        _add_line(a_lines, repeat * pleura, (3 + repeat) * scale, 1.6 * 0.6 ** (repeat - 1))
    tissue += a_lines * (1 - b_line_profile)
    if scene.b_lines:
        fading = np.exp(-np.clip(depth - pleura, 0, None) / (900 * scale))
        tissue += (depth > pleura) * b_line_profile * 1.3 * fading

    # Ribs: a bright band (brightest at the surface) and an acoustic shadow beneath it, worked
    # out only on the scan lines near each rib.
    mask = np.zeros(shape, bool)
    line_depth = LINE_SAMPLES * height / LUS_SHAPE[0]
    for rib in scene.ribs:
        near = slice(
            max(int(rib.centre - rib.half_width) - 8, 0),
            min(int(rib.centre + rib.half_width) + 9, width),
        )
        u = (lines[:, near] - rib.centre) / rib.half_width
        surface = rib.top + rib.sag * u**2
        thickness = rib.thickness * (1 - 0.1 * np.minimum(u**2, 1))
        into = depth - surface
        band = (np.abs(u) <= 1) & (into >= 0) & (into < thickness)
        if target == "rib":
            mask[:, near] |= band
        elif target == "line":
            mask[:, near] |= (np.abs(u) <= 1) & (into >= 0) & (into < line_depth)
        else:
            mask[:, near] |= (np.abs(u) <= 1) & (into >= 0)
        glow = 2.6 * np.exp(-np.clip(into, 0, None) / (0.7 * thickness)) + 0.7
        tissue[:, near] = np.where(band, subject.rib_echo * glow, tissue[:, near])
        # The shadow starts at the band's lower edge, with soft sides.
        side = expit((1 - np.abs(u)) * rib.half_width / 1.5)
        beneath = expit((into - thickness) / (2 * scale))
        tissue[:, near] *= 1 - 0.999 * side * beneath

    gain = scene.gain_db - subject.attenuation_db * depth / height
    if subject.tgc_db:
        knots = np.linspace(0, height - 1, len(subject.tgc_db))
        gain = gain + np.interp(depth, knots, subject.tgc_db).astype(np.float32)
    attenuation = 10 ** (gain / 20)
    noise_floor = rng.rayleigh(0.007 / np.sqrt(2), shape).astype(np.float32)  # electronic noise
    amplitude = tissue * attenuation * np.abs(speckle) + noise_floor
    image = (20 * np.log10(amplitude + 1e-6) + 45) / 51  # 51 dB range, 6 dB above a unit echo
    image = cv2.GaussianBlur(image, (0, 0), 0.7, sigmaY=1.4)  # speckle reduction (log domain)
    image = np.clip(image * 255, 0, 255).round().astype(np.uint8)
    return image, mask.astype(np.uint8)


def speckle_field(rng, shape=LUS_SHAPE, previous=None, correlation=0.5, grain=1.0):
    """Complex Gaussian speckle whose magnitude is Rayleigh with unit mean square.

    Blurring white noise gives speckle grains about 3 samples deep and 1.5 lines wide, times
    ``grain``. With ``previous``, the new field keeps ``correlation`` of it: neighbouring frames
    share part of their speckle pattern, as consecutive frames of a clip do.
    """
    rng = np.random.default_rng(rng)
    noise = rng.standard_normal((2, *shape), np.float32)
    real, imaginary = (
        cv2.GaussianBlur(part, (0, 0), 0.8 * grain, sigmaY=1.6 * grain) for part in noise
    )
    field = real + 1j * imaginary
    field /= np.sqrt(np.mean(np.abs(field) ** 2))
    if previous is not None:
        field = correlation * previous + np.sqrt(1 - correlation**2) * field
    return field.astype(np.complex64)


def lus_sequence(
    rng, n_frames, shape=LUS_SHAPE, n_ribs=None, subject=PAPER_VOLUNTEER, zoom=1.0, target="rib"
):
    """Yield ``n_frames`` (image, mask) pairs of one probe position of ``subject``, drifting
    smoothly (``zoom`` and ``target`` as for ``lus_phantom``).

    Rib position, width, depth, curvature and thickness, the pleural depth and the layers wander
    along smooth random paths (breathing and hand motion); speckle is half renewed per frame.
    """
    rng = np.random.default_rng(rng)
    if n_ribs is None:
        n_ribs = int(rng.choice([1, 2], p=[0.4, 0.6]))
    base = random_lus_scene(rng, n_ribs=n_ribs, shape=shape, subject=subject, zoom=zoom)
    scale = shape[0] / LUS_SHAPE[0] * zoom

    smoothing = 8.0  # frames
    unit = np.sqrt(2 * np.sqrt(np.pi) * smoothing)  # makes smoothed white noise unit variance

    def path(amplitude):
        """A smooth random path of ``n_frames`` steps, standard deviation ``amplitude``."""
        noise = rng.standard_normal(n_frames + 8 * int(smoothing))
        smooth = gaussian_filter1d(noise, sigma=smoothing)[4 * int(smoothing):][:n_frames]
        return amplitude * unit * smooth

    slide, breathe = path(4.0), path(10.0 * scale)
    rib_paths = [
        {"centre": path(1.5), "half_width": path(2.0), "top": path(4.0 * scale),
         "sag": path(3.0 * scale), "thickness": path(2.5 * scale)}
        for _ in base.ribs
    ]
    b_line_path = path(2.0)
    speckle = None
    for t in range(n_frames):
        ribs = tuple(
            Rib(
                centre=rib.centre + slide[t] + p["centre"][t],
                half_width=max(rib.half_width + p["half_width"][t], 15.0 / 128 * shape[1] * zoom),
                top=rib.top + breathe[t] + p["top"][t],
                sag=max(rib.sag + p["sag"][t], 4 * scale),
                thickness=float(np.clip(rib.thickness + p["thickness"][t], 15 * scale, 30 * scale)),
            )
            for rib, p in zip(base.ribs, rib_paths)
        )
        scene = replace(
            base,
            pleura=base.pleura + breathe[t],
            skin=base.skin + 0.1 * breathe[t],
            fascia=base.fascia + 0.4 * breathe[t],
            ribs=ribs,
            b_lines=tuple(x + slide[t] + b_line_path[t] for x in base.b_lines),
        )
        speckle = speckle_field(rng, shape, previous=speckle, grain=subject.speckle)
        yield lus_phantom(rng, scene=scene, speckle=speckle, shape=shape, zoom=zoom, target=target)


def lus_frame_number(t):
    """The paper's number of the ``t``-th frame (t = 0, 1, ...) of a probe position.

    15 frames per hundred, n mod 100 in 5, 10, ..., 75: 5 .. 75, 105 .. 175, ... so that the
    paper's 200- and 600-frame sets (``frames.select_lus_frames``) find their frames.
    """
    return 100 * (t // LUS_FRAMES_PER_HUNDRED) + LUS_FRAME_STEP * (t % LUS_FRAMES_PER_HUNDRED + 1)


def lus_phantoms_needed(originals, positions=2):
    """Phantom frames to write so that ``select_lus_frames`` finds ``originals`` in the paper's set.

    Only 10 of every 15 numbers per hundred belong to the 200-frame set (n mod 100 in 5..50),
    so up to 200 originals need more phantoms than originals.
    """
    per_position = -(-int(originals) // positions)
    last = next((last for size, last in PAPER_SETS if originals <= size), PAPER_SETS[-1][1])
    hundreds, rest = divmod(per_position - 1, last // PAPER_FRAME_STEP)
    return positions * (hundreds * LUS_FRAMES_PER_HUNDRED + rest + 1)


def write_lus_dataset(
    out, n=200, seed=0, positions=("pos2", "pos3"), progress=False, shape=None,
    subjects=None, probe="linear", target="rib",
):
    """Write ``n`` phantom frames in the paper's layout and return ``out``.

    Frames are split evenly over ``positions`` (earlier positions get any remainder), each a
    drifting sequence numbered as the paper's frames are (``lus_frame_number``):
    ``IMG/img_lung_pos2_5.tif``, ``MASK/mask_lung_pos2_5.tif`` (mask 0/255), ... 150 frames per
    position carry exactly the paper's 300 names. All files are 8-bit TIFF, ``shape`` sized
    (default 960 x 128 for the linear probe, 820 x 1124 for the convex one).

    ``subjects=K`` draws K subjects (``random_subject``), each with its own ``positions``, and
    splits the frames evenly over all K x positions sequences: ``lung_subj01_pos2_5``, ...
    The default (None) is the paper-like volunteer with unnumbered names. ``probe`` is
    ``"linear"`` or ``"convex"`` (a scan-converted sector, ``ConvexGeometry``); ``target`` is
    what the masks mark (``lus_phantom``). The pictures do not depend on ``target``.
    """
    out = Path(out)
    n = _check_count(n)
    _check_choice("probe", probe, PROBES)
    _check_choice("target", target, TARGETS)
    positions = (positions,) if isinstance(positions, str) else tuple(positions)
    if not positions:
        raise ConfigError("at least one probe position is needed")
    if subjects is None:
        sequences = [
            (f"lung_{position}", [seed, index], PAPER_VOLUNTEER)
            for index, position in enumerate(positions)
        ]
    else:
        subjects = _check_count(subjects, "number of subjects")
        digits = max(2, len(str(subjects)))
        sequences = []
        for k in range(1, subjects + 1):
            # Entropy words never end in 0, so no stream repeats another (SeedSequence pads
            # with zeros), nor the one-volunteer set's [seed, index].
            subject = random_subject(np.random.default_rng([seed, k, 1]))
            sequences += [
                (f"lung_{SUBJECT_PREFIX}{k:0{digits}d}_{position}", [seed, k, 2 + index], subject)
                for index, position in enumerate(positions)
            ]
    counts = [len(part) for part in np.array_split(np.arange(n), len(sequences))]
    convex = None
    drawn, zoom = (LUS_SHAPE if shape is None else tuple(shape)), 1.0
    if probe == "convex":
        convex = ConvexGeometry() if shape is None else ConvexGeometry(tuple(shape))
        drawn, zoom = convex.polar_shape, CONVEX_ZOOM

    def frames():
        for (prefix, entropy, subject), count in zip(sequences, counts):
            if not count:
                continue
            sequence = lus_sequence(
                np.random.default_rng(entropy), count, shape=drawn, subject=subject, zoom=zoom,
                target=target,
            )
            for t, (image, mask) in enumerate(sequence):
                if convex is not None:
                    image, mask = scan_convert(image, mask, convex)
                yield f"{prefix}_{lus_frame_number(t)}", image, mask

    for name, image, mask in progress_bar(frames(), n, "LUS phantoms", enabled=progress):
        write_image(out / "IMG" / f"img_{name}.tif", image)
        write_image(out / "MASK" / f"mask_{name}.tif", mask * 255)
    return out


@dataclass(frozen=True)
class ConvexGeometry:
    """A convex probe's sector: ``image_shape`` (rows x columns) of the scan-converted frame,
    the field of view ``angle`` (degrees) and the probe's radius as a share of the imaging
    depth. The fan fills the frame, 1 % margins kept; the physics is drawn on ``polar_shape``
    (depth samples x scan lines), 960 x 192 for the default 820 x 1124 frame."""

    image_shape: tuple = (820, 1124)
    angle: float = 60.0
    radius: float = 0.375

    @property
    def polar_shape(self):
        height, width = self.image_shape
        return max(16, round(960 * height / 820)), max(8, round(192 * width / 1124))

    def layout(self):
        """(depth, radius, apex column, apex row, half angle in radians), in pixels."""
        height, width = self.image_shape
        half = np.radians(self.angle / 2)
        depth = min(0.98 * height, 0.98 * width / (2 * (1 + self.radius) * np.sin(half)))
        radius = self.radius * depth
        return depth, radius, (width - 1) / 2, 0.01 * height - radius, half


@functools.lru_cache(maxsize=4)
def _scan_conversion(geometry):
    """remap() maps (scan line, depth sample per output pixel) and the fan, for ``geometry``."""
    height, width = geometry.image_shape
    samples, lines = geometry.polar_shape
    depth, radius, apex_x, apex_y, half = geometry.layout()
    rows, columns = np.mgrid[0:height, 0:width].astype(np.float64)
    dx, dy = columns - apex_x, rows - apex_y
    distance, angle = np.hypot(dx, dy), np.arctan2(dx, dy)  # angle 0 straight down
    inside = (distance >= radius) & (distance <= radius + depth) & (np.abs(angle) <= half)
    sample = (distance - radius) / depth * samples - 0.5  # sample i's centre at i + 0.5
    line = (angle + half) / (2 * half) * lines - 0.5
    return line.astype(np.float32), sample.astype(np.float32), inside


def convex_fan(geometry=None):
    """Boolean [rows, columns] of the pixels inside ``geometry``'s fan (default geometry)."""
    return _scan_conversion(geometry or ConvexGeometry())[2].copy()


def scan_convert(image, mask, geometry=None):
    """A polar frame and mask (samples x lines, ``geometry.polar_shape``) as the sector image.

    Bilinear, as scanners scan-convert the log-compressed image; the mask is resampled as 0/255
    and thresholded at half. Both are 0 outside the fan.
    """
    geometry = geometry or ConvexGeometry()
    if image.shape != geometry.polar_shape or mask.shape != image.shape:
        raise ConfigError(
            f"a convex frame is drawn as {geometry.polar_shape}, got {image.shape} and {mask.shape}"
        )
    line, sample, inside = _scan_conversion(geometry)

    def remap(picture):
        return cv2.remap(picture, line, sample, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

    picture = np.where(inside, remap(image), 0).astype(np.uint8)
    labels = (remap(mask.astype(np.uint8) * np.uint8(255)) > 127) & inside
    return picture, labels.astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Salient-object composites

# skimage.data photographs bundled with scikit-image (no download needed).
PHOTOS = (
    "astronaut", "camera", "coffee", "chelsea", "rocket", "brick", "grass", "gravel",
    "moon", "coins", "hubble_deep_field", "immunohistochemistry", "clock", "cell",
)
SHAPES = ("blob", "ellipse", "polygon", "horse")


@functools.lru_cache(maxsize=1)
def photographs():
    """The gray ``skimage.data`` photographs used as textures, as uint8 arrays."""
    import skimage.data

    gray = []
    for name in PHOTOS:
        photo = getattr(skimage.data, name)()
        if photo.ndim == 3:
            photo = cv2.cvtColor(photo[..., :3], cv2.COLOR_RGB2GRAY)
        gray.append(np.ascontiguousarray(photo))
    return tuple(gray)


def salient_composite(rng, size=None):
    """A gray composite and its salient-object mask: (uint8 image, uint8 mask 0/1).

    ``size`` is (height, width); by default each side is drawn from 300-500 pixels.
    """
    rng = np.random.default_rng(rng)
    photos = photographs()
    if size is None:
        size = rng.integers(*SALIENT_SIDES, endpoint=True, size=2)
    height, width = (int(side) for side in size)
    background_index = rng.integers(len(photos))
    image = _crop(rng, photos[background_index], height, width).astype(np.float32)
    image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.5, 2.5))  # a softer background
    image = 0.6 * image + 0.4 * image.mean()  # ... with less contrast than the objects
    mask = np.zeros((height, width), bool)
    for _ in range(rng.integers(1, 4)):
        shape = _object_shape(rng, SHAPES[rng.integers(len(SHAPES))], height, width)
        texture_index = (background_index + rng.integers(1, len(photos))) % len(photos)
        texture = _crop(rng, photos[texture_index], height, width).astype(np.float32)
        # Push the object's brightness away from the background's so that it stands out.
        offset = rng.uniform(30, 60) * (1 if image.mean() < 128 else -1)
        texture = np.clip(texture - texture.mean() + image.mean() + offset, 0, 255)
        alpha = cv2.GaussianBlur(shape.astype(np.float32), (0, 0), 0.8)  # anti-aliased edge
        image = alpha * texture + (1 - alpha) * image
        mask |= shape
    return np.clip(image, 0, 255).round().astype(np.uint8), mask.astype(np.uint8)


def write_salient_dataset(out, n=100, seed=0, progress=False):
    """Write ``n`` composites as ``images/salient_0000.jpg`` + ``masks/salient_0000.png``."""
    out = Path(out)
    n = _check_count(n)
    rngs = np.random.default_rng(seed).spawn(n)
    for index in progress_bar(range(n), n, "salient composites", enabled=progress):
        image, mask = salient_composite(rngs[index])
        write_image(out / "images" / f"salient_{index:04d}.jpg", image)
        write_image(out / "masks" / f"salient_{index:04d}.png", mask * 255)
    return out


def _crop(rng, photo, height, width):
    """A random crop of at least half the photo's shorter side, resized to height x width."""
    rows, cols = photo.shape
    side_scale = rng.uniform(0.5, 1.0)
    crop_rows = max(8, int(rows * side_scale))
    crop_cols = max(8, min(cols, int(crop_rows * width / height)))
    top = rng.integers(0, rows - crop_rows + 1)
    left = rng.integers(0, cols - crop_cols + 1)
    crop = photo[top:top + crop_rows, left:left + crop_cols]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return cv2.resize(crop, (int(width), int(height)), interpolation=cv2.INTER_AREA)


def _object_shape(rng, kind, height, width):
    """A boolean object silhouette, placed around the centre as salient objects usually are."""
    radius = rng.uniform(0.12, 0.28) * min(height, width)
    centre = np.array([width, height]) * rng.uniform(0.3, 0.7, size=2)
    canvas = np.zeros((height, width), np.uint8)
    if kind == "horse":
        import skimage.data

        silhouette = (~skimage.data.horse()).astype(np.uint8)
        scale = 2.2 * radius / max(silhouette.shape)
        silhouette = cv2.resize(
            silhouette, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST
        )
        if rng.random() < 0.5:
            silhouette = silhouette[:, ::-1]
        rows, cols = silhouette.shape
        top = int(np.clip(centre[1] - rows / 2, 0, height - rows))
        left = int(np.clip(centre[0] - cols / 2, 0, width - cols))
        canvas[top:top + rows, left:left + cols] = silhouette
        return canvas.astype(bool)
    if kind == "ellipse":
        axes = (int(radius), int(radius * rng.uniform(0.4, 1.0)))
        cv2.ellipse(canvas, tuple(int(c) for c in centre), axes, rng.uniform(0, 180), 0, 360, 1, -1)
        return canvas.astype(bool)
    if kind == "blob":
        angles = np.linspace(0, 2 * np.pi, 180, endpoint=False)
        harmonics = np.arange(2, 6)[:, None]
        weights = rng.uniform(0, 0.3, size=(4, 1)) / harmonics * 2
        phases = rng.uniform(0, 2 * np.pi, size=(4, 1))
        radii = radius * (1 + (weights * np.cos(harmonics * angles + phases)).sum(axis=0))
    else:  # polygon
        corners = rng.integers(3, 9)
        angles = np.sort(rng.uniform(0, 2 * np.pi, corners))
        radii = radius * rng.uniform(0.6, 1.0, corners)
    points = centre + np.stack([np.cos(angles), np.sin(angles)], axis=1) * radii[:, None]
    cv2.fillPoly(canvas, [points.round().astype(np.int32)], 1)
    return canvas.astype(bool)


# ---------------------------------------------------------------------------------------------
# Generating a data set once


_WRITERS = {"lus": write_lus_dataset, "salient": write_salient_dataset}


def ensure_dataset(kind, out_dir, n, seed=0, progress=False, **options):
    """Generate a ``kind`` (``"lus"`` or ``"salient"``) data set in ``out_dir`` unless it is there.

    The set is written to a temporary folder beside ``out_dir`` and renamed into place, so an
    interrupted generation never leaves half a data set. ``out_dir/synthetic.json`` records
    ``kind``, ``n``, ``seed``, the options that differ from the defaults (LUS: ``subjects``,
    ``probe``, ``target``, see ``write_lus_dataset``) and the generator version: a matching set
    is reused as it is, a different generated set is replaced, and a folder holding anything
    else is left alone (``DataError``).
    """
    if kind not in KINDS:
        raise ConfigError(f"unknown data set kind {kind!r}: use one of {', '.join(KINDS)}")
    n = _check_count(n)
    out_dir = Path(out_dir)
    wanted = _wanted(kind, n, seed, options)
    options = {key: value for key, value in wanted.items() if key in LUS_OPTIONS}
    if _manifest(out_dir) == wanted:
        return out_dir
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir}: exists and is not a folder")
    if out_dir.is_dir() and _manifest(out_dir) is None and any(out_dir.iterdir()):
        raise DataError(
            f"{out_dir}: folder already holds files that the generator did not write; "
            "choose another output folder or empty this one"
        )
    temporary = temporary_path(out_dir)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(temporary, ignore_errors=True)
        _WRITERS[kind](temporary, n=n, seed=seed, progress=progress, **options)
        write_json(temporary / MANIFEST, wanted)
        _replace_folder(temporary, out_dir)
    except OSError as error:
        if _manifest(out_dir) == wanted:  # another process finished the same set first
            return out_dir
        reason = error.strerror or str(error)
        raise DataError(f"{out_dir}: cannot write the data set there ({reason})") from error
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return out_dir


def is_generated_set(folder, kind, n, seed=0, **options):
    """Whether ``folder`` holds the complete set ``ensure_dataset(kind, folder, n, seed,
    **options)`` makes."""
    return _manifest(folder) == _wanted(kind, int(n), seed, options)


def _wanted(kind, n, seed, options):
    """The manifest of a set: options at their defaults are left out, so a default set's
    manifest is what earlier versions wrote."""
    allowed = LUS_OPTIONS if kind == "lus" else {}
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(f"{kind} data sets take no option {', '.join(unknown)}")
    extra = {key: value for key, value in options.items() if value != allowed[key]}
    return {"kind": kind, "n": n, "seed": int(seed), "generator_version": GENERATOR_VERSION, **extra}


def _manifest(folder):
    try:
        return read_json(Path(folder) / MANIFEST)
    except (OSError, ValueError):
        return None


def _replace_folder(new, target):
    """Move ``new`` onto ``target``, removing an old generated set only once ``new`` is in place."""
    if not target.exists():
        os.replace(new, target)
        return
    old = temporary_path(target, "old")
    os.replace(target, old)
    try:
        os.replace(new, target)
    except OSError:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _check_count(n, what="number of frames"):
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ConfigError(f"the {what} must be a positive integer, got {n!r}")
    return int(n)


def _check_choice(option, value, choices):
    if value not in choices:
        raise ConfigError(f"unknown {option} {value!r}: use one of {', '.join(choices)}")


def _uncovered_lines(ribs, width):
    """Scan lines not under any rib (where the pleural line and B-lines show)."""
    lines = np.arange(width)
    covered = np.zeros(width, bool)
    for rib in ribs:
        covered |= np.abs(lines - rib.centre) <= rib.half_width + 2
    return lines[~covered]


def _add_line(canvas, at, sigma, amplitude):
    """Add a bright horizontal line to ``canvas``: a Gaussian profile in depth around ``at``.

    ``at`` gives the line's depth per scan line (shape [1, W]); only rows within 4 sigma of it
    are computed.
    """
    reach = 4 * sigma
    top = max(int(np.min(at) - reach), 0)
    bottom = min(int(np.max(at) + reach) + 2, canvas.shape[0])
    if top < bottom:
        rows = np.arange(top, bottom, dtype=np.float32)[:, None]
        canvas[top:bottom] += amplitude * np.exp(-0.5 * ((rows - at) / sigma) ** 2)
