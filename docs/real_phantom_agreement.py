"""How far a model's Dice can go on a hand-drawn sweep: the masks of neighbouring frames agree
with each other only so well (docs/real_phantom.md, "How far the Dice can go").

    python docs/real_phantom_agreement.py /path/to/phantom [--targets rib_shadow pleural_line]

For each pair of neighbouring frames of the sweep (consecutive frame numbers of the set), the
Dice between their two masks, grouped by how alike the two frames are (the correlation of their
pixels). Frames that are almost the same image should carry almost the same mask: where they do
not, the drawing varies by as much, and no model can agree with every drawing better than the
drawings agree with each other. Then, for comparison, the Dice of each mask with itself placed
in the model's input as the sound preset reads it (cropped to the imaging sector, resized with
nearest) and brought back to the frame as a prediction is (bilinear, thresholded at 0.5):
what the input size alone costs. Masks are read as training reads them (thresholded at half
their level); frames at their own size.
"""

import argparse
import sys

import cv2
import numpy as np

from lungseg.data.crop import to_model, to_native
from lungseg.data.frames import Reading
from lungseg.data.io import read_image
from lungseg.data.masks import read_mask
from lungseg.data.pairs import SWEEP_FRAME, find_pairs

SIMILARITY = (0.0, 0.9, 0.95)  # pairs of frames at least this alike (pixel correlation)


def read_sweep(root, target):
    """[(frame, mask)] of the sweep in frame-number order, as training reads them."""
    pairs = sorted(find_pairs(root, target=target, warn_groups=False),
                   key=lambda pair: int(SWEEP_FRAME.match(pair.name)["frame"]))
    return [(read_image(pair.image), read_mask(pair.mask)) for pair in pairs]


def neighbour_pairs(sweep):
    """[(similarity of the two frames, Dice of their masks)] of consecutive frames of the sweep."""
    return [(np.corrcoef(a.ravel(), b.ravel())[0, 1], dice(mask_a, mask_b))
            for (a, mask_a), (b, mask_b) in zip(sweep, sweep[1:])]


def round_trip(sweep, size):
    """Dice of each mask with itself at ``size`` (rows, columns) and back, placed as the sound
    preset places it (``Reading(crop="auto")``: the frame's sector box) and brought back as
    predictions are (``lungseg.data.crop.to_native``, bilinear, then thresholded at 0.5)."""
    reading, scores = Reading(crop="auto"), []
    for frame, mask in sweep:
        placement = reading.placement(frame, size)
        small = to_model(mask, placement, cv2.INTER_NEAREST_EXACT).astype(np.float32)
        scores.append(dice(mask > 0, to_native(small, placement) >= 0.5))
    return np.array(scores)


def dice(a, b):
    """Dice of two binary masks."""
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("phantom", help="folder holding image/ and masks/<target>/")
    parser.add_argument("--targets", nargs="+", default=["rib_shadow", "pleural_line"])
    parser.add_argument("--size", type=int, nargs=2, default=(96, 128), metavar=("ROWS", "COLUMNS"),
                        help="the model's input size (default: 96 128)")
    args = parser.parse_args(argv)
    sweeps = {target: read_sweep(args.phantom, target) for target in args.targets}
    print("| target | neighbouring frames at least this alike | pairs | Dice of their masks: mean (median) |")
    print("|---|---|---|---|")
    for target, sweep in sweeps.items():
        found = np.array(neighbour_pairs(sweep))
        for least in SIMILARITY:
            agree = found[found[:, 0] >= least, 1]
            agreement = f"{agree.mean():.3f} ({np.median(agree):.3f})" if len(agree) else "-"
            print(f"| `{target}` | correlation ≥ {least:.2f} | {len(agree)} | {agreement} |")
    rows, columns = args.size
    print(f"\n| target | Dice of a mask with itself at {rows} x {columns} and back: mean (lowest) |")
    print("|---|---|")
    for target, sweep in sweeps.items():
        scores = round_trip(sweep, args.size)
        print(f"| `{target}` | {scores.mean():.3f} ({scores.min():.3f}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
