"""Command-line overrides composed before Hydra runs, so a bad one is one line naming it.

Hydra reports a wrong type, an unknown key or an unknown group option over four to twenty lines,
and it accepts two mistakes without a word: an unknown option of an ``optional`` group
(``experiment=nope`` runs with no experiment) and an added key that nothing reads (``+nosuchkey=1``,
``+experiment/<table>/methodz=x``). The entry points first compose the command line here, with
Hydra's own parser and composer, and turn what Hydra or OmegaConf raises into ``BadOverride``: a
``ValueError``, so ``errors.reported`` prints it as one ``error:`` line (exit status 2) and the debug
switch shows the whole chain.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import itertools
import math
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hydra.core.object_type import ObjectType
from hydra.errors import HydraException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

CONF = Path(__file__).resolve().parents[1] / "conf"
# Hydra flags that point it at other configs or do no composing: the check leaves those to Hydra
_NOT_CHECKED = ("config_path", "config_name", "config_dir", "experimental_rerun", "shell_completion", "info")
_PRODUCT_MAX = 16  # a multirun this small is composed job by job (0.2-0.4 s each)
_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string", list: "a list ([a,b])",
               dict: "a mapping ({k: v})"}


class BadOverride(ValueError):
    """A command-line override Hydra cannot compose, or one it would silently ignore."""


class hydra_session:
    """Hydra's global state for ``conf/``; nested uses share the outer one (composing is the slow part)."""

    def __init__(self, job_name: str = "dllm_accel") -> None:
        self.job_name = job_name

    def __enter__(self):
        from hydra import initialize_config_dir
        from hydra.core.config_store import ConfigStore
        from hydra.core.global_hydra import GlobalHydra

        from .eval.schema import register

        self._context = None
        if not GlobalHydra.instance().is_initialized():
            if "run_schema.yaml" not in ConfigStore.instance().repo:  # registering again costs seconds
                register()
            self._context = initialize_config_dir(config_dir=str(CONF), version_base="1.3", job_name=self.job_name)
            self._context.__enter__()
        return self

    def __exit__(self, *exc):
        if self._context is not None:
            self._context.__exit__(*exc)


def check_argv(argv: list[str]) -> None:
    """``python -m dllm_accel.run``'s arguments: its overrides, as a single run or a multirun."""
    from hydra._internal.utils import get_args_parser

    args = get_args_parser().parse_args(argv)
    if args.help or args.hydra_help or any(getattr(args, name, None) for name in _NOT_CHECKED):
        return
    multirun = args.multirun or "hydra.mode=MULTIRUN" in args.overrides
    check_overrides(args.overrides, multirun=multirun)


def check_overrides(overrides: list[str], multirun: bool = False) -> None:
    """Compose the overrides (in a multirun each sweep value, the other sweeps at their first) or raise
    ``BadOverride`` naming the override, its key and what is accepted."""
    from hydra import compose
    from hydra.core.global_hydra import GlobalHydra

    with hydra_session():
        loader = GlobalHydra.instance().config_loader()
        parsed = _parse(overrides, loader)
        if not multirun:
            for override in parsed:
                if override.is_sweep_override():
                    raise BadOverride(
                        f"{override.input_line}: several values are a sweep, which needs --multirun (-m); "
                        f"a list is written {override.get_key_element()}=[a,b], a string with commas in quotes"
                    )
        groups = {o.key_or_group for o in parsed if _is_group(o.key_or_group, loader)}
        for override in parsed:
            _check_group_choice(override, groups, loader)
        for job in _jobs(parsed, multirun):
            with explained(job):
                cfg = compose(config_name="config", overrides=job, return_hydra_config=True)
            for override in parsed:
                if (override.is_add() or override.is_force_add()) and override.key_or_group not in groups:
                    _check_added_key(override, cfg)


@contextmanager
def explained(overrides: list[str]):
    """Hydra's and OmegaConf's composition errors as ``BadOverride`` (one line, the original as cause)."""
    try:
        yield
    except BadOverride:
        raise
    except (HydraException, OmegaConfBaseException, ValueError) as error:  # Hydra raises ValueError too
        raise BadOverride(explain(error, overrides)) from error


def explain(error: Exception, overrides: list[str]) -> str:
    """One line naming the override, the key, the value and what the key accepts."""
    if isinstance(error, OverrideParseException):
        return f"{error.override}: not an override Hydra can read ({_first_line(error.message)}; write key=value)"
    cause = error if isinstance(error, OmegaConfBaseException) else error.__cause__
    if isinstance(cause, OmegaConfBaseException) and cause.full_key:
        written = _written(cause.full_key, overrides)
        if isinstance(cause, (ConfigAttributeError, ConfigKeyError)):
            return _unknown_key(written, cause.full_key, cause.object_type)
        if isinstance(cause, ValidationError):
            expected = _expected(cause.object_type, cause.key, cause.full_key)
            if expected:
                return f"{written}: {cause.full_key} must be {expected} (got {cause.value!r})"
            return f"{written}: {_first_line(cause.msg)}"
    return f"{_first_line(str(error))} (overrides: {' '.join(overrides) or 'none'})"


# ------------------------------------------------------------------ the pieces
def _parse(overrides: list[str], loader) -> list:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create(config_loader=loader)
    with explained(overrides):
        return parser.parse_overrides(overrides)


def _is_group(name: str, loader) -> bool:
    return bool(loader.get_group_options(name, results_filter=None))


