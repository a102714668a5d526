"""The experiment file of ``geodistill compare``: read, checked key by key, before any run.

Every mistake is one :class:`~geodistill.errors.GeodistillError` naming the experiment file and
the key (``variants.distilled.model...``, ``budgets[1].train_limt``), with the closest valid
name where there is one, so a typo costs nothing but a rerun of the command.
"""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from geodistill.errors import GeodistillError
from geodistill.metrics import PER_CLASS_KEYS, SUMMARY_KEYS

TOP_KEYS = (
    "base",
    "output",
    "seeds",
    "metric",
    "baseline",
    "budgets",
    "stages",
    "variants",
    "overrides",
    "tests",
)
"""The keys an experiment file may have."""

STAGE_KEYS = ("overrides", "per_budget")
BUDGET_KEYS = ("name", "train_limit", "train_ratio", "domain", "overrides")
BUDGET_DOMAINS = ("fine", "coarse")
CONFIG_SECTIONS = (
    "seed_everything",
    "trainer",
    "model",
    "data",
    "checkpoint",
    "prediction_writer",
    "optimizer",
    "lr_scheduler",
)
"""Top-level sections of a ``geodistill fit`` config that overrides may set (jsonargparse lets an
unknown top-level key through silently, so they are checked here)."""

STAGES_FOLDER = "stages"
"""Where stage runs go inside the output folder (so no variant may take this name)."""

DEFAULT_BUDGET = "base"
"""The budget name of an experiment without ``budgets``: the base config's data as it is."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_REFERENCE = re.compile(r"\$\{([^}]*)\}")
_STAGE_REFERENCE = re.compile(r"^stages\.([^.]+)\.checkpoint$")
SEED_REFERENCE = "seed"
"""``${seed}`` in an experiment file: the run's seed."""


@dataclass(frozen=True)
class Budget:
    """A label budget: a short name (run folder, table) and the data override it stands for."""

    name: str
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StagePlan:
    """A run whose checkpoint variants use (a teacher), once per seed (or budget and seed)."""

    name: str
    overrides: dict[str, Any]
    per_budget: bool = False
    needs: tuple[str, ...] = ()
    """Earlier stages this one's overrides refer to."""


@dataclass
class Experiment:
    """A checked experiment file: what to run and how to summarise it."""

    path: Path
    base: dict[str, Any]
    output: str | None
    seeds: list[int]
    metric: str
    baseline: str
    budgets: list[Budget]
    stages: dict[str, StagePlan]
    variants: dict[str, dict[str, Any]]
    overrides: dict[str, Any] = field(default_factory=dict)
    needs: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Per variant, the stages its overrides refer to."""
    tests: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Extra test sets, by name: overrides (of the data, mostly) under which every run's best
    checkpoint is tested again, e.g. held-out chips of the old domain."""


def select_variants(experiment: Experiment, names: Sequence[str]) -> Experiment:
    """The experiment with only the variants ``names`` (and the stages they use), e.g. to run a
    few methods of a recipe; the baseline must be among them (differences are paired to it)."""
    unknown = [name for name in names if name not in experiment.variants]
    if unknown:
        raise GeodistillError(
            f"--variants: unknown variant(s) {', '.join(unknown)}; the experiment has "
            + ", ".join(experiment.variants),
            experiment.path,
        )
    if experiment.baseline not in names:
        raise GeodistillError(
            f"--variants must include the baseline {experiment.baseline} (every difference is "
            "paired with it)",
            experiment.path,
        )
    variants = {name: overrides for name, overrides in experiment.variants.items() if name in names}
    used: set[str] = set()
    pending = [stage for name in variants for stage in experiment.needs.get(name, ())]
    while pending:
        stage = pending.pop()
        if stage not in used:
            used.add(stage)
            pending.extend(experiment.stages[stage].needs)
    return replace(
        experiment,
        variants=variants,
        stages={name: plan for name, plan in experiment.stages.items() if name in used},
        needs={name: experiment.needs[name] for name in variants if name in experiment.needs},
    )


# --------------------------------------------------------------------------------------------
# merging and references


def deep_merge(base: Any, override: Any) -> Any:
    """``override`` over ``base``: mappings merge key by key, anything else (lists included)
    replaces; neither input is changed."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = copy.deepcopy(base)
        for key, value in override.items():
            merged[key] = deep_merge(base.get(key), value) if key in base else copy.deepcopy(value)
        return merged
    return copy.deepcopy(override)


def _walk(value: Any, keys: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], str]]:
    """Every string in a nested config with the key path to it."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _walk(item, (*keys, str(key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _walk(
                item, (*keys[:-1], f"{keys[-1]}[{index}]") if keys else (f"[{index}]",)
            )
    elif isinstance(value, str):
        yield keys, value


