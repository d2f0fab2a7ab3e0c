"""Every command the README's quick-start sections show a new user works as written.

A command is a line of a fenced shell block, or an inline code span that starts with a program
(`make help`, `chainsignal settings`, ...), in the sections before "Where the code lives". Each one is

- run here for real when it is cheap (RUN below), or
- exercised elsewhere, named in REGISTRY: a test, a demo step or a Makefile target, whose source (for
  a Makefile target: what `make -n` would run) must hold the command's words, so a command renamed in
  the README or in its test fails here; or
- marked in the README itself with a trailing ``# needs a key: ...`` or ``# needs a GPU: ...``.

A command in none of these fails the test. Whatever its kind, a `chainsignal` command's subcommand and
options must exist in the CLI, and an exported CHAINSIGNAL_* variable must name a setting.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
QUICK_START_ENDS = "## Where the code lives"
PROGRAMS = ("make", "chainsignal", "prefect", "mlflow", "source", "pip", "export")
MARKERS = ("needs a key", "needs a GPU")
ORCHESTRATION = "tests/ops/test_orchestration.py::test_up_setup_deployment_run_down"


# --------------------------------------------------------------------------- reading the README
def quick_start() -> str:
    text = (ROOT / "README.md").read_text()
    assert QUICK_START_ENDS in text
    return text.split(QUICK_START_ENDS, 1)[0]


def readme_commands() -> list[tuple[str, str]]:
    """(command, its trailing comment) for every fenced shell line and every inline command, in order."""
    text, found = quick_start(), []
    for lang, body in re.findall(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
        if lang not in ("", "sh", "bash", "shell", "console"):
            continue  # a toml or yaml example is not a command
        for line in body.splitlines():
            command, _, comment = line.partition(" #")
            if command.strip() and not command.lstrip().startswith("#"):
                found.append((" ".join(command.split()), comment.strip()))
    fenced = [program_and_words(c) for c, _ in found]
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    for span in re.findall(r"`([^`]+)`", prose):
        span = " ".join(span.split())
        words = program_and_words(span)
        if words[0] not in PROGRAMS or len(words) < 2:
            continue  # a name (`chainsignal`), a message (`chainsignal: error: ...`), not a command
        if any(f[:len(words)] == words and len(f) > len(words) for f in fenced):
            continue  # names a command shown in full in a block (`chainsignal train`, `mlflow ui`)
        found.append((span, ""))
    return found


def program_and_words(command: str) -> list[str]:
    """The command's words, its program without the .venv/bin/ it may be written with."""
    words = command.split()
    return [words[0].removeprefix(".venv/bin/"), *words[1:]]


# --------------------------------------------------------------------------- run here for real
def sh(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=kw.pop("cwd", ROOT), **kw)


def cli_commands() -> set[str]:
    from typer.main import get_command

    from flows.cli import app

    return set(get_command(app).commands)


def run_help(out: subprocess.CompletedProcess) -> None:
    assert out.returncode == 0 and all(name in out.stdout for name in cli_commands())


def run_version(out: subprocess.CompletedProcess) -> None:
    assert out.returncode == 0 and out.stdout.startswith("chainsignal ") and "prefect " in out.stdout


def run_settings(out: subprocess.CompletedProcess) -> None:
    assert out.returncode == 0, out.stderr[-1500:]
    assert {"rpc", "storage", "train", "tracking"} <= set(json.loads(out.stdout))


def run_status(out: subprocess.CompletedProcess) -> None:  # on this test's empty data dir
    assert out.returncode == 0, out.stderr[-1500:]
    assert "no complete day" in out.stdout and "0 problem(s)" in out.stdout


def make_help() -> None:
    out = sh(["make", "help"])
    assert out.returncode == 0
    targets = {line.split("\t")[0] for line in out.stdout.splitlines()}
    used = {c.split()[1] for c, _ in readme_commands() if c.startswith("make ")}
    assert used <= targets, f"make help does not list {used - targets}"


