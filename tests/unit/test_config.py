from pathlib import Path

import pytest
from pydantic import ValidationError

from lib.config import EnsembleConfig, FinetuneConfig, PredictConfig, load_config
from lib.core.errors import ConfigError

BASE = {
    "name": "m1",
    "data": {"train_dir": "t", "validation_dir": "v"},
    "model": {"ssl_checkpoint": "ckpt"},
}


def test_preset_then_flag_overrides(tmp_path):
    preset = tmp_path / "preset.yaml"
    preset.write_text(
        "name: from-preset\n"
        "data: {train_dir: a/train, validation_dir: a/validation}\n"
        "model: {ssl_checkpoint: ckpt, train_last_n_layers: 3}\n"
        "training: {epochs: 7, learning_rate: 0.001}\n"
    )
    config = load_config(FinetuneConfig, preset, {"training": {"epochs": 2}, "name": "cli-name"})
    assert config.name == "cli-name"
    assert config.training.epochs == 2
    assert config.training.learning_rate == 0.001  # kept from the preset
    assert config.model.train_last_n_layers == 3
    assert config.model.freezing == "last_3_layers"
    assert config.data.train_dir == Path("a/train")


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"training": {"epochs": -1}}, "training.epochs"),
        ({"training": {"metric_for_best_model": "auc"}}, "training.metric_for_best_model"),
        ({"training": {"batch_sise": 4}}, "training.batch_sise"),
        ({"model": {"ssl_checkpoint": "c", "head_only": True, "train_last_n_layers": 2}}, "train_last_n_layers"),
        ({"name": "../escape"}, "name"),
        ({"training": {"batch_sizes": []}}, "training.batch_sizes"),
        ({"training": {"batch_sizes": [8, 0]}}, "training.batch_sizes.1"),
        ({"features": {"max_frames": 0}}, "features.max_frames"),
    ],
)
def test_invalid_values_name_the_parameter(override, named):
    from lib.config import deep_merge

    with pytest.raises(ConfigError) as error:
        load_config(FinetuneConfig, None, deep_merge(BASE, override))
    assert named in str(error.value)


def test_missing_preset_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(FinetuneConfig, tmp_path / "nope.yaml")


def test_fingerprint_ignores_where_outputs_go():
    one = FinetuneConfig.model_validate(BASE)
    moved = FinetuneConfig.model_validate({**BASE, "output_dir": "/elsewhere", "work_dir": "/w"})
    other_lr = FinetuneConfig.model_validate({**BASE, "training": {"learning_rate": 1e-3}})
    assert one.fingerprint() == moved.fingerprint()
    assert one.fingerprint() != other_lr.fingerprint()


def test_fingerprint_ignores_moved_data_cache_and_checkpoint_and_how_the_run_is_watched():
    # what lies at those places is identified by the feature cache and encoder keys (lib.launch.resume_key)
    moved = FinetuneConfig.model_validate({
        **BASE,
        "data": {"train_dir": "/new/t", "validation_dir": "/new/v", "cache_dir": "/big-disk/cache",
                 "fingerprint": "content", "feature_workers": 7},
        "model": {"ssl_checkpoint": "/new/ckpt", "base_config": "/new/config.json"},
        "training": {"dataloader_num_workers": 4, "tensorboard": True, "pin_memory": False},
    })
    assert moved.fingerprint() == FinetuneConfig.model_validate(BASE).fingerprint()


@pytest.mark.parametrize(
    "override",
    [
        {"training": {"seed": 1}},
        {"training": {"augmentation": {"noise_std": 0.1}}},
        {"features": {"max_frames": 256}},
        {"features": {"storage_dtype": "float16"}},
        {"model": {"ssl_checkpoint": "ckpt", "head_only": True}},
        {"data": {"train_dir": "t", "validation_dir": "v", "quick_subsample": True}},
        # other kernels, other rounding: never resumed across them
        {"training": {"attention": "eager"}},
        {"training": {"tf32": False}},
        {"training": {"optimizer": "adamw_torch"}},
        {"training": {"compile": True}},
    ],
)
def test_fingerprint_changes_with_what_changes_the_weights(override):
    from lib.config import deep_merge

    changed = FinetuneConfig.model_validate(deep_merge(BASE, override))
    assert changed.fingerprint() != FinetuneConfig.model_validate(BASE).fingerprint()


def config_models() -> list[type]:
    from pydantic import BaseModel

    import lib.config

    return [value for value in vars(lib.config).values()
            if isinstance(value, type) and issubclass(value, BaseModel) and value.__module__.startswith("lib.config")]


def test_every_path_field_is_tagged_as_a_location():
    from typing import get_args

    from lib.config import LOCATION

    for model in config_models():
        for name, field in model.model_fields.items():
            if Path in (field.annotation, *get_args(field.annotation)):
                assert LOCATION in field.metadata, f"{model.__name__}.{name}"


