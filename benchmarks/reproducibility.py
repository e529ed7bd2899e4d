"""Does the same training give the same Dice? On this machine, and where machines differ.

One tiny deterministic X-Unet run (64 x 32 frames, salient pre-training, 2 folds) in fresh
processes, under what differs between machines (the same command again, one core, AVX2-only
oneDNN, oneDNN off): fold Dice against the first plain run. Figures in docs/results.md.

    python benchmarks/reproducibility.py [--json FILE] [--epochs 2]
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

common.setup()

VARIANTS = {  # name: (environment added, command prefix)
    "plain": ({}, []),
    "same": ({}, []),
    "1 thread": ({}, ["taskset", "-c", "0"]),
    "AVX2 only": ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, []),
    "oneDNN off": ({"TF_ENABLE_ONEDNN_OPTS": "0"}, []),
}


def train(variant, data, salient, out, epochs):
    """One run in a fresh process under ``variant``: its summary.json and wall seconds."""
    extra, prefix = VARIANTS[variant]
    name = variant.replace(" ", "_")
    command = prefix + [
        sys.executable, str(common.REPO_ROOT / "train_xunet.py"), "--data", data, "--salient",
        salient, "--out", out, "--name", name, "--image-size", "64x32", "--lus-frames", "24",
        "--folds", "2", "--epochs", str(epochs), "--batch-size", "4", "--lr", "3e-4",
        "--initializer", "he_normal", "--deterministic", "--seed", "1",
    ]
    t0 = time.perf_counter()
    subprocess.run(command, env=dict(os.environ, **extra), check=True, stdout=subprocess.DEVNULL,
                   cwd=out)
    return json.loads(Path(out, name, "summary.json").read_text()), time.perf_counter() - t0


def main(argv=None):
    args = common.parser(__doc__, epochs=(2, "epochs of each stage")).parse_args(argv)
    from lungseg.data import write_lus_dataset, write_salient_dataset

    results = {}
    with tempfile.TemporaryDirectory(prefix="lungseg-repro-") as scratch:
        data = str(write_lus_dataset(os.path.join(scratch, "lus"), n=24, seed=5))
        salient = str(write_salient_dataset(os.path.join(scratch, "salient"), n=16, seed=6))
        for variant, (_, prefix) in VARIANTS.items():
            if prefix and not shutil.which(prefix[0]):
                common.say(f"skip {variant}: {prefix[0]} is not installed")
                continue
            summary, seconds = train(variant, data, salient, scratch, args.epochs)
            results[variant] = {"pretrain_dice": summary["pretrain"]["dice"], "seconds": seconds,
                                "fold_dice": {f: m["dice"] for f, m in summary["folds"].items()},
                                "environment": summary["environment"]}
    plain, rows = results["plain"]["fold_dice"], []
    for variant, result in results.items():
        diff = max(abs(result["fold_dice"][f] - plain[f]) for f in plain)
        result["max_fold_difference"] = diff
        rows.append([variant, f"{result['pretrain_dice']:.6f}",
                     "  ".join(f"{d:.6f}" for d in result["fold_dice"].values()),
                     f"{diff:.2e}", "identical" if diff == 0 else "differs",
                     f"{result['seconds']:.0f}"])
    common.say(common.format_table(
        ["variant", "pretrain Dice", "fold Dice", "max |diff| vs plain", "", "s"], rows))
    common.save(args, {"epochs": args.epochs, "variants": results})


if __name__ == "__main__":
    main()
