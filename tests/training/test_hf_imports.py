"""Walk-forward folds train in threads, and transformers 5 resolves its names lazily on first use without a lock
(two folds starting together failed with "cannot import name 'get_linear_schedule_with_warmup' from 'transformers'").
tasks/training/model.py import_hf_names resolves, once per process, every name the code imports inside a function."""

import ast
import subprocess
import sys

from tasks.core.settings import REPO_ROOT
from tasks.training.model import HF_NAMES

HF_PACKAGES = ("transformers", "peft")


def _imports_inside_functions() -> set[tuple[str, str]]:
    found = set()
    for path in (REPO_ROOT / "tasks").rglob("*.py"):
        for fn in ast.walk(ast.parse(path.read_text())):
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                for node in ast.walk(fn):
                    if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in HF_PACKAGES:
                        found |= {(node.module, alias.name) for alias in node.names}
    return found


def test_every_transformers_or_peft_name_imported_inside_a_function_is_resolved_up_front():
    listed = {(module, name) for module, names in HF_NAMES.items() for name in names}
    inside = _imports_inside_functions()
    assert inside, "the scan found no imports: the check would pass vacuously"
    assert sorted(inside - listed) == []


def test_threads_that_start_training_together_import_without_error():
    """Eight threads released at once each resolve the names and import what the encoder's training imports, in a fresh
    process (the race is on first use); run four times, since without the lock it failed about one run in three."""
    code = """
import threading
from tasks.training.model import import_hf_names
gate, errors = threading.Barrier(8), []
def work():
    gate.wait()
    try:
        import_hf_names()
        from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup
        from peft import LoraConfig, PeftModel, TaskType, get_peft_model
    except Exception as e:
        errors.append(repr(e))
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
print(errors)
"""
    for _ in range(4):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, cwd=REPO_ROOT,
                             env={"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.strip() == "[]", out.stdout[-2000:]
