"""Smoke test of bench/bench_train_scaling.py on CPU: the same script that measures GPU scaling runs
1 and 2 gloo processes on tiny shapes and writes its report. No timing is asserted (no figures on CPU)."""

import pytest

from tests.bench_smoke import TINY_LLAMA, run_bench_script

TINY = ["--device", "cpu", "--layers", "2", "--hidden", "256", "--pack-tokens", "512", "--examples", "64",
        "--warmup", "2", "--steps", "3"]
pytestmark = pytest.mark.timeout(180)


def test_ddp_scaling_smoke_one_and_two_processes(tmp_path):
    results, _ = run_bench_script("bench_train_scaling.py", *TINY, "--gpus", "1,2", "--out", str(tmp_path),
                                  report=tmp_path / "train_scaling.json")
    assert [(r["gpus"], r["parallelism"]) for r in results] == [(1, "single"), (2, "ddp")]
    assert all(r["tokens"] > 0 and r["tokens_per_s"] > 0 and 9 < r["loss_first"] < 12 for r in results)  # ~ln(32000)
    assert results[0]["efficiency"] == 1.0 and results[1]["efficiency"] == pytest.approx(
        results[1]["tokens_per_s"] / (2 * results[0]["tokens_per_s"]))
    report = (tmp_path / "train_scaling.md").read_text()
    assert "CPU smoke test" in report and "not figures" in report and "not assessed on CPU" in report
    assert report.count("\n| 1 | single |") == 1 and report.count("\n| 2 | ddp |") == 1


def test_fsdp_smoke_two_processes(tmp_path):
    (result,), _ = run_bench_script("bench_train_scaling.py", *TINY, "--gpus", "2", "--parallelism", "fsdp", "--heads", "8",
                                    "--kv-heads", "2", "--grad-ckpt", "--out", str(tmp_path), report=tmp_path / "train_scaling.json")
    assert result["parallelism"] == "fsdp" and result["gpus"] == 2 and result["tokens"] > 0
    assert "efficiency" not in result  # no 1-process run to compare with


def test_train_launch_check_smoke_cpu(tmp_path):
    """bench/check_train_launch_gpu.py (the real worker under torchrun) on CPU: 2 gloo processes
    must give the adapter of one process accumulating the same global batch."""
    report, _ = run_bench_script("check_train_launch_gpu.py", *TINY_LLAMA, "--examples", "16", "--epochs", "1",
                              "--parallelism", "ddp", "--out", str(tmp_path), report=tmp_path / "train_launch_gpu.json")
    ddp = report["2 processes, ddp"]
    assert ddp["world_size"] == 2 and ddp["parallelism"] == "ddp" and ddp["steps"] == 2
    assert ddp["max_rel_diff_vs_single"] < 1e-5
    assert "| 2 processes, ddp | 2 | ddp |" in (tmp_path / "train_launch_gpu.md").read_text()