def stage_references(value: Any, where: str, path: Path) -> list[tuple[str, str]]:
    """``(key path, stage name)`` of every ``${stages.NAME.checkpoint}`` in ``value``; ``${seed}``
    (the run's seed, e.g. in a per-seed data path) is allowed; any other ``${...}`` is refused (it
    would reach the run's config as literal text)."""
    found = []
    for keys, text in _walk(value):
        for match in _REFERENCE.finditer(text):
            key = ".".join((where, *keys))
            if match[1].strip() == SEED_REFERENCE:
                continue
            stage = _STAGE_REFERENCE.match(match[1].strip())
            if stage is None:
                raise _error(
                    key,
                    f"unknown reference ${{{match[1]}}}: only ${{stages.NAME.checkpoint}} and "
                    "${seed}",
                    path,
                )
            found.append((key, stage[1]))
    return found


def substitute_seed(value: Any, seed: int) -> Any:
    """``value`` with each ``${seed}`` replaced by ``seed``."""
    if isinstance(value, dict):
        return {key: substitute_seed(item, seed) for key, item in value.items()}
    if isinstance(value, list):
        return [substitute_seed(item, seed) for item in value]
    if isinstance(value, str):
        return _REFERENCE.sub(
            lambda match: str(seed) if match[1].strip() == SEED_REFERENCE else match[0], value
        )
    return value


def substitute(value: Any, checkpoints: dict[str, str]) -> Any:
    """``value`` with each ``${stages.NAME.checkpoint}`` replaced by ``checkpoints[NAME]``."""
    if isinstance(value, dict):
        return {key: substitute(item, checkpoints) for key, item in value.items()}
    if isinstance(value, list):
        return [substitute(item, checkpoints) for item in value]
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            stage = _STAGE_REFERENCE.match(match[1].strip())
            return checkpoints[stage[1]] if stage else match[0]

        return _REFERENCE.sub(replace, value)
    return value


# --------------------------------------------------------------------------------------------
# reading and checking


def _error(key: str, problem: str, path: Path) -> GeodistillError:
    return GeodistillError(f"{key}: {problem}", path)


def _closest(word: str, choices: Sequence[str]) -> str:
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {match[0]}?)" if match else ""


def _unknown_keys(given: dict[str, Any], known: Sequence[str], where: str, path: Path) -> None:
    for key in given:
        if key not in known:
            name = f"{where}.{key}" if where else str(key)
            raise _error(
                name, f"unknown key{_closest(str(key), known)}; expected {', '.join(known)}", path
            )


def _mapping(value: Any, key: str, path: Path, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _error(key, f"expected a mapping of {what}, got {value!r}", path)
    return value


def _check_name(name: Any, key: str, path: Path) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise _error(
            key,
            f"{name!r} cannot name a run folder: use letters, digits and _ . + - "
            "(starting with a letter or digit)",
            path,
        )
    return name


def _check_sections(overrides: dict[str, Any], key: str, path: Path) -> None:
    _unknown_keys(overrides, CONFIG_SECTIONS, key, path)


def read_yaml(path: Path) -> Any:
    """The YAML document in ``path``; a missing file or broken YAML is one line naming it."""
    if not path.exists():
        raise GeodistillError("no such experiment file (--config)", path)
    if path.is_dir():
        raise GeodistillError("is a folder, not a YAML experiment file (--config)", path)
    try:
        return yaml.safe_load(path.read_text())
    except UnicodeDecodeError as error:
        raise GeodistillError("not a YAML experiment file (not text)", path) from error
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"{path}, line {mark.line + 1}" if mark else str(path)
        raise GeodistillError(f"{where}: broken YAML: {error.problem or 'cannot parse'}") from error
    except yaml.YAMLError as error:
        raise GeodistillError(f"broken YAML: {error}", path) from error


def _load_base(value: Any, path: Path) -> dict[str, Any]:
    if value is None:
        raise _error(
            "base",
            "missing: the 'geodistill fit' config every run starts from (path or mapping)",
            path,
        )
    if isinstance(value, dict):
        return copy.deepcopy(value)
    if not isinstance(value, str):
        raise _error("base", f"expected a config file path or a mapping, got {value!r}", path)
    from geodistill.cli.config_errors import load_config_file  # the fit config's own reader

    file = path.parent / value
    if not file.exists():
        hint = f" (paths are relative to the experiment file; did you mean {Path(value).name}?)"
        hint = hint if Path(value).exists() and (path.parent / Path(value).name).exists() else ""
        raise _error("base", f"no such config file {file}{hint}", path)
    return load_config_file(str(file))


def _seeds(value: Any, path: Path) -> list[int]:
    if value is None:
        raise _error("seeds", "missing: give the seeds to run, e.g. [0, 1, 2]", path)
    if not isinstance(value, list) or not value:
        raise _error("seeds", f"expected a non-empty list of integers, got {value!r}", path)
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value):
        raise _error("seeds", f"seeds must be integers >= 0, got {value!r}", path)
    if len(set(value)) != len(value):
        raise _error("seeds", f"a seed is listed twice: {value!r}", path)
    return list(value)