def test_resolved_paths_are_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = FinetuneConfig.model_validate(BASE).resolved()
    assert config.data.train_dir == tmp_path / "t"
    assert config.run_work_dir == tmp_path / "ensemble" / "runs" / "m1"


def test_resolved_makes_every_location_absolute_in_every_config(tmp_path, monkeypatch):
    from functools import reduce

    from lib.config import LOCATION, EnsembleConfig, PredictConfig, tagged

    monkeypatch.chdir(tmp_path)
    model = {"ssl_checkpoint": "ckpt", "base_config": "base.json"}
    raw = {
        FinetuneConfig: {**BASE, "work_dir": "w", "model": model, "data": {**BASE["data"], "test_dir": "x"}},
        EnsembleConfig: {"data": {**BASE["data"], "test_dir": "x"}, "model": model, "members": [{"name": "a"}]},
        PredictConfig: {"model_path": "best", "input_path": "in", "output_csv": "out/p.csv"},
    }
    for config_class, values in raw.items():
        config = config_class.model_validate(values)
        resolved = config.resolved()
        locations = tagged(config_class, LOCATION)
        assert len(locations) == {FinetuneConfig: 10, EnsembleConfig: 9, PredictConfig: 3}[config_class]
        for path in (path for path in locations if path != ("data", "root")):  # root: layouts only, below
            if reduce(getattr, path, config) is None:  # data.noise_dir
                continue
            assert reduce(getattr, path, resolved) == tmp_path.resolve() / reduce(getattr, path, config), path
    esc50 = FinetuneConfig.model_validate({**BASE, "data": {"layout": "esc50", "root": "ESC-50-master"}}).resolved()
    assert esc50.data.root == tmp_path.resolve() / "ESC-50-master"
    home = FinetuneConfig.model_validate({**BASE, "model": {"ssl_checkpoint": "~/ckpt"}}).resolved()
    assert home.model.ssl_checkpoint == Path.home().resolve() / "ckpt"


def test_resolved_keeps_a_published_link_by_name_and_resolves_every_other_link(tmp_path, monkeypatch):
    # <output>/ssl/<name> is a link to a version folder that the next publish deletes: runs must record the name
    monkeypatch.chdir(tmp_path)
    real = tmp_path / "real"
    (real / "ssl" / ".enc.v-1").mkdir(parents=True)
    (tmp_path / "out").symlink_to(real)  # a link above the published one is resolved as before
    (real / "ssl" / "enc").symlink_to(".enc.v-1")
    (tmp_path / "data-link").symlink_to(real)
    config = FinetuneConfig.model_validate(
        {**BASE, "model": {"ssl_checkpoint": "out/ssl/enc"}, "data": {**BASE["data"], "train_dir": "data-link"}}
    ).resolved()
    assert config.model.ssl_checkpoint == real.resolve() / "ssl" / "enc"
    assert config.data.train_dir == real.resolve()  # data folders: the link is followed
    predict = PredictConfig.model_validate({"model_path": "out/ssl/enc", "input_path": "in"}).resolved()
    assert predict.model_path == real.resolve() / "ssl" / "enc"


def test_notebook_preset_is_valid_and_mirrors_the_notebook():
    preset = Path(__file__).parents[2] / "deployments" / "presets" / "notebook.yaml"
    config = load_config(FinetuneConfig, preset)
    assert config.model.train_last_n_layers == 3 and not config.model.head_only
    training = config.training
    assert (training.epochs, training.batch_size, training.gradient_accumulation_steps) == (50, 1, 4)
    assert (config.training.learning_rate, config.training.warmup_steps, config.training.seed) == (5e-5, 3, 42)


def test_ensemble_member_names_must_be_unique_and_variants_valid():
    from lib.config import EnsembleConfig, load_config

    base = {"data": {"train_dir": "t", "validation_dir": "v"}, "model": {"ssl_checkpoint": "c"}}
    with pytest.raises(ConfigError, match=r"repeated: \['full'\]"):
        load_config(EnsembleConfig, None, {**base, "members": [{"name": "full"}, {"name": "full"}]})
    with pytest.raises(ConfigError, match="members.0.*exclusive"):
        load_config(
            EnsembleConfig, None, {**base, "members": [{"name": "x", "head_only": True, "train_last_n_layers": 2}]}
        )
    members = [{"name": "h", "head_only": True, "epochs": 3}, {"name": "f"}]
    config = load_config(EnsembleConfig, None, {**base, "training": {"epochs": 9}, "members": members})
    assert [config.member_config(m).training.epochs for m in config.members] == [3, 9]
    assert config.member_config(config.members[0]).model.freezing == "head_only"