def _check_group_choice(override, groups: set[str], loader) -> None:
    """Every option a group override names exists (an ``optional`` group would drop it silently)."""
    key = override.key_or_group
    if override.is_delete():
        return
    if key not in groups:
        if "/" in key:
            known = _all_groups(loader)
            raise BadOverride(f"{override.input_line}: no config group {key!r} in conf/{_suggest(key, known)} "
                              f"(accepted: {', '.join(known)})")
        return
    if override.value() is None:
        accepted = _group_options(key, loader)
        raise BadOverride(f"{override.input_line}: config group {key} takes one of its options (accepted: "
                          f"{', '.join(accepted)}); to leave out an optional group, write ~{key}")
    for choice in _choices(override):
        folder, _, name = f"{key}/{choice}".rpartition("/")
        if name not in loader.get_group_options(folder, results_filter=ObjectType.CONFIG):
            # a choice in a sub-folder (method=dllm_cache_presets/x) lists that folder's options
            inner = folder.removeprefix(key).strip("/") if _is_group(folder, loader) else ""
            accepted = [f"{inner}/{o}" if inner else o for o in _group_options(f"{key}/{inner}".rstrip("/"), loader)]
            raise BadOverride(f"{override.input_line}: no option {choice!r} in config group {key}"
                              f"{_suggest(str(choice), accepted)} (accepted: {', '.join(accepted)})")


def _choices(override) -> list[str]:
    if override.is_sweep_override():
        if override.is_discrete_sweep():
            return list(override.sweep_string_iterator())
        return []
    value = override.value()
    values = value if isinstance(value, list) else [value]
    return [str(v) for v in values if v is not None and str(v) != "null"]


def _group_options(group: str, loader) -> list[str]:
    configs = loader.get_group_options(group, results_filter=ObjectType.CONFIG)
    folders = loader.get_group_options(group, results_filter=ObjectType.GROUP)
    return [*configs, *(f"{folder}/..." for folder in folders)]


def _all_groups(loader, parent: str = "") -> list[str]:
    found = []
    for name in loader.get_group_options(parent, results_filter=ObjectType.GROUP):
        group = f"{parent}/{name}" if parent else name
        if group != "hydra" and not group.startswith("schema"):
            found += [group, *_all_groups(loader, group)]
    return found + (["hydra/launcher"] if not parent else [])


def _jobs(parsed: list, multirun: bool) -> Iterator[list[str]]:
    """The command line as jobs to compose: every combination of a small sweep (values that clash only
    together are found too), else all of it once and then each further sweep value."""
    base, sweeps = [], []
    for override in parsed:
        if multirun and override.is_sweep_override() and override.is_discrete_sweep():
            values = [f"{override.get_key_element()}={v}" for v in override.sweep_string_iterator()]
            if not values:
                continue
            sweeps.append((len(base), values))
            base.append(values[0])
        elif not (multirun and override.is_sweep_override()):
            base.append(override.input_line)
    if math.prod(len(values) for _, values in sweeps) <= _PRODUCT_MAX:
        for chosen in itertools.product(*(values for _, values in sweeps)):
            job = list(base)
            for (index, _), value in zip(sweeps, chosen, strict=True):
                job[index] = value
            yield job
        return
    yield base
    for index, values in sweeps:
        for value in values[1:]:
            yield [*base[:index], value, *base[index + 1 :]]


def _check_added_key(override, cfg: DictConfig) -> None:
    """``+key=value`` into a typed node adds a key that nothing reads: refuse it like a misspelled one."""
    parent_key, _, leaf = override.key_or_group.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    kind = OmegaConf.get_type(parent) if isinstance(parent, DictConfig) else None
    if dataclasses.is_dataclass(kind) and leaf not in _field_names(kind):
        raise BadOverride(_unknown_key(override.input_line, override.key_or_group, kind))


def _unknown_key(written: str, full_key: str, parent_type) -> str:
    parent, _, leaf = str(full_key).rpartition(".")
    where = parent or "the run's config"
    if dataclasses.is_dataclass(parent_type):
        keys = _field_names(parent_type)
        return f"{written}: no key {leaf!r} in {where}{_suggest(leaf, keys)} (accepted: {', '.join(keys) or 'none'})"
    return f"{written}: no key {leaf!r} in {where} (to add one, write +{full_key}=...)"


def _field_names(kind: type) -> list[str]:
    return [f.name for f in dataclasses.fields(kind)]


def _expected(parent_type, key, full_key: str | None = None) -> str | None:
    """What a typed key accepts, from the schema dataclass that declares it."""
    if not dataclasses.is_dataclass(parent_type) or key is None:
        return None
    try:
        annotation = typing.get_type_hints(parent_type).get(str(key))
    except (NameError, TypeError):
        return None
    args = typing.get_args(annotation)
    optional = type(None) in args
    if optional:
        annotation = next(a for a in args if a is not type(None))
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        text = "one of " + ", ".join(member.name for member in annotation)
    elif dataclasses.is_dataclass(annotation):
        names = ", ".join(_field_names(annotation)) or "none here"
        text = f"a group of settings, each set as {full_key or key}.<name>=... (names: {names})"
    else:
        text = _TYPE_NAMES.get(annotation)
    return f"{text} or null" if text and optional else text


def _written(full_key: str, overrides: list[str]) -> str:
    """The override as the user wrote it (``++batch_size=abc``), found by its key."""
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~").split("@", 1)[0]
        if key == full_key:
            return override
    return str(full_key)


def _suggest(word: str, known: list[str]) -> str:
    close = difflib.get_close_matches(word, known, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else "invalid"
