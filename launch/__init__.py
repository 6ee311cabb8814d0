"""Running at scale: launchers and ahead-of-time checks.

`tpu_vm` (Cloud TPU VMs, over `gcloud ... ssh --worker=all`), `slurm` (an sbatch script, one task
per GPU) and `gke_jobset` (a JobSet manifest for a GKE TPU slice) run `python -m dalle2_jax.train`
on every host; each prints what it would run with `--dry_run` (README: "From this laptop to a
pod"). `sweep` runs one training run per point of a grid of config values, locally or through
the other launchers, and tabulates their results. `aot` compiles the real train step for a TPU
topology on a machine without TPUs (README: "Ahead-of-time checks for TPU pods").
"""
