"""Does the same training give the same Dice? On this machine, and where machines differ.

Trains one tiny X-Unet run (salient pre-training, then 2 folds; ``--deterministic``) several
times in fresh processes, each under one variant of what differs between machines of one
kind, and compares the fold Dice with the first plain run:

* ``same``: the same command again (is a run repeatable on one machine?);
* ``1 thread``: CPU affinity of one core, as on a smaller machine (``taskset -c 0``);
* ``AVX2 only``: oneDNN limited to AVX2 kernels (``ONEDNN_MAX_CPU_ISA=AVX2``), as on a CPU
  without AVX-512, e.g. an older Intel or AMD part;
* ``oneDNN off``: TensorFlow's own kernels (``TF_ENABLE_ONEDNN_OPTS=0``).

    python benchmarks/reproducibility.py [--json FILE] [--epochs 2]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from _common import REPO_ROOT, format_table, machine_info, machine_line, say, write_json

VARIANTS = {
    "plain": ({}, []),
    "same": ({}, []),
    "1 thread": ({}, ["taskset", "-c", "0"]),
    "AVX2 only": ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, []),
    "oneDNN off": ({"TF_ENABLE_ONEDNN_OPTS": "0"}, []),
}


def train(variant, data, salient, out, epochs):
    """One run in a fresh process under ``variant``; its summary.json and wall seconds."""
    env_extra, prefix = VARIANTS[variant]
    if prefix and not shutil.which(prefix[0]):
        return None, None
    env = dict(os.environ, **env_extra)
    name = variant.replace(" ", "_")
    command = prefix + [
        sys.executable, str(REPO_ROOT / "train_xunet.py"), "--data", data, "--salient", salient,
        "--out", out, "--name", name, "--image-size", "64x32", "--lus-frames", "24", "--folds", "2",
        "--epochs", str(epochs), "--batch-size", "4", "--lr", "3e-4", "--initializer", "he_normal",
        "--deterministic", "--seed", "1",
    ]
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, cwd=out)
    seconds = time.perf_counter() - started
    with open(os.path.join(out, name, "summary.json")) as handle:
        return json.load(handle), seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of each stage (default 2)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO_ROOT))
    from lungseg.data import write_lus_dataset, write_salient_dataset

    info = machine_info()
    say(machine_line(info))
    rows, results = [], {}
    with tempfile.TemporaryDirectory(prefix="lungseg-repro-") as scratch:
        data = str(write_lus_dataset(os.path.join(scratch, "lus"), n=24, seed=5))
        salient = str(write_salient_dataset(os.path.join(scratch, "salient"), n=16, seed=6))
        for variant in VARIANTS:
            summary, seconds = train(variant, data, salient, scratch, args.epochs)
            if summary is None:
                say(f"skip {variant}: {VARIANTS[variant][1][0]} is not installed")
                continue
            folds = {f: m["dice"] for f, m in summary["folds"].items()}
            results[variant] = {"pretrain_dice": summary["pretrain"]["dice"], "fold_dice": folds, "seconds": seconds}
    plain = results["plain"]
    for variant, result in results.items():
        differences = [abs(result["fold_dice"][f] - plain["fold_dice"][f]) for f in plain["fold_dice"]]
        result["max_fold_difference"] = max(differences)
        rows.append([variant, f"{result['pretrain_dice']:.6f}",
                     "  ".join(f"{d:.6f}" for d in result["fold_dice"].values()),
                     f"{max(differences):.2e}", "identical" if max(differences) == 0 else "differs",
                     f"{result['seconds']:.0f}"])
    say(format_table(["variant", "pretrain Dice", "fold Dice", "max |diff| vs plain", "", "s"], rows))
    if args.json:
        write_json(args.json, {"machine": info, "epochs": args.epochs, "variants": results})
        say(f"JSON written to {args.json}")


if __name__ == "__main__":
    main()
