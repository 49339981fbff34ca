"""Config dataclasses: round trips, validation messages, type coercion, help texts."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import pytest

from nbkit.core.config import Config, field
from nbkit.core.errors import ConfigError, NbkitError
from nbkit.core.train_config import TrainConfig
from nbkit.data.collect import CollectConfig
from nbkit.data.formatting import FormatConfig
from nbkit.data.quality import QualityConfig
from nbkit.data.split import SplitConfig
from nbkit.evaluate.evaluator import EvalConfig
from nbkit.train.prefer.config import PairsConfig, PreferConfig

CONFIG_CLASSES = [
    CollectConfig,
    FormatConfig,
    QualityConfig,
    SplitConfig,
    TrainConfig,
    EvalConfig,
    PairsConfig,
    PreferConfig,
]

# One instance per class with non-default values, so a round trip that silently
# falls back to defaults would be caught.
NON_DEFAULT = {
    CollectConfig: dict(
        workspace="ws1", sources=["a.jsonl", "more/*.csv"], columns={"question": "prompt"}, roles={"bot": "assistant"}
    ),
    FormatConfig: dict(
        workspace="ws2",
        base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
        max_seq_len=256,
        redact_pii=True,
        drop_near_duplicates=True,
        near_duplicate_threshold=0.9,
    ),
    QualityConfig: dict(workspace="ws6", near_duplicate_threshold=0.7, redact_pii=True, label_field="team"),
    SplitConfig: dict(
        workspace="ws3",
        validation_fraction=0.15,
        test_fraction=0.2,
        seed=7,
        stratify_by="",
        group_by="source",
        near_duplicate_threshold=0.9,
        drop_leaked=True,
    ),
    TrainConfig: dict(
        workspace="ws4",
        method="lora",
        run_id="r1",
        max_steps=10,
        learning_rate=2e-4,
        lora_r=8,
        lora_alpha=16,
        target_modules="q_proj,v_proj",
        eval_steps=0,
    ),
    EvalConfig: dict(workspace="ws5", run_id="r1", max_examples=5, max_new_tokens=32, batch_size=4),
    PairsConfig: dict(
        workspace="ws7",
        parent_run="r1",
        sources=["metric", "files"],
        files=["p.jsonl"],
        samples_per_prompt=6,
        max_prompts=8,
        temperature=0.8,
        min_margin=0.3,
        seed=3,
    ),
    PreferConfig: dict(
        workspace="ws8",
        method="grpo",
        parent_run="r1",
        run_id="r2",
        beta=0.05,
        max_steps=5,
        batch_size=4,
        num_generations=4,
        temperature=0.9,
        eval_steps=0,
    ),
}


def instances():
    """(id, config) pairs: every class with defaults and with non-default values."""
    for cls in CONFIG_CLASSES:
        yield pytest.param(cls(), id=f"{cls.__name__}-default")
        yield pytest.param(cls(**NON_DEFAULT[cls]), id=f"{cls.__name__}-custom")


def raises_naming(name: str, cls, **kwargs) -> str:
    """Build cls(**kwargs), expect ConfigError whose message names `name`; return the message."""
    with pytest.raises(ConfigError) as info:
        cls(**kwargs)
    message = str(info.value)
    assert f"`{name}`" in message, message
    return message


@dataclass
class Toggle(Config):
    """A config with a bool field (none of the stage configs has one yet)."""

    interactive: bool = field(True, "Show panels.")


# -- round trips --------------------------------------------------------------------------


@pytest.mark.parametrize("config", instances())
def test_to_dict_from_dict_round_trip(config):
    data = config.to_dict()
    assert set(data) == {f.name for f in dataclasses.fields(config)}
    assert type(config).from_dict(data) == config


@pytest.mark.parametrize("config", instances())
def test_to_dict_is_json_serializable(config):
    assert json.loads(json.dumps(config.to_dict())) == config.to_dict()


@pytest.mark.parametrize("config", instances())
def test_save_load_round_trip(config, tmp_path):
    path = config.save(tmp_path / "nested" / "config.json")
    assert path.exists()
    assert type(config).load(path) == config


@pytest.mark.parametrize("config", instances())
def test_saved_file_is_sorted_json(config, tmp_path):
    path = config.save(tmp_path / "config.json")
    text = path.read_text(encoding="utf-8")
    keys = [k for k, _ in json.loads(text, object_pairs_hook=lambda pairs: pairs)]
    assert keys == sorted(keys)
    assert text == json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n"


def test_default_lists_are_not_shared():
    first = CollectConfig()
    first.sources.append("x.jsonl")
    assert CollectConfig().sources == []


def test_replace_returns_validated_copy():
    config = TrainConfig()
    assert config.replace(max_steps=5).max_steps == 5
    assert config.max_steps == TrainConfig().max_steps
    with pytest.raises(ConfigError, match="`max_steps`"):
        config.replace(max_steps=-1)


# -- unknown keys -------------------------------------------------------------------------


@pytest.mark.parametrize("cls", CONFIG_CLASSES)
def test_from_dict_unknown_key_raises_naming_it(cls):
    data = {**cls().to_dict(), "max_stepz": 3}
    with pytest.raises(ConfigError) as info:
        cls.from_dict(data)
    assert "`max_stepz`" in str(info.value)
    assert cls.__name__ in str(info.value)


def test_from_dict_names_every_unknown_key():
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict({"lr": 1e-4, "epochs": 2})
    assert "`epochs`" in str(info.value) and "`lr`" in str(info.value)


def test_from_dict_non_strict_ignores_unknown_keys():
    config = TrainConfig.from_dict({"max_steps": 7, "not_a_field": 1}, strict=False)
    assert config == TrainConfig(max_steps=7)


def test_from_parameters_takes_each_field_by_name_and_leaves_other_names():
    cell = {
        "workspace": "ws",
        "max_steps": 7,
        "warmup_ratio": 0.1,
        "interactive": False,
        "TrainConfig": TrainConfig,
        "__name__": "__main__",
    }  # what a notebook's globals() holds besides the parameters
    assert TrainConfig.from_parameters(cell) == TrainConfig(workspace="ws", max_steps=7, warmup_ratio=0.1)
    with pytest.raises(ConfigError, match="`warmup_ratio`"):
        TrainConfig.from_parameters({**cell, "warmup_ratio": 2.0})


# -- settings owned by an earlier stage ------------------------------------------------------


def test_training_takes_base_model_and_max_seq_len_from_02_unless_set(tmp_path):
    from nbkit.core.files import write_json
    from nbkit.core.workspace import Workspace
    from nbkit.model.loader import EMBEDDED_MODEL

    assert TrainConfig(workspace=str(tmp_path)).resolved() == TrainConfig(  # before 02 runs: 02's defaults
        workspace=str(tmp_path), base_model=FormatConfig().base_model, max_seq_len=FormatConfig().max_seq_len
    )
    write_json(Workspace(tmp_path).format_report, {"base_model": "org/model-x", "max_seq_len": 1024})
    warnings: list[str] = []
    config = TrainConfig(workspace=str(tmp_path)).resolved(warn=warnings.append)
    assert (config.base_model, config.max_seq_len, warnings) == ("org/model-x", 1024, [])
    override = TrainConfig(workspace=str(tmp_path), max_seq_len=512, base_model=EMBEDDED_MODEL)
    config = override.resolved(warn=warnings.append)
    assert (config.base_model, config.max_seq_len) == (EMBEDDED_MODEL, 512)  # set here: overrides 02
    assert (
        len(warnings) == 2
        and "max_seq_len=512 here, but 02_format prepared the data with max_seq_len=1024" in warnings[1]
        and "base_model" in warnings[0]
    )
    assert TrainConfig(workspace=str(tmp_path), max_seq_len=1024).resolved(warn=warnings.append).max_seq_len == 1024
    assert len(warnings) == 2  # the same value as 02's: nothing to warn about


# -- invalid values -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "cls, kwargs, name",
    [
        (TrainConfig, dict(max_steps=-1), "max_steps"),
        (TrainConfig, dict(learning_rate=0), "learning_rate"),
        (TrainConfig, dict(learning_rate=1.5), "learning_rate"),
        (TrainConfig, dict(method="dora"), "method"),
        (TrainConfig, dict(batching="sorted"), "batching"),
        (TrainConfig, dict(gradient_checkpointing="yes"), "gradient_checkpointing"),
        (TrainConfig, dict(save_steps=0), "save_steps"),
        (TrainConfig, dict(eval_steps=20, save_steps=30), "save_steps"),
        (TrainConfig, dict(early_stopping_patience=-1), "early_stopping_patience"),
        (TrainConfig, dict(report_to="tensorboard,comet"), "report_to"),
        (TrainConfig, dict(max_steps=0, num_train_epochs=0), "num_train_epochs"),
        (TrainConfig, dict(warmup_ratio=1.0), "warmup_ratio"),
        (TrainConfig, dict(weight_decay=-0.1), "weight_decay"),
        (TrainConfig, dict(batch_size=0), "batch_size"),
        (TrainConfig, dict(gradient_accumulation_steps=0), "gradient_accumulation_steps"),
        (TrainConfig, dict(lora_r=0), "lora_r"),
        (TrainConfig, dict(lora_dropout=1.0), "lora_dropout"),
        (TrainConfig, dict(eval_steps=-1), "eval_steps"),
        (TrainConfig, dict(target_modules="  "), "target_modules"),
        (TrainConfig, dict(run_id="../elsewhere"), "run_id"),
        (SplitConfig, dict(test_fraction=0), "test_fraction"),
        (SplitConfig, dict(test_fraction=1), "test_fraction"),
        (SplitConfig, dict(validation_fraction=-0.1), "validation_fraction"),
        (SplitConfig, dict(validation_fraction=0.5, test_fraction=0.4), "validation_fraction"),
        (SplitConfig, dict(validation_fraction=0.45, test_fraction=0.5), "validation_fraction"),
        (FormatConfig, dict(max_seq_len=0), "max_seq_len"),
        (FormatConfig, dict(max_seq_len=-1), "max_seq_len"),
        (EvalConfig, dict(max_examples=-1), "max_examples"),
        (EvalConfig, dict(max_new_tokens=-1), "max_new_tokens"),
        (EvalConfig, dict(batch_size=-1), "batch_size"),
        (CollectConfig, dict(workspace=""), "workspace"),
        (CollectConfig, dict(sources="data/*.jsonl"), "sources"),
    ],
)
def test_invalid_value_raises_config_error_naming_field(cls, kwargs, name):
    raises_naming(name, cls, **kwargs)


def test_error_message_gives_value_and_fix():
    message = raises_naming("max_seq_len", FormatConfig, max_seq_len=-1)
    assert "-1" in message
    assert "parameters cell" in message


def test_method_error_lists_choices():
    message = raises_naming("method", TrainConfig, method="dora")
    assert "'qlora'" in message and "'lora'" in message and "'full'" in message and "'dora'" in message


def test_save_steps_error_says_how_to_keep_the_best_checkpoint():
    message = raises_naming("save_steps", TrainConfig, eval_steps=20, save_steps=30)
    assert "multiple of eval_steps (20)" in message and "set save_steps=20" in message
    # Without validation-driven checkpoints any interval is fine.
    assert TrainConfig(eval_steps=20, save_steps=30, load_best=False, early_stopping_patience=0).save_steps == 30


def test_fraction_sum_error_mentions_both_fields():
    message = raises_naming("validation_fraction", SplitConfig, validation_fraction=0.5, test_fraction=0.4)
    assert "test_fraction" in message


def test_from_dict_validates_values():
    with pytest.raises(ConfigError, match="`max_steps`"):
        TrainConfig.from_dict({"max_steps": -1})


def test_config_error_is_a_value_error_and_nbkit_error():
    with pytest.raises(ConfigError) as info:
        TrainConfig(max_steps=-1)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, NbkitError)


def test_boundary_values_are_accepted():
    assert TrainConfig(max_steps=0, num_train_epochs=2).max_steps == 0
    assert SplitConfig(validation_fraction=0, test_fraction=0.2).validation_fraction == 0
    assert EvalConfig(max_examples=0, max_new_tokens=0).max_examples == 0


# -- type coercion ------------------------------------------------------------------------


def test_int_given_for_float_field_becomes_float():
    config = TrainConfig(num_train_epochs=2, max_steps=0)
    assert config.num_train_epochs == 2.0
    assert type(config.num_train_epochs) is float
    assert type(SplitConfig(validation_fraction=0).validation_fraction) is float


def test_int_for_float_field_survives_json_round_trip(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"num_train_epochs": 3, "max_steps": 0}))
    assert type(TrainConfig.load(path).num_train_epochs) is float


def test_whole_float_given_for_int_field_becomes_int():
    config = TrainConfig(max_steps=60.0)
    assert config.max_steps == 60
    assert type(config.max_steps) is int


def test_fractional_float_for_int_field_raises():
    raises_naming("batch_size", TrainConfig, batch_size=8.5)


def test_bool_for_int_field_raises():
    raises_naming("max_steps", TrainConfig, max_steps=True)


def test_text_for_number_field_raises():
    message = raises_naming("learning_rate", TrainConfig, learning_rate="fast")
    assert "number" in message


def test_non_str_for_str_field_becomes_str(tmp_path):
    assert TrainConfig(run_id=7).run_id == "7"
    config = CollectConfig(workspace=tmp_path)
    assert config.workspace == str(tmp_path)
    assert json.loads(config.to_json())["workspace"] == str(tmp_path)


def test_tuple_sources_serialize_as_list():
    config = CollectConfig(sources=("a.jsonl", "b.jsonl"))
    assert config.to_dict()["sources"] == ["a.jsonl", "b.jsonl"]


@pytest.mark.parametrize("value", ["True", "false", 1, 0])
def test_non_bool_for_bool_field_raises(value):
    message = raises_naming("interactive", Toggle, interactive=value)
    assert "True or False" in message


def test_bool_field_accepts_bools():
    assert Toggle(interactive=False).interactive is False
    assert Toggle.from_dict({"interactive": True}).interactive is True


# -- help texts ---------------------------------------------------------------------------


@pytest.mark.parametrize("cls", CONFIG_CLASSES)
def test_every_field_has_help_text(cls):
    helps = cls.help()
    assert list(helps) == [f.name for f in dataclasses.fields(cls)]
    empty = [name for name, text in helps.items() if not text.strip()]
    assert empty == []


@pytest.mark.parametrize("cls", CONFIG_CLASSES)
def test_every_field_has_a_default(cls):
    for f in dataclasses.fields(cls):
        assert f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING, f.name
