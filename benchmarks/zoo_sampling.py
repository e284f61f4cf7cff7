"""A zoo row with its sampler of choice: the same trained run drawn with other samplers, step counts
and classifier-free guidance scales (latent diffusion) or from the other prior (a VAE-family run
trained with model.latent_prior=gmm: its mixture or N(0, I)), each set audited exactly as the zoo
audits its rows (`medsynth evaluate` against the real test split in the zoo's feature network of the
row's image size, with intervals, memorisation and TSTR), and the "how far from each goal" table.

    python benchmarks/zoo_sampling.py --zoo runs/bench_zoo_full/zoo.json \\
        --settings dpmpp_sde:20:none dpmpp_sde:20:1.5 dpmpp_sde:20:2 dpmpp_sde:20:3 --out runs/bench_zoo_full/sampling.json
    python benchmarks/zoo_sampling.py --zoo runs/bench_zoo_quick/zoo.json --quick --settings dpmpp_sde:10:none dpmpp_sde:10:2

    python benchmarks/zoo_sampling.py --zoo runs/bench_zoo_full/zoo_gmm_cond.json --recipe vaegan_pneumonia64 \
        --settings prior:normal --out runs/bench_zoo_full/sampling_cond_prior.json

A setting is SAMPLER:STEPS:GUIDANCE ("none": the conditional model alone, as the zoo row), or
prior:normal / prior:mixture for a VAE-family row (`medsynth sample --prior`). Nothing
is retrained: the differences between rows come from sampling alone. The zoo row itself is
printed first for reference (its run drew with the run's defaults at evaluation time).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _cli import medsynth
from vae_zoo import DATASETS, RECIPES, gaps, image_size, row, table, real_test_count


def parse_setting(spec: str) -> list[str]:
    """The `medsynth sample` options of one setting."""
    if spec in ("prior:normal", "prior:mixture"):
        return ["--prior", spec.split(":")[1]]
    try:
        sampler, steps, guidance = spec.split(":")
        return ["--sampler", sampler, "--steps", str(int(steps)),
                *([] if guidance == "none" else ["--guidance", str(float(guidance))])]
    except ValueError:
        raise SystemExit(f"--settings: {spec!r} is neither SAMPLER:STEPS:GUIDANCE (e.g. dpmpp_sde:20:2 or "
                         "ddim:50:none) nor prior:normal / prior:mixture")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zoo", required=True, help="a vae_zoo.py --out JSON whose runs to draw from")
    parser.add_argument("--dataset", default="pneumoniamnist", choices=sorted(DATASETS))
    parser.add_argument("--recipe", default="ldm_pneumonia", help="the zoo row to draw from (a latent diffusion run, "
                                                                  "or a VAE-family run for prior:* settings)")
    parser.add_argument("--settings", nargs="+", required=True, metavar="SAMPLER:STEPS:GUIDANCE or prior:NAME")
    parser.add_argument("--quick", action="store_true", help="200 images audited, no intervals, 50 TSTR steps "
                                                             "(as vae_zoo.py --quick)")
    parser.add_argument("--out", help="also write the rows as JSON here")
    args = parser.parse_args()
    settings = {spec: parse_setting(spec) for spec in args.settings}

    zoo = json.loads(Path(args.zoo).read_text())
    try:
        entry = zoo[args.dataset]["rows"][args.recipe]
    except KeyError:
        raise SystemExit(f"{args.zoo} has no row {args.dataset}/{args.recipe}")
    run = Path(entry["run"])
    runs_dir = run.parent
    size = image_size(args.recipe)  # the zoo audits each row in the feature network of its image size
    features = sorted(runs_dir.glob(f"features{size}-*/features.json"))
    if not features:
        raise SystemExit(f"no {size} px feature network (features{size}-*) beside {run}: the zoo audited this row in one")
    data = str(DATASETS[args.dataset].resolve())
    audit = ["-n", "200", "--resamples", "0", "--utility-steps", "50"] if args.quick else []
    n_real = 200 if args.quick else real_test_count(data)

    rows = {f"{args.recipe} (zoo row)": {"minutes": None, **row(json.loads((run / "evaluation.json").read_text()))}}
    for name, options in settings.items():
        # the run's own name in the stem: two zoo files may hold rows of one recipe (e.g. plain and conditional)
        stem = runs_dir / f"sampling_{run.name}_{name.replace(':', '_')}"
        start = time.perf_counter()
        medsynth("sample", str(run), "-n", str(n_real), "--out", f"{stem}.npz", *options,
                 "--grid", f"{stem}.png", "--overwrite")
        minutes = (time.perf_counter() - start) / 60
        medsynth("evaluate", "--real", data, "--fake", f"{stem}.npz", "--features", str(features[-1].parent),
                 *(["--image-size", str(size)] if size != 28 else []), "--out", f"{stem}.json", "--overwrite", *audit)
        rows[name] = {"minutes": minutes, **row(json.loads(Path(f"{stem}.json").read_text()))}
        if args.out:
            Path(args.out).write_text(json.dumps({"run": str(run), "rows": rows}, indent=2))

    def label(name: str) -> str:
        return RECIPES[args.recipe][0] + ("" if name.endswith("(zoo row)") else f", {name}")

    print(f"\n{args.dataset}: {run} drawn with each setting (minutes: sampling only)\n{table(rows, label)}\n\n"
          f"how far from each goal:\n{gaps(rows, label)}")


if __name__ == "__main__":
    main()
