"""Writes (and submits) a SLURM batch script that trains on a GPU cluster, one process per GPU.

    python -m launch.slurm --nodes=4 --gpus_per_node=8 [--partition=P] [--dry_run] \\
        -- --config=configs/paper/decoder_3p5b.py --workdir=/shared/runs/decoder [--config.x=...]

`srun` starts one task per GPU on every node. JAX's SLURM detection (called by
`dalle2_jax.train` when the job step has more than one task) gives each task the GPU numbered
SLURM_LOCALID and takes the first node of the job as the coordinator, on a port derived from
the job id (set `--coordinator_port` to choose it). The workdir and the dataset must be on a
filesystem every node sees (or a bucket).
"""

from __future__ import annotations

import argparse
import shlex
import sys

from launch import command


def batch_script(args: argparse.Namespace, train_args: list[str], env: dict[str, str]) -> str:
    """The sbatch script: resources, environment, then one `srun` of the training command."""
    directives = {
        "job-name": args.job_name, "nodes": args.nodes, "ntasks-per-node": args.gpus_per_node,
        "gpus-per-node": args.gpus_per_node, "cpus-per-task": args.cpus_per_task, "time": args.time,
        "output": "%x-%j.out", "partition": args.partition, "account": args.account,
    }
    lines = ["#!/bin/bash"] + [f"#SBATCH --{k}={v}" for k, v in directives.items() if v]
    lines += ["set -euo pipefail", f"cd {shlex.quote(args.code_dir)}"]
    if args.venv:
        lines.append(f"source {shlex.quote(args.venv)}/bin/activate")
    if args.coordinator_port:
        env = {"JAX_COORDINATOR_PORT": str(args.coordinator_port), **env}
    lines += [f"export {name}={shlex.quote(value)}" for name, value in env.items()]
    lines.append(f"srun --kill-on-bad-exit=1 {shlex.join(command.train_argv(train_args))}")
    return "\n".join(lines) + "\n"


def plan(argv: list[str]) -> tuple[list[command.Step], bool]:
    own, train_args = command.split_argv(argv)
    parser = argparse.ArgumentParser(prog="python -m launch.slurm", description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--gpus_per_node", type=int, default=8)
    parser.add_argument("--cpus_per_task", type=int, default=0, help="CPU cores per GPU process (0: SLURM's default)")
    parser.add_argument("--time", default="24:00:00", help="wall-clock limit")
    parser.add_argument("--job_name", default="dalle2_jax")
    parser.add_argument("--partition", default="")
    parser.add_argument("--account", default="")
    parser.add_argument("--code_dir", default=command.ROOT, help="this checkout, as the nodes see it")
    parser.add_argument("--venv", default="", help="virtualenv to activate on the nodes")
    parser.add_argument("--coordinator_port", type=int, default=0, help="0: derived from the job id")
    parser.add_argument("--script", default="dalle2_jax.sbatch", help="where to write the batch script")
    command.add_common_flags(parser)
    args = parser.parse_args(own)
    for name in ("nodes", "gpus_per_node"):
        if getattr(args, name) < 1:
            raise command.LaunchError(f"--{name}={getattr(args, name)}: must be at least 1")
    script = batch_script(args, train_args, command.parse_env(args.env))
    # `tee` writes the script next to the job's logs for the record; sbatch reads it from stdin.
    return [command.Step(["tee", args.script], stdin=script), command.Step(["sbatch", args.script])], args.dry_run


if __name__ == "__main__":
    sys.exit(command.run_main(plan, sys.argv[1:]))
