"""Ablation sweeps: one training run per point of a grid of config values, and their results.

    python -m launch.sweep --axis=optim.learning_rate=1e-3,3e-4 --axis=model.text.width=64,128 \\
        [--launcher="slurm --nodes=1 --gpus_per_node=8"] [--dry_run] \\
        -- --config=configs/shapes/clip.py --workdir=runs/clip_sweep [--config.x=y ...]
    python -m launch.sweep --report=runs/clip_sweep [--metric=eval/zero_shot_top1 ...]

Every point of the product of the `--axis` values trains in its own sub-directory of the
workdir, named after its values (`runs/clip_sweep/optim.learning_rate=1e-3,model.text.width=64`),
with `--config.FIELD=VALUE` added to the training flags. `WORKDIR/sweep.json` records the grid:
rerunning the same sweep resumes it (each point's train command resumes its own workdir and
skips a finished one), while a different grid or different training flags in the same workdir
are refused, so no run is continued as another experiment.

`--launcher` runs each point through one of the other launchers (`slurm`, `tpu_vm`,
`gke_jobset`) with the flags given, in which `{index}` becomes the point's number (a GKE JobSet
needs a name of its own per point: `--launcher="gke_jobset --name=sweep-{index} ..."`); the
default, `local`, trains the points one after the other on this machine. `--report` prints one
row per point with its last evaluation's metrics (the multi-stage config's `report.json`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shlex
import sys
from collections.abc import Sequence

from etils import epath
from flax import traverse_util

from launch import command

LAUNCHERS = ("local", "slurm", "tpu_vm", "gke_jobset")
SWEEP_FILE = "sweep.json"


def parse_axes(items: Sequence[str]) -> dict[str, list[str]]:
    """`FIELD=V1,V2,...` flags -> {field: [values]}, in the order given."""
    axes: dict[str, list[str]] = {}
    for item in items:
        field, sep, values = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", field):
            raise command.LaunchError(
                f"--axis={item!r}: expected FIELD=VALUE1,VALUE2,... (e.g. optim.learning_rate=1e-3,3e-4)")
        if field in axes:
            raise command.LaunchError(f"--axis={item!r}: {field} is already an axis")
        split = values.split(",")
        if not all(split) or len(set(split)) != len(split):
            raise command.LaunchError(f"--axis={item!r}: values must be non-empty and distinct")
        axes[field] = split
    if not axes:
        raise command.LaunchError("no --axis given: a sweep needs at least one FIELD=VALUE1,VALUE2,...")
    return axes


def check_fields(config_arg: str, fields: Sequence[str]) -> None:
    """Each swept field exists in the config (checked here, before any run starts)."""
    from dalle2_jax import config_schema

    path, _, arg = config_arg.partition(":")
    if not os.path.isfile(path):
        raise command.LaunchError(f"--config={path}: no such file")
    config = config_schema.from_file(path, arg or None)
    for field in fields:
        section = config
        for name in field.split("."):
            if not hasattr(section, "keys") or name not in section:
                raise command.LaunchError(f"--axis={field}=...: {path} has no field {field}")
            section = section[name]


def points(axes: dict[str, list[str]]) -> list[dict[str, str]]:
    """Every combination of the axes' values, the first axis varying slowest."""
    return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]


def point_name(point: dict[str, str]) -> str:
    """The point's sub-directory: FIELD=VALUE pairs joined by commas, other characters as `_`."""
    return re.sub(r"[^A-Za-z0-9._=,+-]", "_", ",".join(f"{k}={v}" for k, v in point.items()))


def record_sweep(workdir: str, record: dict) -> None:
    """Writes WORKDIR/sweep.json (a local path or a bucket's), or checks that the one there
    records the same sweep."""
    path = epath.Path(workdir) / SWEEP_FILE
    if path.exists():
        saved = json.loads(path.read_text())
        if saved != record:
            field = next(k for k in record if saved.get(k) != record[k])
            raise command.LaunchError(
                f"{path} records a different sweep ({field}: {saved.get(field)} against {record[field]}); "
                "use a new --workdir for a different experiment")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2))