def _metric(value: Any, base: dict[str, Any], path: Path) -> str:
    if value is None:
        return "test/mIoU"
    if not isinstance(value, str):
        raise _error("metric", f"expected a test metric name like test/mIoU, got {value!r}", path)
    name = value.removeprefix("test/")
    classes = _data_args(base).get("classes")
    known = list(SUMMARY_KEYS)
    if isinstance(classes, list):
        known += [f"{prefix}/{c}" for prefix in PER_CLASS_KEYS for c in classes]
        if name not in known:
            raise _error(
                "metric",
                f"unknown test metric {value!r}{_closest(name, known)}; e.g. "
                + ", ".join(f"test/{k}" for k in SUMMARY_KEYS),
                path,
            )
    return f"test/{name}"


def _data_args(config: dict[str, Any]) -> dict[str, Any]:
    data = config.get("data")
    if not isinstance(data, dict):
        return {}
    args = data.get("init_args")
    return args if isinstance(args, dict) else {}


def _budget(entry: Any, index: int, base: dict[str, Any], path: Path) -> Budget:
    key = f"budgets[{index}]"
    if not isinstance(entry, dict):
        raise _error(
            key,
            f"expected a mapping like {{train_limit: 2}}, {{train_ratio: 0.1}} or "
            f"{{name: few, overrides: {{...}}}}, got {entry!r}",
            path,
        )
    _unknown_keys(entry, BUDGET_KEYS, key, path)
    limit, ratio = entry.get("train_limit"), entry.get("train_ratio")
    overrides = _mapping(entry.get("overrides"), f"{key}.overrides", path, "config overrides")
    _check_sections(overrides, f"{key}.overrides", path)
    domain = entry.get("domain", "fine")
    if domain not in BUDGET_DOMAINS:
        raise _error(f"{key}.domain", f"expected one of {', '.join(BUDGET_DOMAINS)}", path)
    if limit is not None and ratio is not None:
        raise _error(key, "set train_limit or train_ratio, not both", path)
    if limit is None and ratio is None and not overrides:
        raise _error(key, "give train_limit, train_ratio or overrides", path)
    name = entry.get("name")
    shorthand: dict[str, Any] = {}
    if limit is not None or ratio is not None:
        if limit is not None and (
            not isinstance(limit, int) or isinstance(limit, bool) or limit < 1
        ):
            raise _error(f"{key}.train_limit", f"expected an integer >= 1, got {limit!r}", path)
        if ratio is not None and (
            not isinstance(ratio, int | float) or isinstance(ratio, bool) or not 0 < ratio <= 1
        ):
            raise _error(f"{key}.train_ratio", f"expected a number in (0, 1], got {ratio!r}", path)
        if domain not in _data_args(base):
            raise _error(
                f"{key}.domain",
                f"the base config has no data.init_args.{domain} domain to limit",
                path,
            )
        default = f"limit{limit}" if limit is not None else f"ratio{ratio:g}"
        name = name or (default if domain == "fine" else f"{domain}-{default}")
        # The other key is cleared, so a base config's own limit never conflicts with it.
        shorthand = {"data": {"init_args": {domain: {"train_limit": limit, "train_ratio": ratio}}}}
    elif name is None:
        raise _error(f"{key}.name", "a budget given by overrides needs a name", path)
    return Budget(_check_name(name, f"{key}.name", path), deep_merge(shorthand, overrides))


