"""Config files and jsonargparse's errors, condensed to one line for the Lightning commands.

jsonargparse reports a bad key of a subclass-mode config as a nested dump (usage, a Union of
types, a Namespace); a user needs the file, the key path, the problem and the closest valid key.
:func:`load_config_file` reads each ``--config`` first (so broken YAML names its file and line);
:func:`condense` turns jsonargparse's report into a :class:`ConfigProblem`.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from geodistill.errors import GeodistillError

SECTIONS = ("trainer", "checkpoint", "prediction_writer")
"""Config sections that are groups of options, so must be mappings."""


# --------------------------------------------------------------------------------------------
# config files and jsonargparse's errors, condensed to one line


def config_files(args: Sequence[str]) -> list[str]:
    """The ``--config``/``-c`` values of a command line, in order (later ones override)."""
    found: list[str] = []
    for i, arg in enumerate(args):
        if arg in ("--config", "-c") and i + 1 < len(args):
            found.append(args[i + 1])
        elif arg.startswith("--config="):
            found.append(arg.split("=", 1)[1])
    return found


def is_inline(value: str) -> bool:
    """Whether a ``--config`` value is a YAML string rather than a file name."""
    return "\n" in value or value.lstrip().startswith(("{", "[")) or ": " in value


def load_config_file(path: str) -> dict[str, Any]:
    """Read one config file, refusing a missing file, broken YAML or a non-mapping in one line."""
    file = Path(path)
    if not file.exists():
        raise GeodistillError("no such config file (--config)", path)
    if file.is_dir():
        raise GeodistillError("is a folder, not a YAML config file (--config)", path)
    try:
        loaded = yaml.safe_load(file.read_text())
    except UnicodeDecodeError as error:
        raise GeodistillError("not a YAML config file (not text)", path) from error
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"{path}, line {mark.line + 1}" if mark else path
        problem = error.problem or "cannot parse"
        problem += f" ({error.context})" if error.context else ""
        raise GeodistillError(f"{where}: broken YAML: {problem}") from error
    except yaml.YAMLError as error:
        raise GeodistillError(f"broken YAML: {error}", path) from error
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise GeodistillError(
            "a config must be a YAML mapping of keys (trainer:, model:, data:, ...), "
            f"not a {type(loaded).__name__}",
            path,
        )
    for section in SECTIONS:  # jsonargparse lets e.g. 'trainer: 5' through to a crash
        value = loaded.get(section)
        if value is not None and not isinstance(value, dict):
            raise GeodistillError(
                f"{section}: expected a mapping of {section} options, got {value!r}", path
            )
    return loaded


_PARSER_KEY = re.compile(r'^Parser key "([^"]+)":\s*(.*)$')
_GIVEN_CLASS = re.compile(r"^- Problem with given class_path '([^']+)':$")
_NOISE = (
    "Does not validate against any of the Union subtypes",
    "Subtypes:",
    "Errors:",
    "Given value type:",
    "- Expected a <class 'NoneType'>",
    "Subclass types expect one of:",
    "- a class path",
    "- a dict ",
    "Expected a <class 'NoneType'>",
)
_CLASS_IMPORT = (
    re.compile(r"^module '[\w.]+' has no attribute '\w+'"),
    re.compile(r"^No module named '[\w.]+'"),
    re.compile(r"^Expected a dot import path string: (\S+)"),
    re.compile(r"does not correspond to a subclass"),
)

Step = tuple[str, str]
"""One level of a jsonargparse error: ``("key", name)`` or ``("class", class path)``."""


@dataclasses.dataclass
class _Leaf:
    steps: list[Step]
    text: str


def _leaves(message: str) -> tuple[list[_Leaf], dict[tuple[Step, ...], str]]:
    """The innermost sentences of jsonargparse's indented report, with the steps leading there
    (keys and given class paths), and the value given at each step."""
    stack: list[tuple[int, Step]] = []
    leaves: list[_Leaf] = []
    given: dict[tuple[Step, ...], str] = {}
    for raw in message.splitlines():
        line = raw.strip()
        if not line:
            continue
        indent = len(raw) - len(raw.lstrip())
        while stack and stack[-1][0] >= indent:
            stack.pop()
        steps = [step for _, step in stack]
        if match := _PARSER_KEY.match(line):
            stack.append((indent, ("key", match[1])))
            if match[2]:
                leaves.append(_Leaf([*steps, ("key", match[1])], match[2]))
        elif match := _GIVEN_CLASS.match(line):
            stack.append((indent, ("class", match[1])))
        elif line.startswith("Given value:"):
            given[tuple(steps)] = line.removeprefix("Given value:").strip()
        elif not line.startswith(_NOISE):
            leaves.append(_Leaf(steps, line.removeprefix("- ")))
    return leaves, given


def short_types(text: str) -> str:
    """``<class 'int'>`` -> ``int``."""
    return re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", text)


def _import(class_path: str) -> type | None:
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(__import__(module, fromlist=[name]), name)
    except Exception:  # noqa: BLE001 - any failure means: not importable
        return None


def _parameters(cls: type | None) -> list[str]:
    """The keys a class accepts in a config: its init parameters (or dataclass fields)."""
    if cls is None:
        return []
    if dataclasses.is_dataclass(cls):
        return [f.name for f in dataclasses.fields(cls)]
    try:
        signature = inspect.signature(cls.__init__)
    except (TypeError, ValueError):
        return []
    kinds = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return [n for n, p in signature.parameters.items() if n != "self" and p.kind not in kinds]


def _field_class(cls: type | None, name: str) -> type | None:
    """The class (e.g. a dataclass) a parameter of ``cls`` takes, unwrapping ``X | None``."""
    if cls is None:
        return None
    try:
        hints = typing.get_type_hints(cls if dataclasses.is_dataclass(cls) else cls.__init__)
    except Exception:  # noqa: BLE001 - unresolvable annotations: no suggestion
        return None
    hint = hints.get(name)
    for candidate in (hint, *typing.get_args(hint)):
        if isinstance(candidate, type) and candidate is not type(None):
            return candidate
    return None


def unknown_nested_key(
    config: dict[str, Any], bases: dict[str, type | None]
) -> tuple[list[str], str] | None:
    """The first key of a config file that a dataclass argument does not have (a data domain's
    ``val_fracton``, a source's ``lables``), as ``(key path, problem)``.

    jsonargparse drops such keys silently, so a typo there would change nothing and say nothing.
    """

    def walk(value: Any, cls: type, keys: list[str]) -> tuple[list[str], str] | None:
        fields = _parameters(cls)
        for key, item in value.items():
            if key not in fields:
                return [*keys, str(key)], "unknown key" + _did_you_mean(str(key), fields)
            inner = _field_class(cls, key)
            if inner is not None and dataclasses.is_dataclass(inner) and isinstance(item, dict):
                found = walk(item, inner, [*keys, str(key)])
                if found:
                    return found
        return None

    for section, base in bases.items():
        block = config.get(section)
        if not isinstance(block, dict) or not isinstance(block.get("init_args"), dict):
            continue
        cls = _import(str(block["class_path"])) if "class_path" in block else base
        for key, item in block["init_args"].items():
            inner = _field_class(cls, key)
            if inner is not None and dataclasses.is_dataclass(inner) and isinstance(item, dict):
                found = walk(item, inner, [section, "init_args", str(key)])
                if found:
                    return found
    return None


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def _suggest_class(bad: str, base: type | None) -> str:
    """`` (did you mean PATH?)`` for the subclass of ``base`` whose name is closest to ``bad``'s
    last part; the path is the package's public one where the package exports the class."""
    if base is None:
        return ""
    paths: dict[str, str] = {}
    pending = [base]
    while pending:
        cls = pending.pop()
        pending += cls.__subclasses__()
        package = cls.__module__.rsplit(".", 1)[0]
        public = _import(f"{package}.{cls.__name__}") is cls
        paths[cls.__name__] = f"{package if public else cls.__module__}.{cls.__name__}"
    close = difflib.get_close_matches(bad.rpartition(".")[2], list(paths), n=1, cutoff=0.6)
    return f" (did you mean {paths[close[0]]}?)" if close else ""


@dataclasses.dataclass
class ConfigProblem:
    """One config mistake: the key path as the user writes it, and the problem in words."""

    keys: list[str]
    problem: str
    whole_config: bool = False
    """A problem of the config as a whole (a missing section), not of one key."""


def _follow(
    steps: Sequence[Step], config: dict[str, Any], bases: dict[str, type]
) -> tuple[list[str], type | None]:
    """The key path of ``steps`` as the user wrote it (``init_args`` only where the config has
    it, or for a class on the command line), and the class whose keys the last step takes."""
    keys: list[str] = []
    node: Any = config
    cls: type | None = None
    for kind, value in steps:
        if kind == "key":
            keys += value.split(".")
            for part in value.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            cls = bases.get(value) if len(keys) == 1 else _field_class(cls, value)
        else:
            cls = _import(value)
            wrote_init_args = isinstance(node, dict) and "init_args" in node
            if wrote_init_args or (node is None and not dataclasses.is_dataclass(cls)):
                keys.append("init_args")
                node = node.get("init_args") if isinstance(node, dict) else None
    return keys, cls


def _expected(texts: Sequence[str], given: str) -> str:
    """``expected int, got abc`` from jsonargparse's ``Expected a <class 'int'>...`` lines (one
    per accepted type); a Literal lists its choices and the closest one."""
    types, got = [], given
    for text in texts:
        kind, _, value = short_types(text.removeprefix("Expected a ")).partition(". Got value: ")
        types.append(kind)
        got = value or got
    literal = re.fullmatch(r"(?:typing\.)?Literal\[(.*)\]", types[0]) if len(types) == 1 else None
    if literal is not None:
        choices = re.findall(r"'([^']*)'", literal[1])
        return f"expected one of {', '.join(choices)}, got {got}" + _did_you_mean(got, choices)
    listed = " or ".join(dict.fromkeys(types))
    return f"expected {listed}, got {got}" if got else f"expected {listed}"


def condense(
    message: str, config: dict[str, Any], bases: dict[str, type], options: Sequence[str]
) -> ConfigProblem | None:
    """The innermost useful sentence of a jsonargparse error, with its key path.

    ``config`` is the merged user config (to follow ``init_args`` the way the user wrote it),
    ``bases`` the base class of each subclass key (model, data), ``options`` the parser's keys.
    """
    leaves, given = _leaves(message)
    if not leaves:
        return None
    deepest = max(len(leaf.steps) for leaf in leaves)
    chosen = [leaf for leaf in leaves if len(leaf.steps) == deepest]
    leaf, text = chosen[0], chosen[0].text
    keys, cls = _follow(leaf.steps, config, bases)
    if match := re.match(r"^Option '([^']+)' is not accepted", text):
        keys.append(match[1])
        return ConfigProblem(keys, "unknown key" + _did_you_mean(match[1], _parameters(cls)))
    if match := re.match(r"^Group '([^']+)' does not accept option '([^']+)'", text):
        keys += [match[1], match[2]]
        inner = _parameters(_field_class(cls, match[1]))
        return ConfigProblem(keys, "unknown key" + _did_you_mean(match[2], inner))
    if match := re.match(r"^Subcommand '\w+' does not accept option '([^']+)'", text):
        keys += match[1].split(".")
        return ConfigProblem(keys, "unknown key" + _did_you_mean(match[1], options))
    if match := re.match(r"^the following arguments are required: (.+)$", text):
        missing = [name.strip() for name in match[1].split(",")]
        if not keys:  # top level: "fit.data, fit.model"
            listed = ", ".join(f"{name.partition('.')[2] or name}:" for name in missing)
            return ConfigProblem([], f"the config needs {listed}", whole_config=True)
        return ConfigProblem([*keys, missing[0]], "required key is missing")
    if any(pattern.search(text) for pattern in _CLASS_IMPORT):
        bad = next((v for k, v in reversed(leaf.steps) if k == "class"), None)
        if bad is None and (match := re.search(r"string: (\S+)", text)):
            bad = match[1]
        keys = [*normal_keys(keys), "class_path"]
        base = bases.get(keys[0]) if len(keys) == 2 else None
        return ConfigProblem(keys, f"unknown class {bad}" + _suggest_class(bad or "", base))
    if match := re.match(r"^Not a valid subclass of (\w+)", text):
        value = given.get(tuple(leaf.steps), "")
        return ConfigProblem(
            keys, f"expected a mapping with class_path and init_args of a {match[1]}, got {value}"
        )
    if all(other.text.startswith("Expected a ") for other in chosen):
        texts = [other.text for other in chosen]
        return ConfigProblem(keys, _expected(texts, given.get(tuple(leaf.steps), "")))
    return ConfigProblem(keys, short_types(text).rstrip("."))


def normal_keys(keys: Sequence[str]) -> list[str]:
    return [k for k in keys if k != "init_args"]


def command_line_option(keys: Sequence[str], args: Sequence[str]) -> str | None:
    """The command-line option (as typed) that set the key path, if one did."""
    wanted = normal_keys(keys)
    best: str | None = None
    for arg in args:
        if not arg.startswith("--"):
            continue
        name = arg[2:].split("=", 1)[0]
        parts = normal_keys(name.split("."))
        if (
            parts
            and wanted[: len(parts)] == parts
            and (best is None or len(parts) > len(normal_keys(best[2:].split("."))))
        ):
            best = "--" + name
    return best


def config_source(keys: Sequence[str], configs: dict[str, dict[str, Any]]) -> str | None:
    """The config file that holds the deepest part of the key path (the last file on a tie)."""
    best, depth = None, -1
    for path, config in configs.items():
        node: Any = config
        reached = 0
        for key in keys:
            if not isinstance(node, dict) or key not in node:
                break
            node, reached = node[key], reached + 1
        if reached >= depth and reached > 0:
            best, depth = path, reached
    return best or (list(configs)[-1] if configs else None)


def merge_configs(configs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Later config files override earlier ones, key by key."""

    def merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        out = dict(a)
        for key, value in b.items():
            both = isinstance(out.get(key), dict) and isinstance(value, dict)
            out[key] = merge(out[key], value) if both else value
        return out

    merged: dict[str, Any] = {}
    for config in configs.values():
        merged = merge(merged, config)
    return merged


# --------------------------------------------------------------------------------------------
# the CLI
