"""A/B training speed of two settings under the same machine conditions, by taking turns.

    python bench/ab_train.py --a="--config.data.cache_in_memory=true" \
        --b="--config.data.cache_in_memory=false" -- --config=configs/shapes/clip.py
    python bench/ab_train.py --a_env=XLA_FLAGS=--xla_cpu_multi_thread_eigen=false -- \
        --config=configs/shapes/decoder.py --config.clip.workdir=runs/shapes_unclip/clip

Why: on a shared 2-core VM the same train step measured a third apart in back-to-back runs
(`bench/train_step.py`: the decoder's at 47.7 and 72.4 GFLOP/s), more than most changes worth
testing. Here both settings train (the real command line, everything after `--`, each in a
temporary workdir) in one process each; once both have compiled, they run in turns of
`--window` seconds (the other one stopped with SIGSTOP), alternating which goes first, so slow
and fast spells of the machine fall on both alike. It prints the steps each completed per turn
and in total; with `--skip_rounds` the first turns
(warm-up, or a cache still filling) are left out of the total.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def logged_step(metrics_path: str) -> int:
    """The latest step whose training metrics were written (0 before any)."""
    try:
        with open(metrics_path) as f:
            records = [json.loads(line) for line in f if "train/loss" in line]
    except (FileNotFoundError, json.JSONDecodeError):  # not yet written, or a line half-written
        return 0
    return max((r["step"] for r in records), default=0)


def start(name: str, extra: str, env_vars: list[str], train_args: list[str], workdir: str) -> subprocess.Popen:
    env = dict(os.environ, **dict(kv.split("=", 1) for kv in env_vars))
    command = [sys.executable, "-m", "dalle2_jax.train", *train_args, f"--workdir={workdir}",
               "--config.train.num_steps=1000000", "--config.train.log_every=2",
               "--config.train.eval_every=1000000", "--config.train.checkpoint_every=1000000", *shlex.split(extra)]
    print(f"{name}: {' '.join(env_vars)} {' '.join(command[1:])}", flush=True)
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=open(os.path.join(workdir, "log.txt"), "w"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", default="", help="extra training flags of setting A")
    parser.add_argument("--b", default="", help="extra training flags of setting B")
    parser.add_argument("--a_env", action="append", default=[], help="NAME=VALUE for A's environment")
    parser.add_argument("--b_env", action="append", default=[], help="NAME=VALUE for B's environment")
    parser.add_argument("--window", type=float, default=20.0, help="seconds per turn")
    parser.add_argument("--rounds", type=int, default=6, help="turns of each setting")
    parser.add_argument("--skip_rounds", type=int, default=0, help="first turns left out of the totals")
    args, train_args = parser.parse_known_args()
    train_args = [a for a in train_args if a != "--"]

    settings = {"A": (args.a, args.a_env), "B": (args.b, args.b_env)}
    processes, metrics = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for name, (extra, env_vars) in settings.items():
                workdir = os.path.join(tmp, name)
                os.makedirs(workdir)
                metrics[name] = os.path.join(workdir, "metrics.jsonl")
                processes[name] = start(name, extra, env_vars, train_args, workdir)
                while logged_step(metrics[name]) < 4:  # compiled and past the first steps, alone
                    if processes[name].poll() is not None:
                        sys.exit(f"{name} stopped:\n{open(os.path.join(workdir, 'log.txt')).read()[-3000:]}")
                    time.sleep(1)
                processes[name].send_signal(signal.SIGSTOP)
            totals = {"A": 0, "B": 0}
            for turn in range(args.rounds):
                for name in ("A", "B") if turn % 2 == 0 else ("B", "A"):
                    before = logged_step(metrics[name])
                    processes[name].send_signal(signal.SIGCONT)
                    time.sleep(args.window)
                    processes[name].send_signal(signal.SIGSTOP)
                    time.sleep(1.0)  # the metrics writer's last lines
                    steps = logged_step(metrics[name]) - before
                    if turn >= args.skip_rounds:
                        totals[name] += steps
                    print(f"turn {turn} {name}: {steps} steps in {args.window:.0f} s", flush=True)
        finally:
            for process in processes.values():
                process.send_signal(signal.SIGCONT)
                process.kill()
                process.wait()
    counted = args.rounds - args.skip_rounds
    print(f"A: {totals['A']} steps, B: {totals['B']} steps in {counted} turns of {args.window:.0f} s each; "
          f"A/B = {totals['A'] / max(totals['B'], 1):.3f}")


if __name__ == "__main__":
    main()
