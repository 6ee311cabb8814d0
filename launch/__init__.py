"""Launchers that run `python -m dalle2_jax.train` on every host of a TPU slice or GPU cluster.

`tpu_vm` (Cloud TPU VMs, over `gcloud ... ssh --worker=all`), `slurm` (an sbatch script, one task
per GPU) and `gke_jobset` (a JobSet manifest for a GKE TPU slice). Each prints what it would run
with `--dry_run`. See the README section "From this laptop to a pod".
"""
