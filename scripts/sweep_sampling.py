#!/usr/bin/env python3
"""Chooses the sampling defaults from the coherence figures of `continuo eval`.

Runs `continuo eval` on the validation split (never the test split, which reports the
result) for every temperature and top-p in the grid, plus greedy decoding with and without
the stacked-note guard, and prints one row per setting: the model's median coherence
figures, each divided by the first-order Markov chain's on the same prompts (below 1 is
closer to the true continuation than the chain), their geometric mean, how many of the six
figures beat the chain, and the share of stacked notes. The JSON reports go to --out.

Usage: python3 scripts/sweep_sampling.py [--weights assets/continuo_base.safetensors]
       [--temperatures 0.7,0.85,1.0,1.15] [--top-p 0.9,0.95,0.98] [--max-prompts 32]
"""
import argparse
import json
import math
import os
import subprocess
import sys

from runs import CONFIG, CONTINUO, closeness, markov_ratios



def evaluate(args, name, sampling):
    path = os.path.join(args.out, f"{name}.json")
    cmd = [CONTINUO, "eval", "--config", CONFIG, "--weights", args.weights,
           "--data", args.data, "--train-data", args.train_data,
           "--max-prompts", str(args.max_prompts), "--context", "512",
           "--json", path] + sampling
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr}")
    with open(path) as f:
        return json.load(f)


def row(name, report):
    model = report["coherence"][0]
    ratios = markov_ratios(report)
    finite = [r for r in ratios if not math.isnan(r)]
    geo = closeness(report)
    wins = sum(1 for r in finite if r < 1)
    cells = " | ".join(f"{r:.2f}" for r in ratios)
    return geo, (f"| {name} | {cells} | {geo:.3f} | {wins}/6 | "
                 f"{100 * model['stacked']:.1f} % | {model['unscored']} |")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--weights", default="assets/continuo_base.safetensors")
    p.add_argument("--data", default="data/manifest.json:val")
    p.add_argument("--train-data", default="data/corpus/train/piano-performance")
    p.add_argument("--temperatures", default="0.7,0.85,1.0,1.15")
    p.add_argument("--top-p", default="0.9,0.95,0.98")
    p.add_argument("--max-prompts", type=int, default=32)
    p.add_argument("--seed", default="11")
    p.add_argument("--out", default="data/sweep")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    settings = [("greedy, reference decoding", ["--greedy", "--allow-stacked"]),
                ("greedy", ["--greedy"])]
    for t in args.temperatures.split(","):
        for top_p in args.top_p.split(","):
            settings.append((f"T {t}, top-p {top_p}",
                             ["--temperature", t, "--top-p", top_p, "--seed", args.seed]))
    header = None
    lines = []
    for name, sampling in settings:
        report = evaluate(args, name.replace(" ", "_").replace(",", ""), sampling)
        if header is None:
            figures = " | ".join(report["coherence_figures"])
            header = (f"| setting | {figures} | geometric mean | beats Markov | stacked | unscored |\n"
                      + "|---" * (len(report["coherence_figures"]) + 5) + "|")
        geo, line = row(name, report)
        lines.append(line)
        print(line, file=sys.stderr)
    print(f"model / Markov median coherence distance on {args.data}, "
          f"{report['prompts']} prompts of {report['prompt_notes']} notes, "
          f"{report['continuation_notes']} generated:")
    print(header)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
