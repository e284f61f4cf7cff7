"""Feature network, perceptual loss, `evaluate` and `report` on real PneumoniaMNIST slices."""

import json
import re

import numpy as np
import pytest
import torch

from conftest import overrides, subset_npz
from medsynth.errors import MedsynthError
from medsynth.evaluate import evaluate
from medsynth.feature_runs import load_feature_net
from medsynth.features import PerceptualLoss
from medsynth.provenance import file_sha256
from medsynth.models.classifier import FEATURE_DEFAULTS
from medsynth.report import report
from medsynth.training import train

quiet = dict(log=lambda *_: None)


@pytest.fixture(scope="module")
def medium_npz(tmp_path_factory, pneumonia):
    return subset_npz(pneumonia, tmp_path_factory.mktemp("data") / "medium.npz",
                      {"train": 600, "val": 120, "test": 120})


@pytest.fixture(scope="module")
def feature_run(medium_npz, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    return train(None, [*FEATURE_DEFAULTS, f"data.path={medium_npz}", f"runs_dir={runs}", "trainer.max_epochs=4",
                        "data.batch_size=32", "model.channels=[16,32,64]", "model.latent_dim=32"], **quiet)


@pytest.fixture(scope="module")
def vae_run(medium_npz, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    return train("configs/cvae_pneumonia.yaml", overrides(medium_npz, runs, "trainer.max_epochs=2"), **quiet)


def test_feature_network_records_accuracy_and_hash(feature_run):
    info = json.loads((feature_run / "features.json").read_text())
    assert info["task"] == "classes" and info["embed_dim"] == 32
    assert info["sha256"] == file_sha256(feature_run / "model.safetensors")
    assert 0.6 < info["accuracy"] <= 1.0 and 0.6 < info["auc"] <= 1.0  # it learnt normal vs pneumonia
    net = load_feature_net(feature_run)
    x = torch.zeros(4, 1, 28, 28)
    assert net.embed(x).shape == (4, 32)
    with pytest.raises(MedsynthError, match=r"trained on images of size \[28, 28\]"):
        net.embed(torch.zeros(2, 1, 64, 64))


def test_self_supervised_feature_network_without_labels(tmp_path, pneumonia):
    with np.load(subset_npz(pneumonia, tmp_path / "s.npz", {"train": 300, "test": 100})) as src:
        np.savez(tmp_path / "u.npz", train_images=src["train_images"], test_images=src["test_images"])
    run = train(None, [*FEATURE_DEFAULTS, f"data.path={tmp_path / 'u.npz'}", f"runs_dir={tmp_path / 'runs'}",
                       "trainer.max_epochs=10", "data.batch_size=32", "model.channels=[8,16]",
                       "model.latent_dim=16"], **quiet)
    info = json.loads((run / "features.json").read_text())
    assert info["task"] == "rotation" and info["accuracy"] > 0.45  # 4-way chance is 0.25


def test_external_densenet121_weights_load(tmp_path):
    from monai.networks.nets import DenseNet121

    torch.manual_seed(0)
    net = DenseNet121(spatial_dims=2, in_channels=1, out_channels=3).eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        expected = net.class_layers.flatten(net.class_layers.pool(net.class_layers.relu(net.features(x))))
    torch.save(net.state_dict(), tmp_path / "monai.pt")
    loaded = load_feature_net(tmp_path / "monai.pt", precision="32")
    assert loaded.dim == 1024 and torch.allclose(loaded.embed(x), expected, atol=1e-5)
    # the same weights as a torchvision-style (CheXNet) checkpoint under "module." and "state_dict"
    tv = {}
    for key, value in net.state_dict().items():
        key = re.sub(r"\.layers\.(norm|relu|conv)(\d)\.", r".\1\2.", key).replace("class_layers.out.", "classifier.")
        tv["module." + key] = value
    torch.save({"state_dict": tv}, tmp_path / "chexnet_style.pth")
    assert torch.allclose(load_feature_net(tmp_path / "chexnet_style.pth", precision="32").embed(x), expected,
                          atol=1e-5)
    fast = load_feature_net(tmp_path / "monai.pt", precision="bf16-mixed")
    assert fast.info["precision"] == "bf16-mixed"
    assert torch.nn.functional.cosine_similarity(fast.embed(x), expected).min() > 0.99
    torch.save({"conv.weight": torch.zeros(3, 3)}, tmp_path / "other.pt")
    with pytest.raises(MedsynthError, match="not a DenseNet121"):
        load_feature_net(tmp_path / "other.pt")


def test_perceptual_loss_taps_and_vae_training(feature_run, medium_npz, tmp_path):
    net = load_feature_net(feature_run)
    loss = PerceptualLoss(net, [2, 5, 9], [1.0, 0.5, 0.25])
    assert all(isinstance(net.module.features[i], torch.nn.ReLU) for i in (2, 5, 9))
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    assert torch.allclose(loss(x, x), torch.zeros(3), atol=1e-4)
    assert (loss(x.flip(-1), x) > 0).all()
    run = train(None, overrides(medium_npz, tmp_path / "runs", "loss.perceptual_weight=0.5",
                                f"loss.perceptual_net={feature_run}"), **quiet)
    from safetensors.torch import load_file

    keys = load_file(run / "model.safetensors").keys()
    assert all(k.startswith("net.") for k in keys)  # the frozen feature net is not saved with the VAE
    rows = (run / "metrics.csv").read_text()
    assert "train/perceptual" in rows
    with pytest.raises(MedsynthError, match="outside"):
        PerceptualLoss(net, [99])


def test_evaluate_and_report_on_a_vae_run(vae_run, feature_run, medium_npz, tmp_path):
    result = evaluate(medium_npz, vae_run, features=feature_run, utility_steps=60, **quiet)
    out = vae_run / "evaluation.json"
    saved = json.loads(out.read_text())
    assert saved["fidelity"]["fid"] == pytest.approx(result["fidelity"]["fid"])
    assert saved["sets"]["real"]["split"] == "test" and saved["sets"]["fake"]["images"] == 120
    assert saved["features"]["dim"] == 32 and len(saved["features"]["sha256"]) == 64
    f = saved["fidelity"]
    assert f["fid"] > 0 and f["k"] == 5 and 0 <= f["precision"] <= 1
    # an undertrained VAE is further from real than real val is from real test
    assert f["fid"] > saved["floor"]["fidelity"]["fid"]
    assert "val vs real test" in saved["floor"]["fidelity"]["what"]
    for key, value in (("fid", f["fid"]), ("precision", f["precision"]), ("coverage", f["coverage"])):
        lo, hi = f[f"{key}_interval"]
        assert lo <= value + 1e-9 and value <= hi + 1e-9 and lo < hi, key
    assert f["kid_subset_size"] == 60 and f["kid_std"] > 1e-6  # 120 images: subsets of half
    lo, hi = saved["diversity"]["fake"]["ms_ssim_interval"]
    assert lo < saved["diversity"]["fake"]["ms_ssim_mean"] < hi
    assert saved["settings"]["intervals"]["resamples"] == 200
    a = saved["privacy"]["pixel"]
    assert 0 <= a["authenticity"] <= 1 and 0.2 < a["heldout_authenticity"] < 0.9
    # conditional: per class fidelity and diversity, and the feature network's class agreement
    assert set(saved["per_class"]) == {"0", "1"} and "fid" in saved["per_class"]["1"]["fidelity"]
    c = saved["class_consistency"]
    assert 0 <= c["agreement"] <= 1 and c["real_agreement"] > 0.6 and set(c["per_class"]) == {"0", "1"}
    assert 0 < saved["diversity"]["fake"]["ms_ssim_mean"] < 1 and saved["diversity"]["real"]["all_pairs"]
    assert 0 < saved["reconstruction"]["ms_ssim"] <= 1 and saved["reconstruction"]["psnr"] > 5
    assert 0 <= saved["privacy"]["pixel"]["rate"] <= 1 and "feature" in saved["privacy"]
    assert 0 <= saved["floor"]["privacy"]["pixel"]["rate"] <= 0.3
    assert saved["utility"]["train_images"] == 120 and "auc_ratio" in saved["utility"]
    assert saved["utility"]["repeats"] == 3 and len(saved["utility"]["synthetic"]["auc_runs"]) == 3
    strip = vae_run / "evaluation_nearest.png"
    assert strip.is_file()
    # diversity's floor: the real val split, scored the same way, with its gap to the real test split
    d, fd = saved["diversity"], saved["floor"]["diversity"]
    assert d["gap"] == pytest.approx(d["fake"]["ms_ssim_mean"] / d["real"]["ms_ssim_mean"] - 1)
    assert fd["images"] == saved["floor"]["fidelity"]["fake_images"] and "val split" in fd["what"]
    assert fd["gap"] == pytest.approx(fd["ms_ssim_mean"] / d["real"]["ms_ssim_mean"] - 1)
    assert fd["ms_ssim_mean"] != d["real"]["ms_ssim_mean"] and abs(fd["gap"]) < 0.2  # two real splits: near

    page = report(vae_run).read_text()
    for words in ("FID (domain features)", "memorisation rate", "TSTR", "Loss curves", "data:image/png;base64",
                  "kl_weight", "authenticity", "class consistency", "never trained on", "MS-SSIM gap"):
        assert words in page
    assert "http://" not in page and "https://" not in page and "src='data:" in page
    rows = metric_rows(page)  # parsed, not grepped: each metric row carries its interval and its meaning
    fid_row = next(r for r in rows if r[0] == "FID (domain features)")
    assert re.fullmatch(r"[\d.e+-]+ \[[\d.e+-]+, [\d.e+-]+\]", fid_row[1]) and fid_row[3] == "lower"
    assert all(r[-1] for r in rows)  # every metric says what it measures
    gap_row = next(r for r in rows if r[0].startswith("MS-SSIM gap"))
    assert float(gap_row[1]) == pytest.approx(d["gap"], abs=1e-3) and float(gap_row[2]) == pytest.approx(fd["gap"], abs=1e-3)


def metric_rows(page: str) -> list[list[str]]:
    """The text of each cell of the metric table's rows (4 cells or more: metric, values, better,
    meaning; a not-computed row spans its two value cells), by Python's HTML parser."""
    from html.parser import HTMLParser

    class Table(HTMLParser):
        def __init__(self):
            super().__init__()
            self.rows, self.cell, self.inside = [], None, False

        def handle_starttag(self, tag, attrs):
            if tag == "tr":
                self.rows.append([])
            elif tag == "td":
                self.cell = []

        def handle_endtag(self, tag):
            if tag == "td" and self.cell is not None:
                self.rows[-1].append("".join(self.cell).strip())
                self.cell = None

        def handle_data(self, data):
            if self.cell is not None:
                self.cell.append(data)

    parser = Table()
    parser.feed(page)
    return [r for r in parser.rows if len(r) >= 4]


def test_the_floor_comes_from_images_the_feature_network_never_saw(feature_run, medium_npz):
    """The old floor (real train vs real test) sat in the feature network's own training data: the
    network pulls its training images apart from unseen ones, so that floor is inflated. Against
    a clearly worse synthetic set (heavily blurred real test images), the new floor (val vs test,
    both unseen) lies below it and below the old floor."""
    from medsynth.evaluate import _fidelity, load_sets

    sets, floor_set = load_sets(medium_npz, medium_npz, None, None, 0, None)
    net = load_feature_net(feature_run)
    test = sets["real"].images
    blurred = torch.nn.functional.avg_pool2d(test, 7, 1, 3)
    real, worse = net.embed(test), net.embed(blurred)
    old = _fidelity(real, net.embed(sets["train"].images[:len(test)]), 5, 0)
    new = _fidelity(real, net.embed(floor_set.images), 5, 0)
    bad = _fidelity(real, worse, 5, 0)
    assert new["kid"] < bad["kid"] and new["fid"] < bad["fid"]
    assert new["kid"] < old["kid"]  # the inflation the old floor carried


def test_the_reference_cache_gives_the_numbers_computed_afresh(vae_run, feature_run, medium_npz, tmp_path):
    """What depends on the real sets alone is computed once and read back for another synthetic set:
    every number equals the one computed without the cache (a run's samples, then a file's images
    read from a cache the run's evaluation filled); an unreadable cache file is computed again."""
    cheap = dict(features=feature_run, diversity_images=40, resamples=10, utility_steps=10, utility_repeats=1,
                 **quiet)
    cache = tmp_path / "cache"
    names = {"embeddings", "fidelity_floor", "diversity_real", "diversity_floor", "texture_floor",
             "privacy_neighbours", "privacy_floor", "utility_real"}

    def numbers(result):  # all but the timings, where the cache is and the strip's path
        result = json.loads(json.dumps(result))
        result.pop("seconds"), result["settings"].pop("reference_cache"), result["privacy"].pop("strip")
        return result

    fresh = evaluate(medium_npz, vae_run, out=tmp_path / "a.json", **cheap)
    cold = evaluate(medium_npz, vae_run, out=tmp_path / "b.json", reference_cache=cache, **cheap)
    assert set(cold["settings"]["reference_cache"]["computed"]) == names and not cold["settings"]["reference_cache"]["read"]
    assert numbers(cold) == numbers(fresh)
    assert fresh["settings"]["reference_cache"] == {"dir": None}
    # another synthetic set of the same size (the file's train split) against the same real sets
    (next(cache.glob("utility_real-*.json"))).write_text("{not json")
    (next(cache.glob("embeddings-*.safetensors"))).write_bytes(b"truncated")
    warm = evaluate(medium_npz, medium_npz, out=tmp_path / "c.json", reference_cache=cache, **cheap)
    record = warm["settings"]["reference_cache"]
    assert set(record["computed"]) == {"utility_real", "embeddings"} and set(record["read"]) == names - set(record["computed"])
    assert numbers(warm) == numbers(evaluate(medium_npz, medium_npz, out=tmp_path / "d.json", **cheap))
    again = evaluate(medium_npz, medium_npz, out=tmp_path / "e.json", reference_cache=cache, **cheap)
    assert set(again["settings"]["reference_cache"]["read"]) == names  # the two replaced files read back
    assert numbers(again) == numbers(warm)
    # a smaller synthetic set (its size sets the real classifiers' subsets) and another setting: not
    # read from the values above, and again equal to a fresh evaluation
    with np.load(medium_npz) as f:
        np.savez(tmp_path / "small.npz", train_images=f["train_images"][::10], train_labels=f["train_labels"][::10])
    other = {**cheap, "diversity_images": 30}
    small = evaluate(medium_npz, tmp_path / "small.npz", out=tmp_path / "f.json", reference_cache=cache, **other)
    assert {"utility_real", "diversity_real", "diversity_floor"} <= set(small["settings"]["reference_cache"]["computed"])
    assert numbers(small) == numbers(evaluate(medium_npz, tmp_path / "small.npz", out=tmp_path / "g.json", **other))
    with pytest.raises(MedsynthError, match="reference-cache .*seg-config"):
        evaluate(medium_npz, tmp_path, seg_config="configs/unet_la_heart.yaml", reference_cache=cache, **quiet)


def test_the_reference_cache_key_holds_everything_a_value_depends_on(tmp_path):
    from medsynth.reference_cache import ReferenceCache, tensor_digest

    calls = []

    def compute():
        calls.append(1)
        return {"value": len(calls), "nan": float("nan")}

    x = torch.arange(6.0).reshape(2, 3)
    first = ReferenceCache(tmp_path, sets=tensor_digest(x), k=5)
    assert first.get_json("floor", compute)["value"] == 1
    assert first.get_json("floor", compute)["value"] == 1 and len(calls) == 1  # read back
    value = ReferenceCache(tmp_path, sets=tensor_digest(x), k=5).get_json("floor", compute)
    assert value["value"] == 1 and np.isnan(value["nan"])  # another evaluation, same key: read
    assert ReferenceCache(tmp_path, sets=tensor_digest(x), k=5).get_json("floor", compute, n=3)["value"] == 2
    assert ReferenceCache(tmp_path, sets=tensor_digest(x), k=3).get_json("floor", compute)["value"] == 3
    y = x.clone()
    y[1, 2] += 1e-6  # one value of the real set changed
    assert ReferenceCache(tmp_path, sets=tensor_digest(y), k=5).get_json("floor", compute)["value"] == 4
    assert tensor_digest(x) != tensor_digest(x.reshape(3, 2)) != tensor_digest(x.double())
    assert ReferenceCache(None, k=5).get_json("floor", compute)["value"] == 5  # no folder: always computed
    stored = tmp_path / next(p.name for p in tmp_path.glob("floor-*.json")
                             if json.loads(p.read_text())["key"]["k"] == 5 and "n" not in json.loads(p.read_text())["key"]
                             and json.loads(p.read_text())["key"]["sets"] == tensor_digest(x))
    text = json.loads(stored.read_text())
    text["key"]["k"] = 4  # a file whose stored key is not the one asked for (a collision, a foreign file)
    stored.write_text(json.dumps(text))
    assert ReferenceCache(tmp_path, sets=tensor_digest(x), k=5).get_json("floor", compute)["value"] == 6
    stored.write_text("[]")  # valid JSON, not a cache entry
    assert ReferenceCache(tmp_path, sets=tensor_digest(x), k=5).get_json("floor", compute)["value"] == 7
    tensors = ReferenceCache(tmp_path, k=5).get_tensors("emb", lambda: {"a": x, "i": torch.arange(3)})
    back = ReferenceCache(tmp_path, k=5).get_tensors("emb", lambda: pytest.fail("should be read back"))
    assert torch.equal(back["a"], tensors["a"]) and back["i"].dtype == torch.int64
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(MedsynthError, match="reference-cache .*file"):
        ReferenceCache(blocker / "sub")


def test_evaluate_without_features_says_why(vae_run, medium_npz, tmp_path):
    result = evaluate(medium_npz, vae_run, out=tmp_path / "m.json", utility=False, **quiet)
    assert "not_computed" in result["fidelity"] and "--features" in result["fidelity"]["not_computed"]
    assert result["utility"] == {"not_computed": "switched off"}
    page = report(vae_run, out=tmp_path / "r.html", evaluation=tmp_path / "m.json").read_text()
    assert "not computed: FID, KID and PRDC need a feature network" in page


def test_feature_run_cannot_be_sampled(feature_run, tmp_path):
    from medsynth.sampling import sample

    with pytest.raises(MedsynthError, match="classifier model does not draw samples"):
        sample(feature_run, 4, tmp_path / "x.npz")


def test_evaluate_bad_inputs(medium_npz, feature_run, tmp_path):
    small = tmp_path / "small.npz"
    np.savez(small, images=np.zeros((4, 28, 28), np.uint8))
    with pytest.raises(MedsynthError, match="at least 10"):
        evaluate(medium_npz, small, **quiet)
    big = tmp_path / "big.npz"
    np.savez(big, images=np.zeros((20, 64, 64), np.uint8))
    with pytest.raises(MedsynthError, match=r"shape \[1, 64, 64\].*--image-size"):
        evaluate(medium_npz, big, **quiet)
    # --image-size resizes the real files' sets to a 64 px model's size
    resized = evaluate(medium_npz, big, image_size=64, utility=False, out=tmp_path / "m.json", **quiet)
    assert resized["sets"]["real"]["shape"] == [1, 64, 64] == resized["sets"]["train"]["shape"]
    nan = tmp_path / "nan.npz"
    arr = np.zeros((20, 28, 28), np.float32)
    arr[3, 0, 0] = np.nan
    np.savez(nan, images=arr)
    with pytest.raises(MedsynthError, match="NaN"):
        evaluate(medium_npz, nan, **quiet)
    big_real = tmp_path / "bigreal.npz"
    np.savez(big_real, test_images=np.zeros((20, 64, 64), np.uint8), train_images=np.zeros((20, 64, 64), np.uint8))
    with pytest.raises(MedsynthError, match="trained on images of size"):
        evaluate(big_real, big, features=feature_run, **quiet)


def test_compare_marks_a_best_run_only_where_intervals_do_not_overlap(tmp_path, capsys):
    """Three evaluations: FID 10 [9, 11], 3 [2.5, 3.5] and 3.2 [2.9, 3.6]: the two good ones overlap,
    so no run is marked on FID; precision 0.9 [0.85, 0.95] is clear of 0.5 [0.4, 0.6] and 0.6
    [0.55, 0.7], so it is marked. The HTML page parses and holds the same rows."""
    from conftest import run_cli

    def ev(fid, fid_iv, prec, prec_iv):
        return {"fidelity": {"fid": fid, "fid_interval": fid_iv, "precision": prec, "precision_interval": prec_iv},
                "diversity": {"fake": {"ms_ssim_mean": 0.3}, "real": {"ms_ssim_mean": 0.4}, "gap": -0.25}}

    files = []
    for name, e in (("a", ev(10.0, [9, 11], 0.9, [0.85, 0.95])), ("b", ev(3.0, [2.5, 3.5], 0.5, [0.4, 0.6])),
                    ("c", ev(3.2, [2.9, 3.6], 0.6, [0.55, 0.7]))):
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps(e))
    code, _ = run_cli(capsys, "compare", *files, "--out", tmp_path / "c.html")
    from medsynth.compare import compare

    md = compare(files)
    fid = next(line for line in md.splitlines() if line.startswith("| FID"))
    precision = next(line for line in md.splitlines() if line.startswith("| precision"))
    assert "**" not in fid and "**0.9 [0.85, 0.95]**" in precision
    assert "mean pairwise MS-SSIM | near real | 0.3 | 0.3 | 0.3" in md  # "near real": shown, never ranked
    assert "MS-SSIM gap to the real set (relative) | near floor | -0.25 | -0.25 | -0.25" in md  # the section's own key
    assert code == 0
    rows = metric_rows((tmp_path / "c.html").read_text())
    assert rows[0][0] == "FID (domain features)" and len(rows[0]) == 5
    with pytest.raises(MedsynthError, match="at least two runs"):
        compare(files[:1])


def test_the_diversity_gap_row_says_why_it_has_no_floor():
    """Without a second held-out real split the gap row's floor cell gives the reason, not a dash."""
    from medsynth.report import metric_table

    ev = {"diversity": {"fake": {"ms_ssim_mean": 0.45}, "real": {"ms_ssim_mean": 0.5}, "gap": -0.1},
          "floor": {"diversity": {"not_computed": "needs a second held-out real split"}}}
    row = next(r for r in metric_table(ev)["rows"] if r[0]["text"].startswith("MS-SSIM gap"))
    assert row[1]["text"] == "-0.1" and row[2]["text"] == "not computed: needs a second held-out real split"
    ev["floor"]["diversity"] = {"ms_ssim_mean": 0.47, "gap": -0.06}
    row = next(r for r in metric_table(ev)["rows"] if r[0]["text"].startswith("MS-SSIM gap"))
    assert row[2]["text"] == "-0.06"
