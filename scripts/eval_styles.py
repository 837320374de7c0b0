#!/usr/bin/env python3
"""Evaluates each shipped style on its own held-out files, with and without the style.

For every style, the split that `train-style` used (same folder, --val-fraction and --seed as
scripts/train_bundled.sh) is read back with `train-style --dry-run`; the held-out files and
the training files are linked into two folders under data/style-eval/<style>/, and
`continuo eval` runs twice (base alone, base + style), with the baselines fitted on the
training files. A style with a reserved test corpus (`runs.TEST_FOLDERS`: folk) is tested on
it instead of on the held-out part of its folder. The JSON reports go beside them; a summary
table is printed.

Usage: python3 scripts/eval_styles.py [--weights assets/continuo_base.safetensors]
       [--styles lora-weights] [--only folk,chorale,ragtime] [--out data/style-eval]
"""
import argparse
import json
import os

from runs import CONFIG, CONTINUO, link_files, run, test_files

STYLES = {  # name: (data folder, extra train-style options)
    "folk": ("data/styles/folk", []),
    "chorale": ("data/styles/chorale", []),
    "ragtime": ("data/styles/ragtime", ["--instrument", "0"]),
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--weights", default="assets/continuo_base.safetensors")
    p.add_argument("--styles", default="lora-weights")
    p.add_argument("--out", default="data/style-eval")
    p.add_argument("--max-prompts", default="16")
    p.add_argument("--only", default=",".join(STYLES), help="the styles to evaluate")
    a = p.parse_args()
    rows = []
    for name in a.only.split(","):
        folder, extra = STYLES[name]
        split = json.loads(run([CONTINUO, "train-style", "--config", CONFIG, "--weights", a.weights,
                                "--data", folder, "--out", "/tmp/unused.safetensors",
                                "--val-fraction", "0.2", "--seed", "3", "--dry-run", *extra]))["split"]
        base = os.path.join(a.out, name)
        root, held_out = test_files(name, split)
        link_files(held_out, root or folder, os.path.join(base, "held-out"))
        link_files(split["train_files"], folder, os.path.join(base, "train"))
        style = os.path.join(a.styles, name, f"{name}.safetensors")
        for label, lora in (("base", []), ("style", ["--lora", style])):
            js = os.path.join(base, f"{label}.json")
            run([CONTINUO, "eval", "--config", CONFIG, "--weights", a.weights, *lora,
                 "--data", os.path.join(base, "held-out"), "--train-data", os.path.join(base, "train"),
                 "--prompt-notes", "32", "--notes", "32", "--max-prompts", a.max_prompts,
                 "--context", "256", "--json", js])
            r = json.load(open(js))
            coh = {c["name"]: c for c in r["coherence"]}
            loss = {s["name"]: s["loss"]["per_note"] for s in r["systems"]}
            rows.append((name, label, loss["model"], loss["markov"],
                         coh["model"]["medians"], coh["markov"]["medians"],
                         sum(m < k for m, k in zip(coh["model"]["medians"], coh["markov"]["medians"])),
                         r["prompts"]))
    print("| style | model | loss/note | Markov loss | wins over Markov (of 6) | |ln nps| | mean pitch | pitch range | pitch class | mean velocity | inter-onset | prompts |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, label, l, lm, med, _mk, wins, n in rows:
        figs = " | ".join(f"{x:.3f}" for x in med)
        print(f"| {name} | {label} | {l:.3f} | {lm:.3f} | {wins} | {figs} | {n} |")
    print("\nMarkov chain (fitted on each style's training files):")
    for name, label, _l, _lm, _med, mk, _w, _n in rows:
        if label == "base":
            print(f"| {name} | markov | " + " | ".join(f"{x:.3f}" for x in mk) + " |")


if __name__ == "__main__":
    main()
