"""bench/bench_chain_ingest.py's report writer: a rerun replaces only its own block of a results file,
so the notes written below the generated table survive (before, every rerun wrote the whole file)."""

import importlib.util

from tests.bench_smoke import BENCH_DIR


def bench_module():
    spec = importlib.util.spec_from_file_location("bench_chain_ingest", BENCH_DIR / "bench_chain_ingest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # its main() runs only as a script
    return module


def test_a_rerun_replaces_its_block_and_keeps_the_notes(tmp_path):
    bench = bench_module()
    out = tmp_path / "results" / "chain_ingest.md"
    bench.write_report(out, "# run 1\n\n| ours | 1.00x |\n")
    first = out.read_text()
    assert first.startswith(bench.BEGIN) and "# run 1" in first
    out.write_text(first + "\n## Notes\n\nwritten by hand\n")
    bench.write_report(out, "# run 2\n\n| ours | 1.05x |\n")
    text = out.read_text()
    assert "# run 2" in text and "# run 1" not in text
    assert text.count(bench.BEGIN) == text.count(bench.END) == 1
    assert text.endswith("## Notes\n\nwritten by hand\n")