def load_experiment(path: str | Path) -> Experiment:
    """Read and check an experiment file (see ``docs/compare.md``); nothing runs or is written."""
    path = Path(path)
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise GeodistillError(
            "an experiment must be a YAML mapping (base:, seeds:, variants:, ...), "
            f"not a {type(raw).__name__}",
            path,
        )
    _unknown_keys(raw, TOP_KEYS, "", path)
    base = _load_base(raw.get("base"), path)
    if not isinstance(base.get("data"), dict):
        raise _error("base", "the config has no data: section", path)
    output = raw.get("output")
    if output is not None and not isinstance(output, str):
        raise _error("output", f"expected a folder path, got {output!r}", path)
    seeds = _seeds(raw.get("seeds"), path)
    metric = _metric(raw.get("metric"), base, path)
    common = _mapping(raw.get("overrides"), "overrides", path, "config overrides")
    _check_sections(common, "overrides", path)

    raw_variants = raw.get("variants")
    if not isinstance(raw_variants, dict) or not raw_variants:
        raise _error(
            "variants",
            "missing or empty: a mapping of variant names to overrides of base, e.g. "
            "{fine_only: {}}",
            path,
        )
    variants: dict[str, dict[str, Any]] = {}
    for name, overrides in raw_variants.items():
        key = f"variants.{name}"
        _check_name(name, key, path)
        if name == STAGES_FOLDER:
            raise _error(
                key, f"'{STAGES_FOLDER}' is the stage runs' folder: rename the variant", path
            )
        variants[name] = _mapping(overrides, key, path, "config overrides")
        _check_sections(variants[name], key, path)
    baseline = raw.get("baseline", next(iter(variants)))
    if baseline not in variants:
        raise _error(
            "baseline",
            f"{baseline!r} is not a variant{_closest(str(baseline), list(variants))}; "
            f"variants: {', '.join(variants)}",
            path,
        )

    stages: dict[str, StagePlan] = {}
    for name, spec in _mapping(raw.get("stages"), "stages", path, "stage names").items():
        key = f"stages.{name}"
        _check_name(name, key, path)
        spec = _mapping(spec, key, path, "stage settings (overrides:, per_budget:)")
        _unknown_keys(spec, STAGE_KEYS, key, path)
        overrides = _mapping(spec.get("overrides"), f"{key}.overrides", path, "config overrides")
        _check_sections(overrides, f"{key}.overrides", path)
        per_budget = spec.get("per_budget", False)
        if not isinstance(per_budget, bool):
            raise _error(f"{key}.per_budget", f"expected true or false, got {per_budget!r}", path)
        needs = []
        for ref_key, stage in stage_references(overrides, f"{key}.overrides", path):
            if stage not in stages:
                later = " (a stage may use earlier stages only)" if stage in raw["stages"] else ""
                raise _error(
                    ref_key, f"unknown stage {stage!r}{_closest(stage, list(stages))}{later}", path
                )
            if stages[stage].per_budget and not per_budget:
                raise _error(
                    ref_key,
                    f"stage {stage!r} runs per budget, so {name!r} must too (per_budget: true)",
                    path,
                )
            needs.append(stage)
        stages[name] = StagePlan(name, overrides, per_budget, tuple(dict.fromkeys(needs)))

    needs_of: dict[str, tuple[str, ...]] = {}
    for name, overrides in variants.items():
        refs = stage_references(overrides, f"variants.{name}", path)
        for ref_key, stage in refs:
            if stage not in stages:
                choices = list(stages)
                known = f"; stages: {', '.join(choices)}" if choices else "; no stages: defined"
                raise _error(
                    ref_key, f"unknown stage {stage!r}{_closest(stage, choices)}{known}", path
                )
        needs_of[name] = tuple(dict.fromkeys(stage for _, stage in refs))
    for where, value in (("overrides", common), ("base", base)):
        if refs := stage_references(value, where, path):
            raise _error(
                refs[0][0], "stage checkpoints can be used in variants and stages only", path
            )

    raw_budgets = raw.get("budgets")
    if raw_budgets is not None and not isinstance(raw_budgets, list):
        raise _error("budgets", f"expected a list of budgets, got {raw_budgets!r}", path)
    budgets = [_budget(entry, i, base, path) for i, entry in enumerate(raw_budgets or [])]
    budgets = budgets or [Budget(DEFAULT_BUDGET)]
    names = [b.name for b in budgets]
    for index, name in enumerate(names):
        if names.index(name) != index:
            raise _error(f"budgets[{index}]", f"the budget name {name!r} is used twice", path)
    tests: dict[str, dict[str, Any]] = {}
    for name, overrides in _mapping(raw.get("tests"), "tests", path, "test set names").items():
        key = f"tests.{name}"
        _check_name(name, key, path)
        if name in ("test", "val", "train"):
            raise _error(key, f"{name!r} names a metric prefix already: rename the test set", path)
        tests[name] = _mapping(overrides, key, path, "config overrides")
        _check_sections(tests[name], key, path)
        if refs := stage_references(tests[name], key, path):
            raise _error(refs[0][0], "a test set cannot use stage checkpoints", path)
    return Experiment(
        path=path,
        base=base,
        output=output,
        seeds=seeds,
        metric=metric,
        baseline=baseline,
        budgets=budgets,
        stages=stages,
        variants=variants,
        overrides=common,
        needs=needs_of,
        tests=tests,
    )
