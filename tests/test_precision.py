"""Precision is chosen in one place: no code path autocasts to bf16 when the resolver says fp32
(on an AVX2-only CPU bf16 is emulated, 7x slower, and moved a TSTR ratio by 0.09)."""

import contextlib

import pytest
import torch

import medsynth.precision as precision
from conftest import ROOT
from medsynth.config import load_config
from medsynth.features import FeatureNet
from medsynth.metrics.utility import train_classifier
from medsynth.models import build_recipe
from medsynth.nets.classifier import VGGClassifier
from medsynth.training import train

HALF = (torch.bfloat16, torch.float16)


@pytest.fixture
def autocasts(monkeypatch):
    """Every torch.autocast entered from now on: (device type, dtype, enabled)."""
    seen = []
    real = torch.autocast

    class Recording(real):
        def __init__(self, device_type, dtype=None, enabled=True, cache_enabled=None):
            seen.append((device_type, dtype, enabled))
            super().__init__(device_type, dtype=dtype, enabled=enabled, cache_enabled=cache_enabled)

    monkeypatch.setattr(torch, "autocast", Recording)
    return seen


def exercise_every_autocast(data, runs) -> None:
    """Each code path that may autocast, at its default ("auto") precision."""
    x = torch.rand(16, 1, 28, 28) * 2 - 1
    y = torch.arange(16) % 2
    train_classifier(x, y, 2, False, steps=2, batch_size=8)  # the TSTR classifier
    net = VGGClassifier(2, 1, 2, [8, 16], 16)
    FeatureNet(net, net.embed, 16, precision=precision.resolve_precision("auto")).embed(x)
    cfg = load_config(ROOT / "configs" / "ldm_pneumonia.yaml", [
        "model.channels=[8,16]", "model.latent_channels=2", "model.attention_levels=[false,false]",
        "model.width=0.125", "diffusion.unet_channels=[16,32]", "diffusion.unet_attention_levels=[false,false]",
        "trainer.precision=auto"])
    cfg.model.update(in_channels=1, image_size=[32, 32], num_classes=2, multilabel=False)
    ldm = build_recipe(cfg).eval()
    ldm.scale_factor.fill_(1.0)
    ldm.sample(2, condition=0, steps=2)
    train(ROOT / "configs" / "vae_pneumonia.yaml",  # Lightning's own autocast, trainer.precision=auto
          [f"data.path={data}", f"runs_dir={runs}", "trainer.max_epochs=1", "trainer.precision=auto",
           "model.channels=[8,16]", "trainer.samples_after_training=4"], log=lambda *_: None)


def test_no_half_precision_autocast_where_the_resolver_says_fp32(monkeypatch, autocasts, small_npz, tmp_path):
    monkeypatch.setattr(precision, "native_bf16", lambda: False)
    assert precision.resolve_precision("auto", "cpu") == "32"
    exercise_every_autocast(small_npz, tmp_path)
    assert [a for a in autocasts if a[2] and a[1] in HALF] == []


def test_the_same_paths_do_autocast_where_bf16_is_native(monkeypatch, autocasts, small_npz, tmp_path):
    """The check above can fail: with the resolver saying bf16, the same paths do enter bf16 autocast."""
    monkeypatch.setattr(precision, "native_bf16", lambda: True)
    exercise_every_autocast(small_npz, tmp_path)
    assert len([a for a in autocasts if a[2] and a[1] == torch.bfloat16]) >= 4


def test_explicit_precision_is_kept():
    assert precision.resolve_precision("32") == "32"
    assert precision.resolve_precision("bf16-mixed") == "bf16-mixed"
    assert isinstance(precision.autocast("cpu", "32"), contextlib.nullcontext)
    assert isinstance(precision.autocast("cpu", "bf16-mixed"), torch.autocast)


def test_the_detection_can_be_overridden(monkeypatch):
    monkeypatch.setenv("MEDSYNTH_NATIVE_BF16", "0")
    assert precision.resolve_precision("auto", "cpu") == "32"
    monkeypatch.setenv("MEDSYNTH_NATIVE_BF16", "1")
    assert precision.resolve_precision("auto", "cpu") == "bf16-mixed"
