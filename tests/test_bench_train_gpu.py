"""Smoke test of bench/bench_train_gpu.py on CPU: the GPU benchmark's own script (a subprocess per
variant) runs the padded reference and the packed, document-masked path; its masking check must
pass. No timing is asserted: the CPU figures are not figures."""

import json

from tests.bench_smoke import run_bench_script


def test_train_gpu_bench_runs_reference_and_packed_on_cpu(tmp_path):
    run_bench_script("bench_train_gpu.py", "--device", "cpu", "--layers", "2", "--hidden", "64", "--examples", "64",
                     "--pack-tokens", "512", "--max-seconds", "1", "--warmup", "1", "--variants", "reference,sdpa-packed",
                     "--out", str(tmp_path))
    reference = json.loads((tmp_path / "train_gpu_reference.json").read_text())
    packed = json.loads((tmp_path / "train_gpu_sdpa-packed.json").read_text())
    assert reference["tokens"] > 0 and packed["tokens"] > 0 and packed["steps"] >= 1
    assert packed["mask_ok"] and packed["mask_rel_err"] < 0.1 * packed["unmasked_rel_err"]  # the mask holds, a leak would show
    assert 0.5 < packed["row_fill"] <= 1.0
    assert "sdpa-packed" in (tmp_path / "train_gpu.md").read_text()
