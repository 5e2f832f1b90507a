"""prefect.yaml and the UI form: parameters validate, and the schema carries descriptions and bounds."""

from pathlib import Path

import pytest
import yaml

from lib.config import CrossvalConfig, EnsembleConfig, FinetuneConfig, PredictConfig, PretrainConfig

ROOT = Path(__file__).resolve().parents[2]
CONFIG_CLASSES = {
    "flows/finetune.py:finetune": FinetuneConfig,
    "flows/ensemble.py:ensemble": EnsembleConfig,
    "flows/crossval.py:crossval": CrossvalConfig,
    "flows/predict.py:predict": PredictConfig,
    "flows/pretrain.py:pretrain": PretrainConfig,
}


def deployments():
    return yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())["deployments"]


@pytest.mark.parametrize("deployment", deployments(), ids=lambda d: d["name"])
def test_every_deployment_has_valid_parameters_and_a_pool(deployment):
    config_class = CONFIG_CLASSES[deployment["entrypoint"]]
    config = config_class.model_validate(deployment["parameters"]["config"])
    # a scale-out parent only waits: it must not take a GPU worker's slot
    waits_for_members = getattr(config, "dispatch", None) == "deployments"
    assert deployment["work_pool"]["name"] == ("astft-orchestration" if waits_for_members else "astft-process")
    assert deployment["work_pool"]["job_variables"]["env"]["PREFECT_LOGGING_EXTRA_LOGGERS"] == "lib"


def test_declared_schedule_and_scale_out_mode():
    by_name = {d["name"]: d for d in deployments()}
    assert by_name["ensemble-nightly"]["schedules"][0]["cron"] == "0 2 * * *"
    scale_out = by_name["ensemble-scale-out"]["parameters"]["config"]
    assert scale_out["dispatch"] == "deployments" and scale_out["member_deployment"] == "astft-finetune/member"


def test_flow_parameter_schema_renders_a_typed_form():
    from prefect.utilities.callables import parameter_schema

    from flows.ensemble import ensemble
    from flows.finetune import finetune

    schema = parameter_schema(finetune).model_dump_for_openapi()
    training = schema["definitions"]["TrainingConfig"]["properties"]
    assert training["epochs"]["minimum"] == 1 and "epochs" in training["epochs"]["description"].lower()
    assert set(training["metric_for_best_model"]["enum"]) >= {"accuracy", "balanced_accuracy"}
    model = schema["definitions"]["ModelConfig"]["properties"]
    assert model["train_last_n_layers"]["minimum"] == 0 and model["head_only"]["type"] == "boolean"
    ensemble_schema = parameter_schema(ensemble).model_dump_for_openapi()
    assert ensemble_schema["definitions"]["EnsembleConfig"]["properties"]["dispatch"]["enum"] == [
        "in_process", "deployments"
    ]
    # sweeps, seeds and the selection are form fields too, and a member's weight is optional
    properties = ensemble_schema["definitions"]["EnsembleConfig"]["properties"]
    assert properties["selection"]["enum"] == ["all", "greedy"] and properties["selection"]["default"] == "greedy"
    assert properties["sweep_last_n"]["items"]["minimum"] == 0
    assert "head only" in properties["sweep_last_n"]["description"]
    assert properties["seeds"]["type"] == "array"
    assert ensemble_schema["definitions"]["MemberVariant"]["properties"]["weight"].get("default") is None
    assert "test_dir" in ensemble_schema["definitions"]["DataConfig"]["properties"]


def test_pretrain_form_is_typed_and_the_demo_deployments_fine_tune_from_what_it_publishes():
    from prefect.utilities.callables import parameter_schema

    from flows.pretrain import pretrain

    schema = parameter_schema(pretrain).model_dump_for_openapi()["definitions"]
    data = schema["PretrainDataConfig"]["properties"]
    assert data["data_dirs"]["type"] == "array" and data["data_dirs"]["minItems"] == 1
    assert data["holdout_fraction"]["maximum"] == 0.5
    assert "Allowed: above 0, at most 0.5." in data["holdout_fraction"]["description"]
    objective = schema["ObjectiveConfig"]["properties"]
    assert objective["masking"]["enum"] == ["random", "cluster"] and objective["mask_ratio"]["default"] == 400 / 512
    assert objective["generative_weight"]["default"] == 10
    assert schema["PretrainTrainingConfig"]["properties"]["checkpoint_every_steps"]["minimum"] == 0
    by_name = {d["name"]: d for d in deployments()}
    config = PretrainConfig.model_validate(by_name["pretrain"]["parameters"]["config"])
    published = config.output_dir / "ssl" / config.name
    assert Path(by_name["member"]["parameters"]["config"]["model"]["ssl_checkpoint"]) == published


@pytest.mark.parametrize("entrypoint", sorted(CONFIG_CLASSES))
def test_every_flow_takes_overrides_as_a_list_of_strings_in_its_form(entrypoint):
    import importlib

    from prefect.utilities.callables import parameter_schema

    path, name = entrypoint.split(":")
    module = path.removesuffix(".py").replace("/", ".")
    schema = parameter_schema(getattr(importlib.import_module(module), name)).model_dump_for_openapi()
    overrides = schema["properties"]["overrides"]
    assert "training.epochs=3" in overrides["description"] or "FIELD=VALUE" in overrides["description"]
    assert schema["required"] == ["config"]  # overrides is optional


def test_overrides_change_one_field_by_the_set_rules_and_name_a_bad_one():
    from flows.flags import apply_overrides
    from lib.core.errors import ConfigError

    base = FinetuneConfig.model_validate(
        {"name": "m", "data": {"train_dir": "t", "validation_dir": "v"}, "model": {"ssl_checkpoint": "c"}}
    )
    changed = apply_overrides(base, ["training.epochs=3", "model.head_only=true", "training.batch_sizes=8,16"])
    assert (changed.training.epochs, changed.model.head_only, changed.training.batch_sizes) == (3, True, [8, 16])
    assert changed.model_dump(exclude={"training", "model"}) == base.model_dump(exclude={"training", "model"})
    assert apply_overrides(base, None) is base
    with pytest.raises(ConfigError, match=r"overrides: 'training.epoch' is not a field of the config; did you mean"):
        apply_overrides(base, ["training.epoch=3"])
    with pytest.raises(ConfigError, match=r"training.epochs"):
        apply_overrides(base, ["training.epochs=0"])
