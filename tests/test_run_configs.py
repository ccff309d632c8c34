"""Every config composes against its schema and instantiates; bad input fails early and clearly."""

from __future__ import annotations

import itertools
from functools import cache
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from dllm_accel.eval.data import check_data, default_data_dir, template_files
from dllm_accel.eval.harness import method_preset, split_settings
from dllm_accel.eval.prompting import resolve_style
from dllm_accel.eval.schema import CONF_DIR
from dllm_accel.generation.rules import rule_class
from dllm_accel.generation.settings import ONE_BLOCK, SamplerSettings, SettingsError
from dllm_accel.methods import build_method
from dllm_accel.models import load_spec
from dllm_accel.paths import tiny_checkpoint
from dllm_accel.run import sampler_settings, validate

MODELS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
TASKS = sorted(p.stem for p in (CONF_DIR / "task").glob("*.yaml"))
METHODS = sorted(str(p.relative_to(CONF_DIR / "method").with_suffix("")) for p in (CONF_DIR / "method").rglob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@cache
def _composed_method(method: str) -> dict:
    # each method is composed once, with the models and tasks cycled through alongside it
    i = METHODS.index(method)
    cfg = _compose(f"method={method}", f"model={MODELS[i % len(MODELS)]}", f"task={TASKS[i % len(TASKS)]}")
    return OmegaConf.to_container(cfg, resolve=True)


@cache
def _group_node(group: str, option: str) -> dict:
    return OmegaConf.to_container(_compose(f"{group}={option}")[group], resolve=True)


@cache
def _family_spec(model: str):
    family = "dream" if model.startswith(("dream", "diffucoder")) else "llada"
    return load_spec(tiny_checkpoint(family))[0]


def test_the_config_groups_are_all_there():
    assert {"llada_8b_instruct", "llada_8b_base", "llada_1_5", "dream_7b_instruct", "dream_7b_base"} <= set(MODELS)
    assert {"llada_tiny", "dream_tiny", "gsm8k", "humaneval", "passkey"} <= set(MODELS) | set(TASKS)
    assert "vanilla" in METHODS and "demo_tiny" in EXPERIMENTS
    assert (CONF_DIR / "hydra" / "launcher" / "slurm_1gpu.yaml").is_file()


# the published preset families (dllm_cache_presets/, streaming_dllm_presets/) share the schema of their
# method's own file: the fast tier composes the top-level files, the slow tier every one
@pytest.mark.parametrize("method", [m if "/" not in m else pytest.param(m, marks=pytest.mark.slow) for m in METHODS])
def test_every_method_file_composes_against_its_schema(method):
    config = _composed_method(method)
    assert config["method"]["name"]
    build_method(config["method"]["name"], **config["method"]["options"])


@pytest.mark.slow
def test_every_model_method_task_combination_instantiates():
    """Group nodes compose independently, so each triple is the union of the three composed nodes."""
    failures = []
    for model, method, task in itertools.product(MODELS, METHODS, TASKS):
        config = _composed_method(method) | {"model": _group_node("model", model), "task": _group_node("task", task)}
        rule = config["method"]["sampler"].get("policy")
        if rule is not None and _family_spec(model).family not in rule_class(rule).samplers:
            # a decoding rule defined for the other family refuses, naming the sampler it needs
            with pytest.raises(SettingsError, match="is defined for sampler"):
                SamplerSettings(**sampler_settings(config)).resolve(_family_spec(model), prompt_length=1)
            continue
        try:
            build_method(config["method"]["name"], **config["method"]["options"])
            SamplerSettings(**sampler_settings(config)).resolve(_family_spec(model), prompt_length=1)
            resolve_style(config["prompt"]["style"], config["model"]["instruct"])
            assert template_files(config["task"]["lm_eval_task"]) is not None
        except Exception as err:  # collect every failing triple, not just the first
            failures.append(f"{model} x {method} x {task}: {err}")
    assert not failures, "\n".join(failures[:20])


@pytest.mark.parametrize("task", TASKS)
def test_every_task_finds_its_local_data(task):
    check_data(_group_node("task", task)["lm_eval_task"], default_data_dir())


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_validates(experiment):
    config = OmegaConf.to_container(_compose(f"experiment={experiment}"), resolve=True)
    if Path(config["model"]["path"]).is_dir():
        validate(config)


@pytest.mark.parametrize(
    ("override", "accepted"),
    [("model=llada_9b", "llada_tiny"), ("method=no_such_method", "vanilla"), ("task=gsm9k", "humaneval")],
)
def test_unknown_names_list_the_accepted_ones(override, accepted):
    with pytest.raises(ConfigCompositionException) as err:
        _compose(override)
    assert accepted in str(err.value.__cause__ or err.value) + str(err.value)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["method=sparse_dllm", "method.options.keep_ratio=abc"], "keep_ratio"),
        (["method=sparse_dllm", "method.options.keep_ratoi=0.5"], "keep_ratoi"),
        (["sampler.steps=many"], "steps"),
        (["task.limit=abc"], "limit"),
        (["batch_size=two"], "batch_size"),
        (["model.rope_scaling=big"], "rope_scaling"),
    ],
)
def test_malformed_values_fail_at_composition_naming_the_key(overrides, key):
    with pytest.raises(ConfigCompositionException) as err:
        _compose(*overrides)
    assert key in f"{err.value} {err.value.__cause__}"


