"""One progress bar per long step on a terminal, that log lines do not break and that is drawn once.

The commands run in a real pseudo-terminal (a child process on a pty, as in a user's shell); what
the user sees is rebuilt from the bytes written (a carriage return goes back to the line's start).
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_in_a_terminal(code: str, env: dict[str, str], timeout: float = 120) -> tuple[str, list[str]]:
    """(every byte the child wrote, as text; the lines left on the screen) for ``python -c code`` on a pty."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 150, 0, 0))
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdin=slave, stdout=slave, stderr=slave,
                            env=env, cwd=REPO, close_fds=True)
    os.close(slave)
    chunks, hung = [], False
    try:
        while True:
            if not select.select([master], [], [], timeout)[0]:
                hung = True
                break
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child has closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        if hung:
            proc.kill()
        rc = proc.wait(timeout=timeout)
        os.close(master)
    raw = ANSI.sub("", b"".join(chunks).decode("utf-8", "replace"))
    assert rc == 0 and not hung, raw[-3000:]
    return raw, screen(raw)


def screen(raw: str) -> list[str]:
    """The lines a terminal shows: within a line, a carriage return writes over it from its start."""
    lines = []
    for line in raw.replace("\r\n", "\n").split("\n"):
        shown: list[str] = []
        for segment in line.split("\r"):
            shown[: len(segment)] = segment
        lines.append("".join(shown).rstrip())
    return [line for line in lines if line]


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TQDM_", "PYTEST_"))}
    env.update(PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", TERM="xterm", COLUMNS="150", **extra)
    return env


BAR_AND_LOGS = """
    import logging, threading, warnings
    from prefect.logging.configuration import setup_logging
    setup_logging()  # Prefect's console handler on the root logger, as the chainsignal command does
    from tasks.core.progress import progress
    log = logging.getLogger("chainsignal.work")  # propagates to the root logger's console handler
    log.setLevel(logging.INFO)
    log.info("before the bar")
    bar = progress(5, "work", "step")
    for step in range(1, 6):
        bar.update(1)
        log.info("step %d/5 loss 0.5", step)
        if step == 3:
            log.warning("a warning during the bar")
            t = threading.Thread(target=lambda: log.info("another thread's line"))
            t.start(); t.join()
        if step == 4:
            warnings.warn("a python warning during the bar")
    bar.close()
    log.info("after the bar")
    handlers = logging.getLogger().handlers
    print("root handlers:", ",".join(type(h).__name__ for h in handlers))
"""


def test_log_lines_do_not_break_the_bar_and_it_is_drawn_once():
    raw, shown = run_in_a_terminal(BAR_AND_LOGS, child_env())
    bars = [line for line in shown if line.startswith("work:")]
    assert len(bars) == 1 and "5/5" in bars[0]
    # the bar's own work's INFO lines are left to the other handlers (the Prefect run's logs)...
    assert "step 1/5" not in raw and "step 5/5" not in raw
    # ... warnings and other threads' lines are written above the bar, each on a line of its own
    for text in ("before the bar", "a warning during the bar", "another thread's line", "after the bar"):
        assert sum(line.endswith(text) for line in shown) == 1, (text, shown)
    where = [next(i for i, line in enumerate(shown) if text in line) for text in
             ("before the bar", "a warning during the bar", "another thread's line", "work:", "after the bar")]
    assert where == sorted(where)
    # a Python warning (written to stderr, not logged) lands on a line of its own above the bar too
    warned = [line for line in shown if "UserWarning: a python warning during the bar" in line]
    assert len(warned) == 1 and not warned[0].startswith("work:") and shown.index(warned[0]) < where[3], shown
    assert shown[-1] == "root handlers: PrefectConsoleHandler"  # the console handler is given back


def test_without_a_terminal_there_is_no_bar_and_every_step_is_logged():
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(BAR_AND_LOGS)], env=child_env(), cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "work:" not in out.stderr
    assert [f"step {i}/5" in out.stderr for i in range(1, 6)] == [True] * 5


TRAINING = """
    from prefect import flow, task
    from prefect.logging.configuration import setup_logging
    setup_logging()
    from tasks.core.logs import user_errors_in_one_line_on_the_console
    user_errors_in_one_line_on_the_console()  # as the chainsignal command starts
    from pathlib import Path
    from tasks.core.settings import load_settings, with_overrides
    from tasks.dataset.prompter import Prompter
    from tasks.training.tinymodel import build_tiny_llama
    from tasks.training.train import train_lora_adapter

    p = Prompter.load()
    recs = [{"instruction": p.instruction, "input": f"day {i}: ETH 1d +{i}.0%", "output": p.labels[i % 3]}
            for i in range(8)]
    base = build_tiny_llama(Path(WORK) / "tiny", [p.prompt(r["instruction"], r["input"]) + r["output"] for r in recs],
                            vocab_size=300, hidden_size=16, layers=1, heads=2, seed=0)
    cfg = with_overrides(load_settings(), train={"epochs": 3, "batch_size": 4, "micro_batch_size": 4,
                                                 "cutoff_len": 64, "device": "cpu"}).train

    @flow(name="train-in-a-terminal")
    def run():
        return task(train_lora_adapter, name="train-lora-adapter")(cfg, str(base), recs, recs[:2], Path(WORK) / "a")

    print("steps", run().steps)
"""


def test_training_in_a_terminal_shows_one_bar_and_no_step_lines(tmp_path):
    from prefect.settings import PREFECT_API_URL

    raw, shown = run_in_a_terminal(TRAINING.replace("WORK", repr(str(tmp_path))), child_env(
        PREFECT_API_URL=PREFECT_API_URL.value(), CHAINSIGNAL_STORAGE__DATA_DIR=str(tmp_path / "data")))
    assert shown[-1] == "steps 6"
    bars = [line for line in shown if "train-lora:" in line]
    assert len(bars) == 1 and "6/6" in bars[0] and "loss" in bars[0]
    assert not re.search(r"step \d+/6", raw)  # the per-step lines went to the run's logs only
    assert any(line.endswith("Finished in state Completed()") for line in shown)
    assert sum("validation loss" in line for line in shown) == 1