def test_a_member_batch_size_replaces_the_shared_schedule():
    from lib.config import EnsembleConfig, load_config

    config = load_config(EnsembleConfig, None, {
        "data": {"train_dir": "t", "validation_dir": "v"}, "model": {"ssl_checkpoint": "c"},
        "training": {"batch_sizes": [4, 8]}, "members": [{"name": "a", "batch_size": 16}, {"name": "b"}],
    })
    first, second = (config.member_config(m).training for m in config.members)
    assert (first.batch_size, first.batch_sizes) == (16, None)
    assert second.batch_sizes == [4, 8]


@pytest.mark.parametrize(
    ("yaml_line", "named"),
    [
        ("features: {mean: .nan}", "features.mean"),
        ("features: {std: .nan}", "features.std"),
        ("features: {std: 0.0}", "features.std"),
        ("training: {warmup_steps: .inf}", "training.warmup_steps"),
        ("training: {learning_rate: .nan}", "training.learning_rate"),
        ("training: {augmentation: {noise_std: .nan}}", "training.augmentation.noise_std"),
        ("model: {ssl_checkpoint: ckpt, classifier_dropout: .nan}", "model.classifier_dropout"),
    ],
)
def test_non_finite_floats_in_a_preset_are_refused(tmp_path, yaml_line, named):
    # a NaN mean or std normalises every feature to NaN: the model trains on NaN without an error
    preset = tmp_path / "preset.yaml"
    preset.write_text(
        "name: m\ndata: {train_dir: t, validation_dir: v}\nmodel: {ssl_checkpoint: ckpt}\n" + yaml_line + "\n"
    )
    with pytest.raises(ConfigError) as error:
        load_config(FinetuneConfig, preset)
    assert named in str(error.value)


def test_every_config_model_refuses_inf_and_nan():
    models = config_models()
    names = {model.__name__ for model in models}
    assert names >= {"FeatureConfig", "TrainingConfig", "EnsembleConfig", "PredictConfig"}
    for model in models:
        assert model.model_config.get("allow_inf_nan") is False, model.__name__


@pytest.mark.parametrize("name", ["ensemble.json", "Ensemble.JSON", "a/b", "..", ".", ".hidden", "a\\b"])
def test_member_names_that_are_not_plain_folder_names_under_best_are_refused(name):
    from lib.config import EnsembleConfig, load_config

    base = {"data": {"train_dir": "t", "validation_dir": "v"}, "model": {"ssl_checkpoint": "c"}}
    with pytest.raises(ConfigError, match="members.0.name"):
        load_config(EnsembleConfig, None, {**base, "members": [{"name": name}]})
    with pytest.raises(ConfigError, match="name"):
        load_config(FinetuneConfig, None, {**BASE, "name": name})


def test_reserved_member_names_cover_what_the_project_writes_under_best():
    from lib.core.layout import (
        ENSEMBLE_FILE,
        LEADERBOARD_PLOT_FILE,
        RELIABILITY_PLOT_FILE,
        RESERVED_MEMBER_NAMES,
    )

    assert {ENSEMBLE_FILE, LEADERBOARD_PLOT_FILE, RELIABILITY_PLOT_FILE} <= RESERVED_MEMBER_NAMES


@pytest.mark.parametrize("field, value", [("std", 1e-300), ("std", 0.0), ("mean", 1e300), ("mean", -5000.0)])
def test_feature_statistics_far_outside_log_mel_values_are_refused(field, value):
    from lib.config import FeatureConfig

    with pytest.raises(ValidationError, match=field):
        FeatureConfig(**{field: value})


def _descriptions(node):
    if isinstance(node, dict):
        if isinstance(node.get("description"), str):
            yield node["description"]
        for value in node.values():
            yield from _descriptions(value)
    elif isinstance(node, list):
        for value in node:
            yield from _descriptions(value)


@pytest.mark.parametrize("model", [FinetuneConfig, EnsembleConfig, PredictConfig])
def test_no_form_description_holds_an_angle_bracket(model):
    # The Prefect UI renders descriptions as HTML: "<name>" was dropped as an unknown tag.
    descriptions = list(_descriptions(model.model_json_schema()))
    assert len(descriptions) > 5
    assert [text for text in descriptions if "<" in text] == []


def test_form_descriptions_name_the_bounds():
    # The run form shows descriptions, not minimum/maximum: the bounds are written into them.
    schema = FinetuneConfig.model_json_schema()["$defs"]
    assert schema["FeatureConfig"]["properties"]["sample_rate_hz"]["description"] == (
        "Clips are resampled to this rate (default 16000: the notebook's and AST/SSAST's sample rate). "
        "Allowed: at least 8000, at most 192000."
    )
    max_frames = schema["FeatureConfig"]["properties"]["max_frames"]["description"]
    assert max_frames.endswith("Allowed: at least 1, at most 100000.")
    learning_rate = schema["TrainingConfig"]["properties"]["learning_rate"]["description"]
    assert learning_rate.endswith("Allowed: above 0, at most 1.")
    assert PredictConfig.model_json_schema()["properties"]["batch_size"]["description"].endswith("at most 65536.")
    assert "Allowed" not in FinetuneConfig.model_fields["name"].description  # the fields themselves are unchanged


