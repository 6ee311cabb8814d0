"""What the launchers share: splitting their own flags from the training flags, `--env`,
and running (or, with `--dry_run`, printing) a list of commands."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # this checkout


class LaunchError(ValueError):
    """Bad launcher input; the message names the flag."""


@dataclasses.dataclass(frozen=True)
class Step:
    """One command to run locally, with optional text on its stdin (a manifest, a script)."""

    argv: list[str]
    stdin: str | None = None


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="environment variable for every training process (repeatable)")
    parser.add_argument("--dry_run", action="store_true", help="print what would run; run nothing")


def split_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(launcher flags, training flags): the training flags follow `--` and must name a config
    and a workdir."""
    if "--" not in argv:
        raise LaunchError("the training flags go after `--`, e.g. -- --config=configs/... --workdir=...")
    cut = list(argv).index("--")
    train = list(argv[cut + 1:])
    for required in ("--config", "--workdir"):
        if not any(a == required or a.startswith(required + "=") for a in train):
            raise LaunchError(f"the training flags after `--` need {required}=...")
    return list(argv[:cut]), train


def flag_value(train_args: Sequence[str], name: str) -> str:
    """The value of `--name=value` among the training flags ('' when absent)."""
    values = [a.split("=", 1)[1] for a in train_args if a.startswith(f"--{name}=")]
    return values[-1] if values else ""


def require_cloud_workdir(train_args: Sequence[str]) -> None:
    """Hosts that share no filesystem need the workdir in a bucket all of them read and write."""
    workdir = flag_value(train_args, "workdir")
    if "://" not in workdir:
        raise LaunchError(f"--workdir={workdir!r}: every host must write the same checkpoints; "
                          "use a bucket path (gs://BUCKET/run)")


def parse_env(items: Sequence[str]) -> dict[str, str]:
    env = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise LaunchError(f"--env={item!r}: expected NAME=VALUE")
        env[name] = value
    return env


def train_argv(train_args: Sequence[str]) -> list[str]:
    """The command every training process runs."""
    return ["python3", "-m", "dalle2_jax.train", *train_args]


def execute(steps: Sequence[Step], dry_run: bool) -> None:
    """Prints each step, then runs it unless `dry_run` (stopping at the first failure)."""
    for step in steps:
        print("$ " + shlex.join(step.argv) + (" <<'EOF'" if step.stdin is not None else ""))
        if step.stdin is not None:
            print(step.stdin.rstrip("\n") + "\nEOF")
        if not dry_run:
            subprocess.run(step.argv, input=step.stdin, text=True, check=True)


def run_main(plan: Callable[[list[str]], tuple[list[Step], bool]], argv: Sequence[str]) -> int:
    """Entry point shared by the launchers: `plan(argv)` gives (steps, dry_run); bad input or a
    failed command is one `error:` line."""
    try:
        steps, dry_run = plan(list(argv))
        execute(steps, dry_run)
    except LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as e:
        print(f"error: {shlex.join(e.cmd)} exited with {e.returncode}", file=sys.stderr)
        return 1
    return 0
