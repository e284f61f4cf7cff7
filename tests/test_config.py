import pytest

from medsynth.config import load_config
from medsynth.errors import MedsynthError


def test_defaults_and_overrides_merge(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model:\n  latent_dim: 7\nloss:\n  kl_weight: 4.0\n")
    cfg = load_config(path, ["loss.kl_weight=2.5", "model.channels=[4,8]"])
    assert cfg.model.latent_dim == 7
    assert cfg.loss.kl_weight == 2.5
    assert list(cfg.model.channels) == [4, 8]
    assert cfg.data.batch_size == 64  # default kept


@pytest.mark.parametrize("text, words", [
    ("model:\n  latnt_dim: 7\n", ["latnt_dim"]),                 # unknown key
    ("data:\n  batch_size: lots\n", ["batch_size", "lots"]),     # wrong type
    ("loss:\n  reconstruction: huber\n", ["loss.reconstruction", "huber"]),  # not a choice
    ("data:\n  batch_size: 0\n", ["data.batch_size", "positive"]),
    ("model: [1, 2\n", ["not valid YAML"]),
    ("- a\n- b\n", ["mapping"]),
])
def test_bad_config_names_file_and_key(tmp_path, text, words):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(MedsynthError) as err:
        load_config(path)
    message = str(err.value)
    assert str(path) in message
    for word in words:
        assert word in message
    assert "\n" not in message


def test_bad_overrides():
    with pytest.raises(MedsynthError, match="nope"):
        load_config(None, ["model.nope=1"])
    with pytest.raises(MedsynthError, match="key=value"):
        load_config(None, ["model.latent_dim"])
    with pytest.raises(MedsynthError, match="latent_dim"):
        load_config(None, ["model.latent_dim=big"])


def test_missing_config_file(tmp_path):
    with pytest.raises(MedsynthError, match="not found"):
        load_config(tmp_path / "nothing.yaml")


def test_shipped_recipes_load():
    from pathlib import Path

    recipes = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert len(recipes) >= 6
    from conftest import NEEDS_A_RUN

    for recipe in recipes:
        load_config(recipe, NEEDS_A_RUN.get(recipe.stem))
        if recipe.stem in NEEDS_A_RUN:  # refused without the feature run, by name
            with pytest.raises(MedsynthError, match="needs loss.perceptual_net"):
                load_config(recipe)
