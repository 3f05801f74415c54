"""The typed config: every preset resolves, validates and round-trips through TOML; `genlab presets
--keys` documents every key of every family; unknown keys name the closest key or the family that has
them; a preset's keys of another family are dropped when the user switches `model.arch`; a field's
range and choices are checked."""

import dataclasses

import pytest

import genlab.config as C
from genlab import cli
from genlab.errors import GenlabError

PRESETS = sorted(C.presets())


def _round_trip(cfg, tmp_path):
    p = tmp_path / "config.toml"
    p.write_text(C.to_toml(cfg), encoding="utf-8")
    return C.from_toml_file(p)


def test_there_are_presets_of_every_family():
    # post-training families take their architecture from --init-from: one preset per task covers them
    with_presets = {f.name for f, _ in C.presets().values()}
    of_source = {f.name for f in C.families() if f.task in ("sft", "dpo") and f.name not in with_presets}
    assert of_source == {"deepseek-sft", "deepseek-dpo"}
    assert with_presets == {f.name for f in C.families()} - of_source


@pytest.mark.parametrize("name", PRESETS)
def test_preset_resolves_validates_and_round_trips_through_toml(name, tmp_path):
    family, p = C.presets()[name]
    cfg = C.resolve(name, None, None)
    assert cfg.preset == name and cfg.family is family
    assert C.to_dict(C.preset(name).validate()) == C.to_dict(cfg)
    for section, values in p.settings.items():  # the preset's own settings are in the config
        if isinstance(values, dict):
            for key, value in values.items():
                assert getattr(getattr(cfg, section), key) == value, f"{section}.{key}"
    back = _round_trip(cfg, tmp_path)
    assert C.to_dict(back) == C.to_dict(cfg)
    assert type(back.model) is type(cfg.model)


NASTY = "a \"quoted\" path\\with\\backslashes\nand a newline\tand a tab, 'single' too, ünïcödé 🎉"
NON_DEFAULT = {  # an lm run with non-default values of every type
    "data": {"path": NASTY, "val_fraction": 0.125, "tokenizer": "byte", "packing_length": 96},
    "model": {
        "d_model": 48,
        "n_head": 6,
        "n_kv_head": 3,
        "tie_embeddings": True,
        "rope_theta": 5e5,
        "norm_eps": 1e-6,
        "attn_backend": "flash",
        "init_std": 0.01,
    },
    "train": {
        "steps": 12,
        "lr": 3.5e-4,
        "schedule": "cosine",
        "grad_clip": 0.5,
        "seed": 7,
        "warmup_steps": 0,
        "activation_checkpointing": "every:2",
        "min_lr_ratio": 0.0,
    },
}


def test_non_default_values_of_every_type_round_trip_through_toml(tmp_path):
    default = C.resolve(None, None, None)
    cfg = C.apply_settings(default, NON_DEFAULT).validate()
    cfg.preset = 'my "preset" \\ with a\nnewline'
    types = set()
    for section, values in NON_DEFAULT.items():
        for name, value in values.items():
            assert getattr(getattr(default, section), name) != value, f"{section}.{name} is its default"
            types.add(C.section_keys(cfg.family)[section][name].type)
    assert types == {"bool", "int", "float", "str"}
    back = _round_trip(cfg, tmp_path)
    assert C.to_dict(back) == C.to_dict(cfg) != C.to_dict(default)
    assert back.data.path == NASTY and back.preset == cfg.preset
    for section, values in NON_DEFAULT.items():
        for name, value in values.items():
            got = getattr(getattr(back, section), name)
            assert got == value and type(got) is type(value), f"{section}.{name}"


def test_presets_keys_lists_every_key_with_type_default_doc_and_choices(capsys):
    assert cli.main(["presets", "--keys"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    for name in PRESETS:
        assert any(line.startswith(name + " ") for line in lines), name
    n_keys = 0
    for family in C.families():
        assert f"[{family.name}] task = {family.task!r}" in out
        for keys in C.section_keys(family).values():
            for info in keys.values():
                n_keys += 1
                row = [line for line in lines if line.split()[:1] == [info.key] and info.doc in line]
                assert row, f"{family.name}: {info.key}"
                words = row[0].split()
                assert words[1] == info.type and repr(info.default) in row[0], row[0]
                if info.choices:
                    assert " | ".join(map(str, info.choices)) in row[0], row[0]
                elif info.lo is not None:
                    assert str(info.lo) in row[0], row[0]
    assert n_keys > 100
    schedule = next(line for line in lines if line.split()[:1] == ["train.schedule"])
    assert "multistep | cosine | constant | inverse" in schedule and "str" in schedule and "'multistep'" in schedule
    lr = next(line for line in lines if line.split()[:1] == ["train.lr"])
    assert "float" in lr and "0.001" in lr and "0.0 to 10.0" in lr and "peak learning rate" in lr


def _error(overrides, preset=None):
    with pytest.raises(GenlabError) as e:
        C.resolve(preset, None, overrides)
    return str(e.value)


def test_unknown_key_names_the_closest_key():
    msg = _error(["model.d_modle=3"])
    assert "model.d_modle" in msg and "did you mean model.d_model" in msg
    assert "model.d_model" in _error(["model.dmodel=3"])
    assert "train.warmup_steps" in _error(["train.warmup_step=3"])


def test_unknown_key_of_another_family_names_that_family():
    msg = _error(["model.vae_channels=8"])  # a diffusion key on an lm run
    assert "model.vae_channels" in msg and "diffusion" in msg and "lm run" in msg
    msg = _error(["model.n_kv_head=2", "model.arch=deepseek"])  # a dense-Transformer key on a deepseek run
    assert "belongs to the lm " in msg and "deepseek run" in msg


def test_a_presets_keys_of_another_family_are_dropped_but_the_users_are_an_error():
    assert "n_kv_head" in C.presets()["lm-small"][1].settings["model"]  # the premise of this test
    cfg = C.resolve("lm-small", None, ["model.arch=deepseek"])
    assert cfg.family.name == "deepseek" and cfg.model.arch == "deepseek"
    assert not hasattr(cfg.model, "n_kv_head")
    assert cfg.model.d_model == 256 and cfg.train.steps == 400  # the keys both families have are kept
    cfg.validate()
    msg = _error(["model.arch=deepseek", "model.n_kv_head=4"], preset="lm-small")
    assert "model.n_kv_head" in msg and "belongs to the lm " in msg


def test_range_and_choices_of_a_section_field_are_checked():
    msg = _error(["train.lr=-1"])
    assert "train.lr" in msg and "out of range" in msg and "0.0 to 10.0" in msg
    assert "out of range" in _error(["train.lr=11"])
    assert "train.warmup_steps" in _error(["train.warmup_steps=-1"])
    msg = _error(["train.schedule=foo"])
    assert "train.schedule" in msg and "'foo'" in msg and "multistep, cosine, constant, inverse" in msg
    assert "finite" in _error(["train.lr=nan"])
    # the same checks apply to a config built in code, at validate()
    cfg = C.resolve(None, None, None)
    cfg.train = dataclasses.replace(cfg.train, schedule="foo")
    with pytest.raises(GenlabError, match="train.schedule"):
        cfg.validate()
    for ok in ("train.lr=0", "train.lr=10", "train.schedule=inverse"):
        C.resolve(None, None, [ok])  # the bounds are inclusive; every listed choice is accepted
