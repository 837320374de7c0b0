#!/usr/bin/env python3
"""Measures what each augmentation of `train-base` contributes (issue #15, item 2).

From the same start (continuo-base-v2, taken from git history: it was trained without any
augmentation), one epoch per variant with the v3 recipe, each variant turning one
augmentation off or narrowing it:

- full:           transposition over the piano, tempo x0.5-x2, velocity x0.6-x1.5 and +-20
- no-tempo:       --tempo-range 1:1
- no-velocity:    --velocity-range 1:1 --velocity-shift 0
- narrow-transpose: --transpose 5 (a fifth either way, the style trainer's default)

Then `continuo eval` on the validation split (never the test split) at the demo's sampling,
and one row per variant: validation loss per note, and each coherence median divided by the
Markov chain's. A run that stops goes on where it stopped (`--resume`) when the script is
started again; finished variants are not trained twice. Checkpoints, logs and reports go to
--out (outside git).

Usage: nice -n 19 python3 scripts/ablate_augmentation.py [--variants full,no-tempo]
"""
import argparse
import json
import os
import subprocess
import sys

from runs import CONFIG, CONTINUO, closeness, markov_ratios, run

# Each variant spelled out in full, so it does not depend on train-base's defaults (which
# dropped the velocity augmentation after this ablation): v3's wide augmentation with one
# part turned off or narrowed.
def v3(**change):
    flags = {"--transpose": "87", "--tempo-range": "0.5:2", "--velocity-range": "0.6:1.5",
             "--velocity-shift": "20"}
    flags.update(change)
    return [x for pair in flags.items() for x in pair]


VARIANTS = {
    "full": v3(),
    "no-tempo": v3(**{"--tempo-range": "1:1"}),
    "no-velocity": v3(**{"--velocity-range": "1:1", "--velocity-shift": "0"}),
    "narrow-transpose": v3(**{"--transpose": "5"}),
}
V2_COMMIT = "37dd86a"  # the commit that shipped continuo-base-v2


def train(args, name, extra):
    out = os.path.join(args.out, f"{name}.safetensors")
    if os.path.exists(out) and not os.path.exists(out + ".resume"):
        return out
    cmd = [CONTINUO, "train-base", "--config", CONFIG, "--init", args.init,
           "--data", args.train_data, "--out", out, "--force", "--epochs", "1",
           "--context", "512", "--batch-size", "4", "--lr", "5e-4", "--gamma", "0.85",
           "--val-fraction", "0.05", "--seed", "7", "--augment-copies", "1"] + extra
    if os.path.exists(out + ".resume"):
        cmd.append("--resume")
    with open(os.path.join(args.out, f"{name}.log"), "a") as log:
        print(f"training {name}: {' '.join(cmd)}", file=sys.stderr)
        if subprocess.run(cmd, stdout=log, stderr=log).returncode != 0:
            sys.exit(f"training {name} failed; see {args.out}/{name}.log")
    return out


def evaluate(args, name, weights):
    path = os.path.join(args.out, f"{name}.json")
    if not os.path.exists(path):
        run([CONTINUO, "eval", "--config", CONFIG, "--weights", weights,
             "--data", args.data, "--train-data", args.train_data,
             "--max-prompts", "32", "--context", "512", "--temperature", "1.0",
             "--top-p", "0.9", "--seed", "11", "--json", path])
    with open(path) as f:
        return json.load(f)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--data", default="data/manifest.json:val")
    p.add_argument("--train-data", default="data/corpus/train/piano-performance")
    p.add_argument("--out", default="data/ablate")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    args.init = os.path.join(args.out, "base_v2.safetensors")
    if not os.path.exists(args.init):
        blob = subprocess.run(["git", "show", f"{V2_COMMIT}:assets/continuo_base.safetensors"],
                              capture_output=True, check=True).stdout
        with open(args.init, "wb") as f:
            f.write(blob)
    rows = []
    for name in args.variants.split(","):
        report = evaluate(args, name, train(args, name, VARIANTS[name]))
        loss = {s["name"]: s["loss"]["per_note"] for s in report["systems"]}
        ratios = " | ".join(f"{r:.2f}" for r in markov_ratios(report))
        wins = sum(1 for r in markov_ratios(report) if r < 1)
        rows.append(f"| {name} | {loss['model']:.3f} (Markov {loss['markov']:.3f}) | {ratios} | "
                    f"{closeness(report):.3f} | {wins}/6 |")
        print(rows[-1], file=sys.stderr)
    figures = " | ".join(report["coherence_figures"])
    print(f"one epoch from continuo-base-v2 per variant; {args.data}, "
          f"{report['prompts']} prompts; model / Markov median coherence distance")
    print(f"| variant | loss/note | {figures} | geometric mean | beats Markov |")
    print("|---" * (len(report["coherence_figures"]) + 4) + "|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
