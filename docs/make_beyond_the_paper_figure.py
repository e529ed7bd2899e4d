"""Figures and table of docs/beyond_the_paper.md from the folder ``docs/beyond_the_paper.sh`` wrote.

Run from the repository root after the script: ``python docs/make_beyond_the_paper_figure.py
OUT [DOCS]``. It draws, with ``lungseg.figures``,

* ``DOCS/beyond_the_paper.png``: per-image Dice and spurious components per held-out frame,
  one box per recipe and condition (both fold models' predictions);
* ``DOCS/beyond_the_paper_linear.png`` and ``..._convex.png``: one held-out frame per target,
  its ground truth and what each recipe's first fold model predicted;

and prints the Markdown table of the page (validation on the training subjects against the
held-out subjects).
"""

import math
import sys
from pathlib import Path

import numpy as np

from lungseg import figures
from lungseg.data import find_pairs, load_frames
from lungseg.data.io import read_mask
from lungseg.files import read_json
from lungseg.markdown import markdown_table

CONDITIONS = [(probe, target) for probe in ("linear", "convex") for target in ("line", "shadow")]
RECIPES = ("quick", "sound")
EXAMPLE_SUBJECT = "subj02"  # a held-out subject (the test set's seed differs from training's)


def read_rows(results):
    """Per-image rows of evaluate.py's per_image.csv, as dicts of floats where numeric."""
    import csv

    with open(results / "per_image.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        for key, value in row.items():
            try:
                row[key] = float(value) if value != "" else math.nan
            except ValueError:
                pass
    return rows


def fmt(value, digits=3):
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def main(out, docs=Path(__file__).parent):
    out, docs = Path(out), Path(docs)
    boxes, table = {}, []
    examples = {}  # probe -> (images, references, {recipe: masks}, names)
    for probe, target in CONDITIONS:
        results = out / "results" / f"{probe}-{target}"
        rows = read_rows(results)
        evaluated = {e["experiment"]: e for e in read_json(results / "summary.json")["experiments"]}
        for recipe in RECIPES:
            name = f"{recipe}-{probe}-{target}"
            mine = [row for row in rows if row["experiment"] == name]
            boxes[f"{probe}\n{target}\n{recipe}"] = {
                "dice": [row["dice"] for row in mine], "spurious": [row["spurious"] for row in mine]
            }
            training = read_json(out / "runs" / name / "summary.json")
            folds = training["folds"]
            held_out = evaluated[name]
            per_image = held_out["per_image"]["metrics"]
            empty = [m["empty_on_ribs"] for m in held_out["fold_metrics"].values()]
            noticed = [f"{f} epoch {m['collapse_noticed']['epoch']}"
                       for f, m in folds.items() if m.get("collapse_noticed")]
            table.append([
                f"{probe}, {target}", recipe,
                fmt(np.mean([m["dice_per_image"] for m in folds.values()])),
                fmt(per_image["dice"]["mean"]),
                " / ".join(fmt(m["dice_per_image"]) for m in held_out["fold_metrics"].values()),
                fmt(per_image["spurious"]["mean"], 2),
                fmt(per_image["hd95"]["mean"], 1),
                f"{100 * np.mean(empty):.0f} %",
                " / ".join(str(m["best_epoch"]) for m in folds.values()),
                ", ".join(noticed) or "-",
            ])
        # One held-out frame with ribs of EXAMPLE_SUBJECT, at the models' input size.
        run = read_json(out / "runs" / f"quick-{probe}-{target}" / "config.json")
        frames = load_frames(find_pairs(out / "data" / f"{probe}-{target}-test"),
                             tuple(run["image_size"]))
        index = next(i for i, n in enumerate(frames.names)
                     if EXAMPLE_SUBJECT in n and n.endswith("_25") and frames.masks[i].any())
        frame = frames.names[index]
        images, references, predictions, names = examples.setdefault(probe, ([], [], {}, []))
        images.append(frames.images[index, ..., 0])
        references.append(frames.masks[index, ..., 0])
        names.append(target)
        for recipe in RECIPES:
            mask = read_mask(results / "masks" / f"{recipe}-{probe}-{target}" / "fold_1" / f"{frame}.png")
            predictions.setdefault(f"{recipe} (fold 1)", []).append(mask)

    figure = figures.metric_boxplots(boxes, figsize=(13.0, 5.0))
    figure.suptitle("held-out subjects: X-Unet fine-tuned with the quick and the sound recipe "
                    "(2 fold models x 60 frames per box)")
    figures.save_figure(figure, docs / "beyond_the_paper.png", dpi=80)
    for probe, (images, references, predictions, names) in examples.items():
        figure = figures.overlay_grid(images, references, predictions, names=names,
                                      cell_inches=2.2 if probe == "convex" else 1.6)
        figures.save_figure(figure, docs / f"beyond_the_paper_{probe}.png", dpi=80)

    header = ["probe, target", "recipe", "validation per-image Dice (the run's folds)",
              "held-out per-image Dice", "per fold model", "spurious / frame", "HD95 (px)",
              "held-out frames with ribs predicted empty", "best epoch per fold",
              "collapse noticed"]
    print("\n".join(markdown_table([(name, lambda row, i=i: row[i]) for i, name in enumerate(header)],
                                    table)))
    for name in ("beyond_the_paper.png", "beyond_the_paper_linear.png", "beyond_the_paper_convex.png"):
        print(f"{docs / name}: {(docs / name).stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main(*sys.argv[1:3])
