"""Write docs/settings.md from the Settings model, so the settings reference cannot go stale.

    .venv/bin/python docs/gen_settings.py          # rewrite docs/settings.md
    .venv/bin/python docs/gen_settings.py --check  # exit 1 if docs/settings.md is out of date

Names, types, defaults and constraints come from the pydantic model; each field's meaning comes from
its comment in ``tasks/core/settings.py`` (the comment lines directly above the field, then the
trailing ``# ...`` on its line), read with :mod:`tokenize` and :mod:`ast`. A field without a comment
gets an empty meaning: write the comment in the settings module, not here.
"""

from __future__ import annotations

import ast
import io
import json
import re
import sys
import tokenize
import typing
from datetime import date
from enum import Enum
from pathlib import Path

import annotated_types
from pydantic import BaseModel, SecretStr

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tasks.core import settings as settings_module  # noqa: E402  (the repo goes on sys.path first)

OUT = ROOT / "docs" / "settings.md"
REGENERATE = ".venv/bin/python docs/gen_settings.py"
_RULE = re.compile(r"^-{5,}\s*(.*)$")  # "# ------ chain (JSON-RPC)": the section rulers of the module (after the #)


def _comments(source: str) -> tuple[dict[int, str], dict[int, str]]:
    """(full-line comments, trailing comments) by line number."""
    full: dict[int, str] = {}
    trailing: dict[int, str] = {}
    code_lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            line = tok.start[0]
            (trailing if line in code_lines else full)[line] = tok.string.lstrip("#").strip()
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENCODING):
            code_lines.update(range(tok.start[0], tok.end[0] + 1))
    return full, trailing


def _field_notes(source: str) -> tuple[dict[str, dict[str, dict[str, str]]], dict[str, str]]:
    """{class name: {field: {"meaning", "annotation"}}} and {class name: title of the module section it sits in}."""
    full, trailing = _comments(source)
    tree = ast.parse(source)
    notes: dict[str, dict[str, dict[str, str]]] = {}
    titles: dict[str, str] = {}
    for cls in tree.body:
        if not isinstance(cls, ast.ClassDef):
            continue
        for line in range(cls.lineno - 1, 0, -1):  # the nearest ruler above the class names its section
            ruler = _RULE.match(full.get(line, ""))
            if ruler:
                titles[cls.name] = ruler.group(1).strip()
                break
        fields: dict[str, dict[str, str]] = {}
        for node in cls.body:
            if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
                continue
            above: list[str] = []
            line = node.lineno - 1
            while line in full and not _RULE.match(full[line]):
                above.insert(0, full[line])
                line -= 1
            after = [trailing[n] for n in range(node.lineno, node.end_lineno + 1) if n in trailing]
            fields[node.target.id] = {
                "meaning": " ".join(above + after),
                "annotation": ast.get_source_segment(source, node.annotation) or "",
            }
        notes[cls.name] = fields
    return notes, titles


_BOUNDS = (
    (annotated_types.Gt, "gt", ">"), (annotated_types.Ge, "ge", ">="),
    (annotated_types.Lt, "lt", "<"), (annotated_types.Le, "le", "<="),
)


def _type(annotation: str, field: typing.Any) -> str:
    """The field's type for a reader: no ``|`` (it would split a table cell), allowed values spelt out."""
    optional = annotation.endswith("| None")
    core = annotation.removesuffix("| None").strip()
    args = typing.get_args(field.annotation)
    literal = next((a for a in (field.annotation, *args) if typing.get_origin(a) is typing.Literal), None)
    if literal is not None and core.startswith("Literal"):
        text = "one of " + ", ".join(f"`{v}`" for v in typing.get_args(literal))
    else:
        text = f"`{core}`"
    if optional:
        text += ", or unset"
    bounds = []
    for meta in field.metadata:
        for kind, attr, sign in _BOUNDS:
            if isinstance(meta, kind):
                bounds.append(f"{sign} {getattr(meta, attr)}")
    if bounds:
        text += " (" + ", ".join(bounds) + ")"
    return text


def _value(value: typing.Any) -> typing.Any:
    if isinstance(value, Path):
        return str(value.relative_to(ROOT)) if value.is_absolute() and value.is_relative_to(ROOT) else str(value)
    if isinstance(value, (date, Enum)):
        return str(value)
    if isinstance(value, tuple | list):
        return [_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _value(v) for k, v in value.items()}
    return value


def _default(field: typing.Any) -> str:
    if field.default is None:
        return "unset"
    if isinstance(field.default, SecretStr):
        return "(secret)"
    value = _value(field.default)
    text = value if isinstance(value, str) else json.dumps(value)
    return f"`{text}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _intro() -> str:
    """The settings module's docstring, in markdown."""
    doc = (settings_module.__doc__ or "").strip()
    doc = doc.replace("``", "`")
    doc = re.sub(r":meth:`([^`]+)`", r"`\1`", doc)
    return doc


def render() -> str:
    source = Path(settings_module.__file__).read_text()
    notes, titles = _field_notes(source)
    prefix = settings_module.ENV_PREFIX
    out = [
        "# Settings reference",
        "",
        "<!-- GENERATED by docs/gen_settings.py from tasks/core/settings.py: do not edit by hand. -->",
        f"Generated from `tasks/core/settings.py`; regenerate with `{REGENERATE}` "
        "(`tests/test_docs.py` fails when this page and the model disagree).",
        "",
        _intro(),
        "",
        "Each setting is written `section.field` in `chainsignal.toml` (`[section]` then `field = ...`) and "
        f"`{prefix}<SECTION>__<FIELD>` in the environment; list and table values are given as JSON there "
        f"(`{prefix}PRICES__ASSETS='[\"ETH\"]'`). A mistyped `{prefix}*` variable is refused with the nearest "
        "real name. `chainsignal settings` prints the resolved values, secrets hidden.",
        "",
    ]
    for section, info in settings_module.Settings.model_fields.items():
        model: type[BaseModel] = info.annotation
        fields = notes.get(model.__name__, {})
        title = titles.get(model.__name__)
        out += [f"## {section}" + (f": {title}" if title and title != section else ""), ""]
        out += ["| setting | env variable | type | default | meaning |", "|---|---|---|---|---|"]
        for name, field in model.model_fields.items():
            note = fields.get(name, {"meaning": "", "annotation": str(field.annotation)})
            env = f"{prefix}{section.upper()}__{name.upper()}"
            row = [f"`{section}.{name}`", f"`{env}`", _type(note["annotation"], field), _default(field), note["meaning"]]
            out.append("| " + " | ".join(_cell(c) for c in row) + " |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT.relative_to(ROOT)} is out of date: run {REGENERATE}")
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