def test_added_unknown_option_is_rejected_before_loading():
    config = OmegaConf.to_container(_compose("method=vanilla", "+method.options.bogus=1"), resolve=True)
    with pytest.raises(ValueError, match="bogus"):
        validate(config)


def test_bad_prompt_style_and_tracking_are_named():
    config = OmegaConf.to_container(_compose("prompt.style=fancy"), resolve=True)
    with pytest.raises(ValueError, match="fancy.*accepted: auto, plain, chat, multiturn"):
        validate(config)
    config = OmegaConf.to_container(_compose("tracking=cloud"), resolve=True)
    with pytest.raises(ValueError, match="cloud"):
        validate(config)


def test_impossible_sampler_settings_fail_before_loading():
    config = OmegaConf.to_container(_compose("sampler.gen_length=30", "sampler.block_length=8"), resolve=True)
    with pytest.raises(ValueError, match="gen_length=30 is not a multiple of block_length=8"):
        validate(config)


def test_missing_data_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "gsm8k" / "test.jsonl.gz")):
        check_data("dllm_gsm8k", tmp_path)


def test_rope_scaling_multiplies_theta():
    import torch

    from dllm_accel.models import load_model
    from dllm_accel.run import scale_rope_theta

    plain = load_model(tiny_checkpoint("llada"), dtype=torch.float32)
    scaled = load_model(tiny_checkpoint("llada"), dtype=torch.float32)
    scale_rope_theta(scaled, 4.0)
    assert scaled.spec.rope_theta == 4 * plain.spec.rope_theta == scaled.blocks[0].spec.rope_theta
    ids = torch.arange(40).unsqueeze(0)
    with torch.no_grad():
        assert not torch.allclose(plain(ids)[0], scaled(ids)[0])
    with pytest.raises(ValueError, match="rope_scaling=0"):
        scale_rope_theta(scaled, 0)


def _preset_sampler(method: str) -> dict:
    return OmegaConf.load(CONF_DIR / "method" / f"{method}.yaml").get("sampler") or {}


ONE_BLOCK_PRESETS = [m for m in METHODS if _preset_sampler(m).get("block_length") == ONE_BLOCK]


def _merged(*overrides: str) -> dict:
    return sampler_settings(OmegaConf.to_container(_compose(*overrides), resolve=True))


def test_the_one_block_presets_are_found():
    assert {"d2_cache", "certainty_prior", "pc_sampler", "eb_sampler", "klass_dream"} <= set(ONE_BLOCK_PRESETS)


@pytest.mark.parametrize("method", METHODS)
def test_no_preset_writes_a_null_block_length(method):
    # in a config layer a null only means "not set here": the task's blocks would show through it
    sampler = _preset_sampler(method)
    assert "block_length" not in sampler or sampler["block_length"] is not None


@pytest.mark.parametrize("method", ONE_BLOCK_PRESETS)
def test_a_preset_asking_for_one_block_gets_one_block_on_an_lm_eval_task(method):
    merged = _merged(f"method={method}", "task=gsm8k", "sampler.gen_length=64", "sampler.steps=64")
    spec = _family_spec("dream_tiny" if method == "klass_dream" else "llada_tiny")
    resolved = SamplerSettings(**merged).resolve(spec, prompt_length=0)
    assert (resolved.block_length, resolved.num_blocks) == (64, 1)


def test_a_preset_silent_on_block_length_takes_the_task_blocks():
    assert "block_length" not in _preset_sampler("vanilla")
    assert _merged("method=vanilla", "task=gsm8k")["block_length"] == 32


def test_the_command_line_block_length_wins_over_a_one_block_preset():
    assert _merged("method=d2_cache", "task=gsm8k", "sampler.block_length=32")["block_length"] == 32
    merged = _merged("method=vanilla", "task=gsm8k", "sampler.gen_length=64", f"sampler.block_length={ONE_BLOCK}")
    assert SamplerSettings(**merged).resolve(_family_spec("llada_tiny"), prompt_length=0).num_blocks == 1


@pytest.mark.parametrize("bad", ["whole", 0, True])
def test_a_bad_block_length_is_one_line_naming_one_block(bad):
    with pytest.raises(SettingsError, match=f"block_length={bad!r} must be a positive integer or 'gen_length'"):
        SamplerSettings(gen_length=32, block_length=bad).resolve(_family_spec("llada_tiny"), prompt_length=0)


@pytest.mark.parametrize("method", ONE_BLOCK_PRESETS)
def test_lm_eval_model_args_keep_a_preset_one_block_unless_they_set_blocks(method):
    name, _, sampler = method_preset(method)
    spec = _family_spec("dream_tiny" if method == "klass_dream" else "llada_tiny")
    for model_args, blocks in (({}, 1), ({"block_length": 16}, 4)):
        given = sampler | split_settings(name, {"gen_length": 64, "steps": 64, **model_args})[1]
        assert SamplerSettings(**given).resolve(spec, prompt_length=0).num_blocks == blocks
