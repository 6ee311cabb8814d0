"""Applies a JobSet that trains on a multi-host TPU slice of a GKE cluster (one pod per TPU VM).

    python -m launch.gke_jobset --name=prior --image=IMAGE --tpu=v5p --topology=4x4x4 [--dry_run] \\
        -- --config=configs/paper/prior_1b.py --workdir=gs://BUCKET/prior [--config.x=...]

IMAGE is a container with this checkout installed (`pip install -e . "jax[tpu]"`). The JobSet
runs one pod per TPU VM of the slice, each on a whole VM; GKE gives every pod the slice's worker
list (TPU_WORKER_HOSTNAMES) and its index, from which `dalle2_jax.train` joins the others. The
manifest is JSON, which `kubectl apply -f -` reads like YAML. Requires the JobSet controller in
the cluster and a TPU node pool of that type and topology.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys

from launch import command

# --tpu -> (GKE accelerator label, TPU chips per VM of a multi-host slice).
TPUS = {
    "v4": ("tpu-v4-podslice", 4),
    "v5e": ("tpu-v5-lite-podslice", 4),
    "v5p": ("tpu-v5p-slice", 4),
    "v6e": ("tpu-v6e-slice", 4),
}


def num_workers(tpu: str, topology: str) -> int:
    """TPU VMs (pods) in a slice: its chips (the product of the topology) over chips per VM."""
    if not re.fullmatch(r"\d+(x\d+)+", topology):
        raise command.LaunchError(f"--topology={topology!r}: expected chips per dimension, e.g. 4x4x4")
    chips, per_vm = math.prod(int(d) for d in topology.split("x")), TPUS[tpu][1]
    if chips % per_vm:
        raise command.LaunchError(f"--topology={topology}: {chips} chips do not fill whole VMs of {per_vm}")
    return chips // per_vm


def manifest(args: argparse.Namespace, train_args: list[str], env: dict[str, str]) -> dict:
    """The JobSet: one replicated job of `num_workers` pods, exclusive to one slice's node pool."""
    accelerator, chips_per_vm = TPUS[args.tpu]
    workers = num_workers(args.tpu, args.topology)
    container = {
        "name": "train",
        "image": args.image,
        "command": command.train_argv(train_args),
        "env": [{"name": k, "value": v} for k, v in env.items()],
        "ports": [{"containerPort": 8471}, {"containerPort": 8080}],  # TPU runtime, JAX coordinator
        "securityContext": {"privileged": True},
        "resources": {"limits": {"google.com/tpu": chips_per_vm}},
    }
    pod = {
        "restartPolicy": "Never",
        "hostNetwork": True,
        "dnsPolicy": "ClusterFirstWithHostNet",
        "nodeSelector": {"cloud.google.com/gke-tpu-accelerator": accelerator,
                         "cloud.google.com/gke-tpu-topology": args.topology},
        "containers": [container],
    }
    return {
        "apiVersion": "jobset.x-k8s.io/v1alpha2",
        "kind": "JobSet",
        "metadata": {"name": args.name,
                     "annotations": {"alpha.jobset.sigs.k8s.io/exclusive-topology": "cloud.google.com/gke-nodepool"}},
        "spec": {
            # A failed worker restarts the whole slice; the run resumes from its last checkpoint.
            "failurePolicy": {"maxRestarts": args.max_restarts},
            "replicatedJobs": [{
                "name": "slice",
                "replicas": 1,
                "template": {"spec": {"parallelism": workers, "completions": workers, "backoffLimit": 0,
                                      "template": {"spec": pod}}},
            }],
        },
    }


def plan(argv: list[str]) -> tuple[list[command.Step], bool]:
    own, train_args = command.split_argv(argv)
    parser = argparse.ArgumentParser(prog="python -m launch.gke_jobset", description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="JobSet name (lower case, digits, '-')")
    parser.add_argument("--image", required=True, help="container image with dalle2_jax installed")
    parser.add_argument("--tpu", required=True, choices=sorted(TPUS))
    parser.add_argument("--topology", required=True, help="slice topology, e.g. 4x4x4 (v4, v5p) or 4x4 (v5e, v6e)")
    parser.add_argument("--max_restarts", type=int, default=3)
    command.add_common_flags(parser)
    args = parser.parse_args(own)
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", args.name):
        raise command.LaunchError(f"--name={args.name!r}: lower-case letters, digits and '-' only")
    command.require_cloud_workdir(train_args)
    text = json.dumps(manifest(args, train_args, command.parse_env(args.env)), indent=2)
    return [command.Step(["kubectl", "apply", "-f", "-"], stdin=text)], args.dry_run


if __name__ == "__main__":
    sys.exit(command.run_main(plan, sys.argv[1:]))