def activate() -> None:
    out = sh(["bash", "-c", "source .venv/bin/activate && command -v chainsignal prefect mlflow"])
    assert out.returncode == 0 and out.stdout.split() == [str(ROOT / ".venv" / "bin" / p) for p in
                                                          ("chainsignal", "prefect", "mlflow")]


def make_clean(tmp: Path) -> None:
    """The Makefile's own recipe, run in a scratch copy of the checkout's top level."""
    shutil.copy(ROOT / "Makefile", tmp / "Makefile")
    for keep in (".venv", "node_modules"):
        (tmp / keep).mkdir()
    (tmp / "var" / "lake").mkdir(parents=True)
    (tmp / "var" / "mlflow.db").write_text("")
    assert sh(["make", "clean"], cwd=tmp).returncode == 0
    assert not (tmp / "var").exists() and (tmp / ".venv").is_dir() and (tmp / "node_modules").is_dir()


# chainsignal commands run together (each starts a Python process); the rest one after the other
RUN_CLI: dict[str, tuple[list[str], Callable[[subprocess.CompletedProcess], None]]] = {
    "chainsignal --help": (["--help"], run_help),
    "chainsignal --version": (["--version"], run_version),
    "chainsignal settings": (["settings"], run_settings),
    "chainsignal status --verify": (["status", "--verify"], run_status),
}
RUN: dict[str, Callable[[Path], None]] = {
    "make help": lambda tmp: make_help(),
    "source .venv/bin/activate": lambda tmp: activate(),
    "make clean": make_clean,
}


# --------------------------------------------------------------------------- exercised elsewhere
# command -> [(where, words)]: "make:<target>" is checked on what `make -n <target>` would run; a
# "file::function" on that function's string literals. words=None: the command's own words.
REGISTRY: dict[str, list[tuple[str, list[str] | None]]] = {
    "make demo": [("make:demo", [".venv/bin/chainsignal demo"])],
    ".venv/bin/chainsignal demo": [("make:demo", [".venv/bin/chainsignal demo"])],
    "make test": [("make:test", ["-m pytest"])],  # the suite this test is part of
    "pip install -c constraints.txt -e .[dev]": [("make:-B env", ["install -q -c constraints.txt -e '.[dev]'"])],
    ".venv/bin/mlflow ui --backend-store-uri sqlite:///$PWD/var/mlflow.db --port 5000": [
        ("flows/demo.py::run_demo", [".venv/bin/mlflow ui --backend-store-uri "]),  # the demo prints it
        ("tests/browser.py::mlflow_ui", ["--backend-store-uri", "--port"]),  # the e2e test serves the demo's store
    ],
    "make up": [("make:up", [".venv/bin/chainsignal up"]), (ORCHESTRATION, ["up"])],
    "export PREFECT_API_URL=http://127.0.0.1:4200/api": [(ORCHESTRATION, ["PREFECT_API_URL"])],
    "make deploy": [("make:deploy", [".venv/bin/chainsignal setup"]), (ORCHESTRATION, ["setup"])],
    "make down": [("make:down", [".venv/bin/chainsignal down"]), (ORCHESTRATION, ["down"])],
    "prefect deployment run train-lora/train-lora -p epochs=1 --watch": [(ORCHESTRATION, None)],
    "chainsignal status --verify --node": [
        ("tests/chain/test_chain_identity.py::test_status_verify_node_names_the_first_day_the_node_no_longer_serves",
         ["--verify", "--node"])],
}


