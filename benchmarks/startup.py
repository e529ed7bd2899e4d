#!/usr/bin/env python
"""Start-up time of the command lines: how long ``train_vunet.py --help`` takes.

Each command runs in a fresh Python process (``subprocess``), ``--repeats`` times after one
untimed warm-up run (which fills the operating system's file cache), and the median and the
spread (min - max) of the wall-clock times are printed. The target is a ``--help`` within
0.5 s: it must not import Keras or TensorFlow (see ``lungseg/__init__.py``).

    python benchmarks/startup.py [--repeats 7] [--json results.json]

The package is imported from this checkout (``PYTHONPATH`` is set to its root).
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO_ROOT, format_table, write_json  # noqa: E402

TARGET_S = 0.5
# (label, command after the Python interpreter); the first is the one held to the target.
COMMANDS = (
    ("train_vunet.py --help", ["train_vunet.py", "--help"]),
    ("train_xunet.py --help", ["train_xunet.py", "--help"]),
    ("evaluate.py --help", ["evaluate.py", "--help"]),
    ("lungseg-predict --help", ["-m", "lungseg.predict", "--help"]),
    ("import lungseg.cli", ["-c", "import lungseg.cli"]),
    ("python (bare)", ["-c", "pass"]),
)


def time_command(argv, repeats):
    """Wall-clock seconds of ``repeats`` runs of ``python argv`` (after one untimed run)."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    command = [sys.executable, *argv]
    times = []
    for index in range(repeats + 1):
        start = time.perf_counter()
        result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        if result.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stderr[-2000:]}")
        if index:
            times.append(elapsed)
    return times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per command (default 5)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)

    rows, results = [], []
    for label, command in COMMANDS:
        times = time_command(command, max(1, args.repeats))
        median = statistics.median(times)
        results.append({"command": label, "times_s": times, "median_s": median,
                        "min_s": min(times), "max_s": max(times)})
        rows.append([label, f"{median:.3f}", f"{min(times):.3f} - {max(times):.3f}"])
        print(f"  {label}: median {median:.3f} s", file=sys.stderr, flush=True)
    print(f"== start-up, {args.repeats} runs each, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    print(format_table(["command", "median s", "spread s (min - max)"], rows))
    target = results[0]
    ok = target["median_s"] <= TARGET_S
    print(f"{target['command']}: median {target['median_s']:.3f} s, target <= {TARGET_S} s: "
          f"{'PASS' if ok else 'FAIL'}")
    if args.json:
        write_json(args.json, {"target_s": TARGET_S, "pass": ok, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
