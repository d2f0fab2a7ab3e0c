"""Multi-process LoRA training on CPU: torchrun --standalone --nproc_per_node 2 (gloo), the tiny
Llama built on the fly. Real processes, real collectives; no GPU needed.

What a multi-GPU run relies on, checked here: the replicas stay identical (and equal to one
process accumulating the same global batch), only rank 0 saves the adapter and talks to MLflow,
a run killed after a checkpoint resumes where it stopped, FSDP2 shards and gathers the adapter,
and the train-lora flow launches all of it with ``train.nproc``.
"""

import json
from pathlib import Path

import pytest
import torch

from tasks.core.settings import SettingsError, load_settings, with_overrides
from tasks.dataset.prompter import Prompter
from tasks.training.launch import LaunchError, last_error, launch_training, torchrun_command
from tasks.training.tinymodel import build_tiny_llama
from tasks.training.train import train_lora_adapter

PROMPTER = Prompter.load()
WORKER = str(Path(__file__).parents[1] / "torchrun_worker.py")
pytestmark = pytest.mark.timeout(240)


def records(n: int) -> list[dict]:
    return [{"instruction": PROMPTER.instruction, "input": f"day {i}: ETH 1d {'+' if i % 2 else '-'}{i % 7}.0%",
             "output": ("POSITIVE", "NEUTRAL", "NEGATIVE")[i % 3]} for i in range(n)]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    corpus = [PROMPTER.prompt(r["instruction"], r["input"]) + r["output"] for r in records(30)] + list(PROMPTER.labels)
    return build_tiny_llama(tmp_path_factory.mktemp("m") / "tiny", corpus, vocab_size=400, hidden_size=32, layers=2,
                            heads=2, seed=0, init_std=0.2)


def cfg_for(**over):
    # 8 examples, global batch 4 (2 per process), 3 epochs = 6 steps; dropout off so that one process
    # accumulating 2 micro-batches of 2 must give the same adapter as 2 processes with 2 each; the last
    # step kept (several processes keep the last step, so the one-process reference must too).
    return with_overrides(load_settings(), train={"epochs": 3, "batch_size": 4, "micro_batch_size": 2, "learning_rate": 5e-3,
                                                  "cutoff_len": 96, "device": "cpu", "lora_dropout": 0.0, "packing": True,
                                                  "checkpoint_every_steps": 2, "select_by": "last", **over}).train


def adapter_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


def metric_steps(tracking_uri: str, experiment: str) -> list[list[int]]:
    """train_loss steps of every run of the experiment, oldest run first."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    runs = sorted(client.search_runs([exp.experiment_id]), key=lambda r: r.info.start_time)
    return [[m.step for m in client.get_metric_history(r.info.run_id, "train_loss")] for r in runs]


def kill_then_resume(tiny_model, tmp_path, parallelism: str):
    """Launch 1 dies (SIGKILL of rank 0) after step 3, checkpoint at step 2; launch 2 resumes."""
    cfg = cfg_for(parallelism=parallelism)
    spies, ckpt = tmp_path / "spies", tmp_path / "ckpt"
    spies.mkdir()
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = dict(nproc=2, work_dir=tmp_path / "work", checkpoint_dir=ckpt, worker=WORKER,
                  mlflow={"tracking_uri": tracking, "experiment": "dist"})
    with pytest.raises(LaunchError, match="exit"):
        launch_training(cfg, str(tiny_model), records(8), records(3), tmp_path / "adapter",
                        env={"SPY_DIR": str(spies), "KILL_AT_STEP": "3"}, **common)
    assert (ckpt / "checkpoint.pt").is_file() and not (tmp_path / "adapter").exists()
    assert torch.load(ckpt / "checkpoint.pt", weights_only=False)["step"] == 2
    result = launch_training(cfg, str(tiny_model), records(8), records(3), tmp_path / "adapter",
                             env={"SPY_DIR": str(spies)}, **common)
    # One process accumulating the same global batch, uninterrupted: the reference adapter.
    single = train_lora_adapter(cfg_for(parallelism=parallelism), str(tiny_model), records(8), records(3), tmp_path / "single")
    return cfg, result, single, spies, tracking


def test_ddp_two_processes_stay_in_sync_log_once_and_resume_after_a_kill(tiny_model, tmp_path):
    cfg, result, single, spies, tracking = kill_then_resume(tiny_model, tmp_path, "ddp")
    assert (result.world_size, result.parallelism, result.steps) == (2, "ddp", 6)
    ranks = [json.loads((tmp_path / "work" / f"result-rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["lora_digest"] == ranks[1]["lora_digest"]  # both replicas ended bit-identical
    a, b = adapter_weights(tmp_path / "adapter"), adapter_weights(tmp_path / "single")
    assert a.keys() == b.keys() and max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    assert abs(result.train_loss_last - single.train_loss_last) < 1e-4 and abs(result.val_loss - single.val_loss) < 1e-4
    assert result.tokens_seen == single.tokens_seen  # tokens of both processes are counted
    # Only rank 0 saved the adapter and talked to MLflow, in both launches.
    assert sorted(p.name for p in spies.iterdir()) == ["adapter-rank0", "mlflow-rank0"]
    # Killed run logged steps 1-3; the resumed one restarted at 3 (steps 1-2 came from the checkpoint), once each.
    assert metric_steps(tracking, "dist") == [[1, 2, 3], [3, 4, 5, 6]]
    assert not (tmp_path / "ckpt" / "checkpoint.pt").exists()  # a finished run leaves nothing to resume


def test_fsdp_two_processes_shard_checkpoint_resume_and_gather_the_adapter(tiny_model, tmp_path):
    cfg, result, single, spies, tracking = kill_then_resume(tiny_model, tmp_path, "fsdp")
    assert (result.world_size, result.parallelism, result.steps) == (2, "fsdp", 6)
    # The adapter gathered from the shards on rank 0 equals the one-process adapter and loads in peft.
    a, b = adapter_weights(tmp_path / "adapter"), adapter_weights(tmp_path / "single")
    assert a.keys() == b.keys() and max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    assert abs(result.val_loss - single.val_loss) < 1e-4
    assert sorted(p.name for p in spies.iterdir()) == ["adapter-rank0", "mlflow-rank0"]
    assert metric_steps(tracking, "dist") == [[1, 2, 3], [3, 4, 5, 6]]


def test_train_lora_flow_launches_torchrun_when_nproc_is_above_one(data_dir, tmp_path):
    """The flow with nproc=2: same parameters, rank 0 logs into the flow's run, the adapter is registered."""
    import polars as pl
    from mlflow.tracking import MlflowClient

    from flows.train_lora import train_lora

    fp = "f" * 16
    ds = data_dir / "datasets" / "direction" / fp
    ds.mkdir(parents=True)
    (ds.parent / "LATEST").write_text(fp)
    (ds / "train.json").write_text(json.dumps(records(8)))
    (ds / "validation.json").write_text(json.dumps(records(3)))
    pl.DataFrame({"date": [f"2021-01-{d:02d}" for d in range(1, 12)], "split": ["train"] * 8 + ["validation"] * 3,
                  "ret_1d": [0.01 * d for d in range(11)]}).write_parquet(ds / "features.parquet")
    (ds / "manifest.json").write_text(json.dumps({
        "task": "direction", "kind": "class", "fingerprint": fp, "chain_label": "synthetic local chain",
        "rows": {"train": 8, "validation": 3}, "thresholds": [-0.01, 0.01]}))
    summary = train_lora(epochs=1, batch_size=4, micro_batch_size=2, cutoff_len=96, run_evaluation=False, nproc=2)
    assert summary["processes"] == 2 and summary["steps"] == 2 and summary["version"] == "1"
    settings = load_settings()
    client = MlflowClient(settings.tracking_uri)
    run = client.get_run(summary["run_id"])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2]  # from rank 0
    assert run.data.metrics["train_processes"] == 2 and run.data.params["train.nproc"] == "2"
    assert run.data.tags["world_size"] == "2"
    assert (data_dir / "runs" / run.info.run_id / "adapter" / "adapter_model.safetensors").is_file()


