"""Multi-stage runs: several stage configs trained in order, each in its own sub-directory.

A multi-stage config has `stage = "multistage"`, `stages` (the order, e.g. ("clip", "prior")) and
one full stage config per name. String fields may contain `{workdir}`, replaced by the run's
workdir, so that a later stage names an earlier one's directory (`prior.clip.workdir =
"{workdir}/clip"`). A stage whose final checkpoint exists is skipped when the run is repeated;
`WORKDIR/report.json` collects every stage's last evaluation and wall time; `WORKDIR/config.json`
is the multi-stage config (the sampler finds the stages through it).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import ml_collections
from absl import logging
from etils import epath

from dalle2_jax.parallel import distributed

STAGE = "multistage"
PLACEHOLDER = "{workdir}"


def multistage_config(stages: dict[str, ml_collections.ConfigDict],
                      samples: ml_collections.ConfigDict | None = None) -> ml_collections.ConfigDict:
    """A locked multi-stage config running `stages` (name -> stage config) in insertion order;
    `samples` (see `evaluation/generation.py`) adds a text-to-image evaluation at the end."""
    config = ml_collections.ConfigDict()
    config.stage = STAGE
    config.stages = tuple(stages)
    for name, stage_config in stages.items():
        config[name] = stage_config
    if samples is not None:
        config.samples = samples
    config.lock()
    return config


def _resolve(section: ml_collections.ConfigDict, workdir: str) -> None:
    for key, value in section.items():
        if isinstance(value, ml_collections.ConfigDict):
            _resolve(value, workdir)
        elif isinstance(value, str) and PLACEHOLDER in value:
            section[key] = value.replace(PLACEHOLDER, workdir)


def stage_configs(config: ml_collections.ConfigDict, workdir: str) -> list[tuple[str, ml_collections.ConfigDict]]:
    """(name, stage config with `{workdir}` resolved) for each stage, in order."""
    out = []
    for name in config.stages:
        if name not in config:
            raise ValueError(f"stages: {name!r} has no config section")
        stage_config = ml_collections.ConfigDict(config[name].to_dict())
        _resolve(stage_config, workdir)
        out.append((name, stage_config))
    return out


def is_finished(stage_workdir: epath.Path, stage_config: ml_collections.ConfigDict) -> bool:
    return (stage_workdir / "checkpoints" / str(stage_config.train.num_steps) / "_CHECKPOINT_METADATA").exists()


def last_eval(stage_workdir: epath.Path) -> dict[str, float]:
    """The stage's last evaluation record from its metrics.jsonl."""
    records = [json.loads(line) for line in (stage_workdir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if any(k.startswith("eval/") for k in r)]
    return evals[-1] if evals else {}


def run(config: ml_collections.ConfigDict, workdir: str,
        train_stage: Callable[[ml_collections.ConfigDict, str], dict[str, float]]) -> dict:
    """Trains every stage not finished yet, in order; writes and returns the report."""
    root = epath.Path(workdir)
    is_chief = distributed.is_chief()  # one host writes the run's own files; all train every stage
    if is_chief:
        root.mkdir(parents=True, exist_ok=True)
        (root / "config.json").write_text(config.to_json(sort_keys=True, indent=2))  # the sampler reads the stages
    report_path = root / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    for name, stage_config in stage_configs(config, str(root)):
        stage_dir = root / name
        if is_finished(stage_dir, stage_config):
            logging.info("Stage %s: finished earlier in %s; skipping.", name, stage_dir)
        else:
            logging.info("Stage %s: training in %s.", name, stage_dir)
            started = time.perf_counter()
            train_stage(stage_config, str(stage_dir))
            report.setdefault(name, {})["seconds"] = time.perf_counter() - started
        report.setdefault(name, {})["final_eval"] = last_eval(stage_dir)
        if is_chief:
            report_path.write_text(json.dumps(report, indent=2, sort_keys=True))
    return report