def plan(argv: list[str]) -> tuple[list[command.Step], bool]:
    own, train_args = command.split_argv(argv)
    parser = argparse.ArgumentParser(prog="python -m launch.sweep", description=__doc__.splitlines()[0])
    parser.add_argument("--axis", action="append", default=[], metavar="FIELD=V1,V2,...",
                        help="a config field and its values (repeatable; the grid is their product)")
    parser.add_argument("--launcher", default="local",
                        help=f"how each point runs: 'local', or one of {LAUNCHERS[1:]} followed by its flags")
    command.add_common_flags(parser)
    args = parser.parse_args(own)
    axes = parse_axes(args.axis)
    launcher, *launcher_flags = shlex.split(args.launcher) or ["local"]
    if launcher not in LAUNCHERS:
        raise command.LaunchError(f"--launcher={args.launcher!r}: expected one of {LAUNCHERS} (then its flags)")
    if launcher == "gke_jobset" and "{index}" not in args.launcher:
        raise command.LaunchError("--launcher=gke_jobset ...: JobSet names must differ per point; "
                                  "put {index} in --name (e.g. --name=sweep-{index})")
    for field in axes:
        if any(a.startswith(f"--config.{field}=") for a in train_args):
            raise command.LaunchError(f"--axis={field}=...: the training flags also set --config.{field}")
    check_fields(command.flag_value(train_args, "config"), list(axes))

    workdir = command.flag_value(train_args, "workdir")
    common = [a for a in train_args if not a.startswith("--workdir=")]
    grid = points(axes)
    names = [point_name(point) for point in grid]
    if len(set(names)) != len(names):
        raise command.LaunchError("two points get the same directory name; make the --axis values differ in "
                                  "letters, digits or ._=,+-")
    env = command.parse_env(args.env)
    if not args.dry_run:
        record_sweep(workdir, {"training_flags": common, "axes": axes, "points": names})

    steps = []
    for index, (point, name) in enumerate(zip(grid, names)):
        point_args = [*common, *(f"--config.{k}={v}" for k, v in point.items()),
                      f"--workdir={workdir.rstrip('/')}/{name}"]
        if launcher == "local":
            prefix = ["env", *(f"{k}={v}" for k, v in env.items())] if env else []
            # This interpreter (a virtualenv's), where the launchers' `python3` is the hosts'.
            steps.append(command.Step([*prefix, sys.executable, *command.train_argv(point_args)[1:]]))
        else:
            flags = [flag.replace("{index}", str(index)) for flag in launcher_flags]
            flags += [f"--env={k}={v}" for k, v in env.items()]
            steps.append(command.Step([sys.executable, "-m", f"launch.{launcher}", *flags, "--", *point_args]))
    print(f"{len(steps)} points in {workdir} ({' x '.join(f'{len(v)} {k}' for k, v in axes.items())})")
    return steps, args.dry_run


def last_evaluation(run_dir: str) -> dict[str, float] | None:
    """A point's final metrics: its metrics.jsonl's last evaluation, or its report.json (the
    multi-stage config), flattened; None before either exists."""
    report, metrics = epath.Path(run_dir) / "report.json", epath.Path(run_dir) / "metrics.jsonl"
    if report.exists():
        flat = traverse_util.flatten_dict(json.loads(report.read_text()), sep="/")
        return {k: v for k, v in flat.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if not metrics.exists():
        return None
    records = [json.loads(line) for line in metrics.read_text().splitlines() if '"eval/' in line]
    return {k: v for k, v in records[-1].items() if k.startswith("eval/")} if records else None


def report(workdir: str, metrics: Sequence[str]) -> str:
    """A table: one row per point of the sweep in `workdir`, its axis values and `metrics` (all of
    the first finished point's when empty); `-` where a point has not evaluated yet."""
    path = epath.Path(workdir) / SWEEP_FILE
    if not path.exists():
        raise command.LaunchError(f"--report={workdir}: no {SWEEP_FILE} there (not a sweep's workdir)")
    sweep = json.loads(path.read_text())
    axes = list(sweep["axes"])
    results = [last_evaluation(str(epath.Path(workdir) / name)) for name in sweep["points"]]
    columns = list(metrics) or sorted(next((r for r in results if r), {}))
    rows = [[*axes, *columns]]
    for point, result in zip(points(sweep["axes"]), results):
        values = [f"{result[c]:.4g}" if result and c in result else "-" for c in columns]
        rows.append([*point.values(), *values])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def main(argv: Sequence[str]) -> int:
    reporting = [a for a in argv if a.startswith("--report=")]
    if not reporting:
        return command.run_main(plan, argv)
    parser = argparse.ArgumentParser(prog="python -m launch.sweep --report=WORKDIR")
    parser.add_argument("--report", required=True)
    parser.add_argument("--metric", action="append", default=[], help="a column (repeatable; default: all)")
    args = parser.parse_args(argv)
    try:
        print(report(args.report, args.metric))
    except command.LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
