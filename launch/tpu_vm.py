"""Runs the training command on every worker of a Cloud TPU VM slice, over `gcloud ... ssh`.

    python -m launch.tpu_vm --tpu=NAME --zone=ZONE [--project=P] [--setup] [--dry_run] \\
        -- --config=configs/paper/prior_1b.py --workdir=gs://BUCKET/prior [--config.x=...]

`--worker=all` starts the same command on each worker (one process per host); each process finds
the others through the TPU metadata (`dalle2_jax.parallel.distributed`). With `--setup` it first
ships this checkout's committed code (`git archive HEAD`) to every worker and installs it with
JAX for TPU. The workdir must be a bucket path: the workers share no disk.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from launch import command

ARCHIVE = "/tmp/dalle2_jax.tar.gz"


def plan(argv: list[str]) -> tuple[list[command.Step], bool]:
    own, train_args = command.split_argv(argv)
    parser = argparse.ArgumentParser(prog="python -m launch.tpu_vm", description=__doc__.splitlines()[0])
    parser.add_argument("--tpu", required=True, help="name of the TPU VM (slice)")
    parser.add_argument("--zone", required=True)
    parser.add_argument("--project", default="", help="Google Cloud project (default: gcloud's)")
    parser.add_argument("--code_dir", default="dalle2_jax", help="checkout on each worker, from its home")
    parser.add_argument("--setup", action="store_true", help="copy and install this checkout first")
    command.add_common_flags(parser)
    args = parser.parse_args(own)
    command.require_cloud_workdir(train_args)
    env = command.parse_env(args.env)

    where = ["--zone", args.zone, *(["--project", args.project] if args.project else []), "--worker=all"]

    def on_all_workers(script: str) -> command.Step:
        return command.Step(["gcloud", "compute", "tpus", "tpu-vm", "ssh", args.tpu, *where, "--command", script])

    code = shlex.quote(args.code_dir)
    steps = []
    if args.setup:
        steps += [
            command.Step(["git", "-C", command.ROOT, "archive", "--format=tar.gz", "-o", ARCHIVE, "HEAD"]),
            command.Step(["gcloud", "compute", "tpus", "tpu-vm", "scp", ARCHIVE, f"{args.tpu}:{ARCHIVE}", *where]),
            on_all_workers(f"mkdir -p {code} && tar -xzf {ARCHIVE} -C {code} && "
                           f'pip install -U "jax[tpu]" && pip install -e {code}'),
        ]
    exports = "".join(f"{name}={shlex.quote(value)} " for name, value in env.items())
    steps.append(on_all_workers(f"cd {code} && {exports}{shlex.join(command.train_argv(train_args))}"))
    return steps, args.dry_run


if __name__ == "__main__":
    sys.exit(command.run_main(plan, sys.argv[1:]))