def test_nproc_settings_are_checked_in_one_line():
    s = load_settings()
    assert (s.train.nproc, s.train.parallelism) == (1, "ddp")
    for over, words in [({"nproc": 2, "batch_size": 8, "micro_batch_size": 8}, "multiple of micro_batch_size x nproc"),
                        ({"nproc": 2, "model_kind": "encoder"}, "causal kind only"),
                        ({"parallelism": "fsdp", "qlora": True}, "qlora cannot be combined"),
                        ({"parallelism": "zero3"}, "train.parallelism")]:
        with pytest.raises(SettingsError, match=words) as err:
            with_overrides(s, train=over)
        assert "\n" not in str(err.value)


def test_torchrun_command_and_failure_line(tmp_path):
    cmd = torchrun_command(4, tmp_path / "job.json")
    assert cmd[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", "-m"]
    assert cmd[6:] == ["tasks.training.launch", str(tmp_path / "job.json")]
    assert torchrun_command(2, tmp_path / "j.json", "w.py")[-2:] == ["w.py", str(tmp_path / "j.json")]
    lines = ["[rank1]: Traceback (most recent call last):", '[rank1]:   File "x.py", line 3',
             "[rank1]: ValueError: train.batch_size 6 must be a multiple",
             "torch.distributed.elastic.multiprocessing.errors.ChildFailedError:", "E0101 elastic ... failed"]
    assert last_error(lines) == "ValueError: train.batch_size 6 must be a multiple"
    assert last_error([]) == "no output"


def test_the_worker_also_runs_under_accelerate_launch(tiny_model, tmp_path):
    """The README's alternative launcher: `accelerate launch -m tasks.training.launch JOB` with 2 CPU
    processes trains the same adapter as one process accumulating the same global batch."""
    import os
    import subprocess
    import sys

    from tasks.training.launch import write_job

    cfg = cfg_for(checkpoint_every_steps=0)
    job = write_job(tmp_path / "work", cfg, str(tiny_model), records(8), records(3), tmp_path / "adapter")
    accelerate = Path(sys.executable).with_name("accelerate")
    # --multi_gpu is accelerate's torchrun-based launcher; with no GPU the worker joins over gloo on CPU
    out = subprocess.run([str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                          "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "tasks.training.launch", str(job)],
                         capture_output=True, text=True, timeout=200, cwd=Path(__file__).resolve().parents[2],
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, (out.stdout + out.stderr)[-2000:]
    ranks = [json.loads((tmp_path / "work" / f"result-rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world_size"] == 2 and ranks[0]["lora_digest"] == ranks[1]["lora_digest"]
    train_lora_adapter(cfg, str(tiny_model), records(8), records(3), tmp_path / "single")
    a, b = adapter_weights(tmp_path / "adapter"), adapter_weights(tmp_path / "single")
    assert a.keys() == b.keys() and max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
