"""Draw docs/synthetic_data.png: generated LUS phantoms and salient composites with their masks.

Run from the repository root: ``.venv/bin/python docs/make_synthetic_figure.py [OUT.png]``.
The LUS sequences and the composites are the first ones ``python -m lungseg.data lus|salient``
writes with seed 0.
"""

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from lungseg.data.synthetic import (  # noqa: E402
    lus_phantom,
    lus_sequence,
    random_lus_scene,
    salient_composite,
)

OUTPUT = Path(__file__).with_name("synthetic_data.png")
# A 960 x 128 frame covers roughly 3 times more distance per scan line than per depth sample;
# drawing each sample a third as tall as a line is wide gives the frame its physical shape.
LUS_ASPECT = 1 / 3


def main(output=OUTPUT):
    # The first frames of seed 0's two probe positions (as `python -m lungseg.data lus` writes
    # them), a later frame of each, and two single frames with one rib and with none.
    lus_frames, titles = [], []
    for position in range(2):
        sequence = list(lus_sequence(np.random.default_rng([0, position]), 31))
        lus_frames += [sequence[0], sequence[30]]
        titles += [f"pos{position + 2}_5", f"pos{position + 2}_155"]
    for n_ribs in (1, 0):
        rng = np.random.default_rng(10 + n_ribs)
        lus_frames.append(lus_phantom(rng, scene=random_lus_scene(rng, n_ribs=n_ribs)))
        titles.append(f"{n_ribs} rib{'s' if n_ribs != 1 else ''}")
    # salient_0000 ... salient_0003 of `python -m lungseg.data salient --seed 0`.
    composites = [salient_composite(rng) for rng in np.random.default_rng(0).spawn(4)]

    figure = plt.figure(figsize=(13, 4.7), layout="constrained")
    lus_part, salient_part = figure.subfigures(1, 2, width_ratios=[1.25, 1])
    lus_part.suptitle("LUS phantoms, 960 x 128 (red: rib mask)")
    salient_part.suptitle("salient-object composites (red: object mask)")
    for axis, (image, mask) in zip(lus_part.subplots(1, len(lus_frames)), lus_frames):
        _show(axis, image, mask, LUS_ASPECT)
    for axis, (image, mask) in zip(salient_part.subplots(2, 2).ravel(), composites):
        _show(axis, image, mask, 1)
    for axis, title in zip(lus_part.axes, titles):
        axis.set_title(title, fontsize=9)
    figure.savefig(output, dpi=110)
    print(f"wrote {output}")


def _show(axis, image, mask, aspect):
    axis.imshow(image, cmap="gray", vmin=0, vmax=255, aspect=aspect, interpolation="antialiased")
    if mask.any():
        axis.contour(mask, levels=[0.5], colors="red", linewidths=0.8)
    axis.set_axis_off()


if __name__ == "__main__":
    main(*sys.argv[1:2])