def string_literals(where: str) -> set[str]:
    path, name = where.split("::")
    tree = ast.parse((ROOT / path).read_text())
    funcs = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == name]
    assert funcs, f"{where} does not exist"
    return {n.value for n in ast.walk(funcs[0]) if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def check_registered(command: str) -> None:
    for where, words in REGISTRY[command]:
        if where.startswith("make:"):
            out = sh(["make", "-n", *where[5:].split()])
            assert out.returncode == 0, out.stderr
            missing = [w for w in words or [] if w not in out.stdout]
        else:
            literals = string_literals(where)
            missing = [w for w in (words or shlex.split(command)[1:])
                       if not any(w == lit or w in lit.split() or (len(w) > 12 and w in lit) for lit in literals)]
        assert not missing, f"README command `{command}`: {where} does not hold {missing}"


# --------------------------------------------------------------------------- every command, whatever its kind
def check_cli_words(command: str) -> None:
    """A chainsignal command names a real subcommand and real options; an exported CHAINSIGNAL_* a real setting."""
    words = shlex.split(command.replace("$PWD", "PWD"))
    if words[0].endswith("chainsignal"):
        from typer.main import get_command

        from flows.cli import app

        group = get_command(app)
        sub = next((w for w in words[1:] if not w.startswith("-")), None)
        params = group.params if sub is None else group.commands[sub].params if sub in group.commands else None
        assert params is not None, f"`{command}`: no command {sub!r} in chainsignal"
        options = {o for p in params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
        unknown = [w for w in words if w.startswith("--") and w not in options]
        assert not unknown, f"`{command}`: chainsignal {sub or ''} has no option {unknown}"
    if words[0] == "export" and words[1].startswith("CHAINSIGNAL_"):
        from tasks.core.settings import Settings

        section, _, field = words[1].split("=")[0].removeprefix("CHAINSIGNAL_").lower().partition("__")
        model = Settings.model_fields[section].annotation if section in Settings.model_fields else None
        assert model is not None and field in model.model_fields, f"`{command}`: no setting {section}.{field}"


def test_every_quick_start_command_runs_is_tested_or_is_marked(tmp_path):
    commands = readme_commands()
    assert len(commands) >= 15  # the parser still finds the README's commands
    shown = {c for c, _ in commands}
    assert not (set(RUN_CLI) | set(RUN) | set(REGISTRY)) - shown, "a command below is no longer in the README"
    env = {**os.environ, "CHAINSIGNAL_STORAGE__DATA_DIR": str(tmp_path / "data")}
    running = {c: subprocess.Popen([str(BIN / "chainsignal"), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, env=env, cwd=tmp_path) for c, (args, _) in RUN_CLI.items() if c in shown}
    unexercised = []
    for command in dict.fromkeys(c for c, _ in commands):
        comment = next((m for c, m in commands if c == command and m.startswith(MARKERS)), "")
        check_cli_words(command)
        if command in RUN:
            scratch = tmp_path / f"scratch-{len(list(tmp_path.iterdir()))}"
            scratch.mkdir()
            RUN[command](scratch)
        elif command in REGISTRY:
            check_registered(command)
        elif not comment.startswith(MARKERS) and command not in RUN_CLI:
            unexercised.append(command)
    for command, proc in running.items():
        stdout, stderr = proc.communicate(timeout=120)
        RUN_CLI[command][1](subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    assert not unexercised, (f"README commands neither run here, nor in REGISTRY, nor marked "
                             f"`# needs a key: ...` / `# needs a GPU: ...`: {unexercised}")


def test_the_readme_lists_every_cli_command():
    listed = re.search(r"All commands: `chainsignal --help` \(([^)]*)\)", " ".join(quick_start().split()))
    assert listed, "the README's list of commands is gone"
    assert set(re.findall(r"`([a-z-]+)`", listed.group(1))) == cli_commands()


@pytest.mark.parametrize("line, expected", [
    ("make up        # Prefect server", ("make up", "Prefect server")),
    ("chainsignal train --epochs 3     # needs a GPU: the same flow", ("chainsignal train --epochs 3", "needs a GPU: the same flow")),
])
def test_a_fenced_line_splits_into_command_and_comment(line, expected, monkeypatch):
    import tests.test_readme as me

    monkeypatch.setattr(me, "quick_start", lambda: f"## x\n\n```\n{line}\n```\n")
    assert me.readme_commands() == [expected]