def test_sweeps_and_seeds_expand_into_named_members():
    from lib.config import EnsembleConfig, load_config

    base = {"data": {"train_dir": "t", "validation_dir": "v"}, "model": {"ssl_checkpoint": "c"}}
    config = load_config(EnsembleConfig, None, {
        **base, "members": [{"name": "full", "weight": 2.0}, {"name": "fixed", "seed": 9}],
        "sweep_last_n": [0, 4, 12], "seeds": [1, 2],
    })
    variants = config.variants(num_layers=12)
    assert [(v.name, v.freezing, v.seed) for v in variants] == [
        ("full-s1", "full", 1), ("full-s2", "full", 2), ("fixed", "full", 9),  # its own seed: not repeated
        ("last-0-s1", "head_only", 1), ("last-0-s2", "head_only", 2),
        ("last-4-s1", "last_4_layers", 1), ("last-4-s2", "last_4_layers", 2),
        ("last-12-s1", "full", 1), ("last-12-s2", "full", 2),
    ]
    assert config.selection == "greedy"
    # a weight given in the config wins over the selection; members without one weigh 1
    assert config.weights == {v.name: 2.0 if v.name.startswith("full") else 1.0 for v in variants}
    assert load_config(EnsembleConfig, None, {**base, "sweep_last_n": [2]}).weights is None
    with pytest.raises(ConfigError, match=r"repeated: \['last-4'\]"):
        load_config(EnsembleConfig, None, {**base, "members": [{"name": "last-4"}], "sweep_last_n": [4]})
    with pytest.raises(ConfigError, match=r"repeated: \['a-s1'\]"):
        members = [{"name": "a"}, {"name": "a-s1", "seed": 5}]
        load_config(EnsembleConfig, None, {**base, "members": members, "seeds": [1]})
    with pytest.raises(ConfigError, match=r"no member to train; list members, or give sweep_last_n"):
        load_config(EnsembleConfig, None, base)
    with pytest.raises(ConfigError, match=r"selection"):
        load_config(EnsembleConfig, None, {**base, "sweep_last_n": [2], "selection": "best"})


def test_a_value_every_member_of_a_union_refuses_is_one_line_naming_the_field():
    with pytest.raises(ConfigError) as error:
        load_config(FinetuneConfig, None, {**BASE, "training": {"dataloader_num_workers": -1, "batch_sizes": [8, 0]}})
    assert str(error.value).splitlines()[1:] == [
        "  - training.dataloader_num_workers: Input should be greater than or equal to 0, "
        "or Input should be 'auto' (got -1)",
        "  - training.batch_sizes.1: Input should be greater than or equal to 1 (got 0)",
    ]


@pytest.mark.parametrize(("preset", "layout", "seconds", "frames"), [
    ("speech-commands", "speech_commands", 1.0, 128), ("esc50", "esc50", 5.0, 512),
    ("urbansound8k", "urbansound8k", 4.0, 400),
])
def test_each_dataset_preset_reads_its_layout_at_the_datasets_clip_length(preset, layout, seconds, frames):
    folder = Path(__file__).parents[2]
    config = load_config(FinetuneConfig, folder / "deployments" / "presets" / f"{preset}.yaml")
    assert (config.data.layout, config.features.clip_seconds, config.features.max_frames) == (layout, seconds, frames)
    assert (folder / "docs" / "datasets" / f"{preset}.md").is_file()
    bare = FinetuneConfig.model_validate({**BASE, "data": {"layout": layout, "root": "r"}})
    assert (bare.features.clip_seconds, bare.features.max_frames) == (seconds, frames)  # the layout's own defaults


def test_fields_added_later_enter_the_fingerprint_only_away_from_their_defaults():
    plain = FinetuneConfig.model_validate(BASE)
    same = FinetuneConfig.model_validate({**BASE, "features": {"long_clips": "first"}})
    assert same.fingerprint() == plain.fingerprint()  # what runs before the field did: resumable
    cropped = FinetuneConfig.model_validate({**BASE, "features": {"long_clips": "crop"}})
    noisy = FinetuneConfig.model_validate({**BASE, "training": {"augmentation": {"background_noise_probability": .8}}})
    assert len({plain.fingerprint(), cropped.fingerprint(), noisy.fingerprint()}) == 3
