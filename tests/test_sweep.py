"""Sweeps (`launch/sweep.py`): the grid's commands, the record that keeps a workdir to one sweep,
bad input as one `error:` line, the results table, and a real two-point sweep of the tiny CLIP."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

import pytest

from launch import command, sweep
from tests.tiny import ROOT, tiny_clip_flags

TRAIN = ["--config=configs/shapes/clip.py", "--config.data.batch_size=16"]


def planned(argv: list[str], workdir) -> list[list[str]]:
    steps, dry_run = sweep.plan([*argv, "--", *TRAIN, f"--workdir={workdir}"])
    assert dry_run == ("--dry_run" in argv)
    return [step.argv for step in steps]


def test_one_run_per_point_each_in_its_own_workdir(tmp_path):
    argvs = planned(["--axis=optim.learning_rate=1e-3,3e-4", "--axis=model.embed_dim=16,32", "--dry_run"], tmp_path)
    assert len(argvs) == 4
    assert argvs[1] == [sys.executable, "-m", "dalle2_jax.train", *TRAIN, "--config.optim.learning_rate=1e-3",
                        "--config.model.embed_dim=32",
                        f"--workdir={tmp_path}/optim.learning_rate=1e-3,model.embed_dim=32"]
    assert [a[-1].rsplit("/", 1)[1] for a in argvs] == [
        "optim.learning_rate=1e-3,model.embed_dim=16", "optim.learning_rate=1e-3,model.embed_dim=32",
        "optim.learning_rate=3e-4,model.embed_dim=16", "optim.learning_rate=3e-4,model.embed_dim=32"]
    assert not (tmp_path / sweep.SWEEP_FILE).exists()  # a dry run writes nothing


def test_points_go_through_another_launcher(tmp_path):
    argvs = planned(["--axis=optim.learning_rate=1e-3,3e-4", "--launcher=slurm --nodes=2 --job_name=lr-{index}",
                     "--env=TFDS_DATA_DIR=/data", "--dry_run"], tmp_path)
    assert argvs[1] == [sys.executable, "-m", "launch.slurm", "--nodes=2", "--job_name=lr-1",
                        "--env=TFDS_DATA_DIR=/data", "--", *TRAIN, "--config.optim.learning_rate=3e-4",
                        f"--workdir={tmp_path}/optim.learning_rate=3e-4"]


@pytest.mark.parametrize("argv, message", [
    ([], "no --axis given"),
    (["--axis=optim.learning_rate"], "expected FIELD=VALUE1,VALUE2"),
    (["--axis=optim.learning_rate=1e-3,1e-3"], "values must be non-empty and distinct"),
    (["--axis=optim.learning_rate=1,2", "--axis=optim.learning_rate=3"], "already an axis"),
    (["--axis=optim.learnig_rate=1,2"], "configs/shapes/clip.py has no field optim.learnig_rate"),
    (["--axis=data.batch_size=16,32"], "the training flags also set --config.data.batch_size"),
    (["--axis=seed=0,1", "--launcher=kubectl"], "expected one of"),
    (["--axis=seed=0,1", "--launcher=gke_jobset --name=s"], "put {index} in --name"),
    (["--axis=seed=a/b,a:b"], "two points get the same directory name"),
])
def test_bad_input_is_one_line(tmp_path, capsys, argv, message):
    assert command.run_main(sweep.plan, [*argv, "--dry_run", "--", *TRAIN, f"--workdir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err


def test_a_workdir_keeps_to_one_sweep(tmp_path):
    record = {"training_flags": TRAIN, "axes": {"seed": ["0", "1"]}, "points": ["seed=0", "seed=1"]}
    sweep.record_sweep(str(tmp_path), record)
    sweep.record_sweep(str(tmp_path), record)  # the same sweep again: resumes
    with pytest.raises(command.LaunchError, match=r"records a different sweep \(axes: .* use a new --workdir"):
        sweep.record_sweep(str(tmp_path), {**record, "axes": {"seed": ["0", "2"]}})


def test_report_has_a_row_per_point(tmp_path):
    names = ["seed=0", "seed=1", "seed=2"]
    (tmp_path / sweep.SWEEP_FILE).write_text(json.dumps({"axes": {"seed": ["0", "1", "2"]}, "points": names}))
    (tmp_path / names[0]).mkdir()
    (tmp_path / names[0] / "metrics.jsonl").write_text(
        '{"step": 5, "eval/acc": 0.5, "eval/loss": 2.0}\n{"step": 6, "train/loss": 1.0}\n'
        '{"step": 10, "eval/acc": 0.75, "eval/loss": 1.25}\n')
    (tmp_path / names[1]).mkdir()
    (tmp_path / names[1] / "metrics.jsonl").write_text('{"step": 2, "train/loss": 3.0}\n')  # not evaluated yet
    assert sweep.report(str(tmp_path), []).splitlines() == [
        "seed  eval/acc  eval/loss", "0     0.75      1.25", "1     -         -", "2     -         -"]
    assert sweep.report(str(tmp_path), ["eval/loss"]).splitlines()[1] == "0     1.25"


def test_a_real_sweep_trains_every_point_and_reports(tmp_path, shapes_data_dir):
    workdir = tmp_path / "sweep"
    argv = [sys.executable, "-m", "launch.sweep", "--axis=optim.learning_rate=1e-3,3e-3", "--",
            "--config=configs/shapes/clip.py", f"--workdir={workdir}",
            *tiny_clip_flags(shapes_data_dir, **{"data.eval_limit": 16})]
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith(f"2 points in {workdir} (2 optim.learning_rate)\n$ ")
    for rate in ("1e-3", "3e-3"):
        saved = json.loads((workdir / f"optim.learning_rate={rate}" / "config.json").read_text())
        assert saved["optim"]["learning_rate"] == float(rate)
    table = subprocess.run([sys.executable, "-m", "launch.sweep", f"--report={workdir}",
                            "--metric=eval/validation/zero_shot_top1"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    assert table[0].split() == ["optim.learning_rate", "eval/validation/zero_shot_top1"]
    assert [row.split()[0] for row in table[1:]] == ["1e-3", "3e-3"]
    assert all(0.0 <= float(row.split()[1]) <= 1.0 for row in table[1:]), table
    assert shlex.split(result.stdout.splitlines()[1][2:])[-1] == f"--workdir={workdir}/optim.learning_rate=1e-3"
