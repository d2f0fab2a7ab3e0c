"""torchrun entry for tests/training/test_train_distributed.py: the real worker (tasks.training.launch.run_job)
with spies and a kill switch around it.

- SPY_DIR: each process touches ``adapter-rank<R>`` when it saves an adapter and
  ``mlflow-rank<R>`` when it talks to MLflow, so the test sees which ranks did.
- KILL_AT_STEP: rank 0 SIGKILLs itself right after logging that step (no cleanup, no atexit):
  torchrun then tears the other ranks down, as when a node dies mid-run.
"""

import os
import signal
import sys
from pathlib import Path

import peft
from mlflow.tracking import MlflowClient

from tasks.training.launch import exit_now, run_job

RANK = int(os.environ["RANK"])
SPY_DIR = Path(os.environ["SPY_DIR"])
KILL_AT_STEP = int(os.environ.get("KILL_AT_STEP", "0"))


def spy(cls, name: str, marker: str) -> None:
    original = getattr(cls, name)

    def wrapper(*args, **kwargs):
        (SPY_DIR / f"{marker}-rank{RANK}").touch()
        return original(*args, **kwargs)

    setattr(cls, name, wrapper)


spy(peft.PeftModel, "save_pretrained", "adapter")
for method in ("create_run", "log_batch", "set_terminated"):
    spy(MlflowClient, method, "mlflow")


def kill_switch(metrics, step):
    if step == KILL_AT_STEP:
        os.kill(os.getpid(), signal.SIGKILL)


run_job(Path(sys.argv[1]), on_step=kill_switch if KILL_AT_STEP else None)
exit_now()  # as tasks.training.launch's own entry point does
