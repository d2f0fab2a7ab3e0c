"""One prompter for training prompts and for the label candidates that evaluation scores.

Training and scoring build the prompt through the same method, so they cannot drift apart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tasks.core.labelset import LABELS

TEMPLATES_DIR = Path(__file__).parent / "templates"


@dataclass(frozen=True)
class Prompter:
    instruction: str
    prompt_input: str
    prompt_no_input: str
    response_split: str
    labels: tuple[str, ...] = LABELS
    instructions: tuple[tuple[str, str], ...] = ()  # (task, instruction) pairs

    @classmethod
    def load(cls, name: str = "alpaca") -> Prompter:
        data = json.loads((TEMPLATES_DIR / f"{name}.json").read_text())
        return cls(data["instruction"], data["prompt_input"], data["prompt_no_input"], data["response_split"],
                   instructions=tuple(data.get("instructions", {}).items()))

    def instruction_for(self, task: str) -> str:
        found = dict(self.instructions).get(task)
        if found is None:
            raise KeyError(f"no instruction for task {task!r} in the template")
        return found

    def prompt(self, instruction: str, input: str | None = None) -> str:
        """Everything the model sees before its answer."""
        if input:
            return self.prompt_input.format(instruction=instruction, input=input)
        return self.prompt_no_input.format(instruction=instruction)

    def response(self, output: str) -> str:
        """The answer as trained and as scored (a label candidate is scored exactly like this)."""
        return output
