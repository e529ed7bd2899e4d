"""Start-up time of the command lines: how long ``train_vunet.py --help`` takes.

Each command runs in fresh Python processes, one untimed run then ``--repeats`` timed ones.
Target: within 0.5 s (no Keras or TensorFlow import). Figures in docs/performance.md.

    python benchmarks/startup.py [--repeats 7] [--json results.json]
"""

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

TARGET_S = 0.5
COMMANDS = (  # (label, arguments of the Python interpreter); the first is held to the target
    ("train_vunet.py --help", ["train_vunet.py", "--help"]),
    ("train_xunet.py --help", ["train_xunet.py", "--help"]),
    ("evaluate.py --help", ["evaluate.py", "--help"]),
    ("lungseg-predict --help", ["-m", "lungseg.commands.predict", "--help"]),
    ("python (bare)", ["-c", "pass"]),
)


def time_command(argv, repeats):
    """Wall seconds of ``repeats`` runs of ``python argv`` in the checkout (after one untimed)."""
    env = dict(os.environ, PYTHONPATH=str(common.REPO_ROOT))
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, *argv], cwd=common.REPO_ROOT, env=env,
                              capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        if done.returncode:
            raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return times[1:]


def main(argv=None):
    args = common.parser(__doc__, repeats=(5, "timed runs per command")).parse_args(argv)
    results = []
    for label, command in COMMANDS:
        times = time_command(command, args.repeats)
        results.append({"command": label, "times_s": times, "median_s": statistics.median(times),
                        "min_s": min(times), "max_s": max(times)})
    common.say(f"== start-up, {args.repeats} runs each, {os.cpu_count()} CPUs, "
               f"Python {sys.version.split()[0]}")
    common.say(common.format_table(["command", "median s", "min s", "max s"], [
        [r["command"], f"{r['median_s']:.3f}", f"{r['min_s']:.3f}", f"{r['max_s']:.3f}"]
        for r in results]))
    ok = results[0]["median_s"] <= TARGET_S
    common.say(f"target {results[0]['command']} <= {TARGET_S} s: {'PASS' if ok else 'FAIL'} "
               f"({results[0]['median_s']:.3f} s)")
    common.save(args, {"target_s": TARGET_S, "pass": ok, "results": results})
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
