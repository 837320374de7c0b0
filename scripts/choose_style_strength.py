#!/usr/bin/env python3
"""Chooses each style's shipped strength on data other than its test files.

A style's held-out files (the split `train-style --val-fraction 0.2 --seed 3` makes, as in
scripts/train_bundled.sh) report its quality, so they must not choose its strength. Here the
style's *training* files are split again (--val-fraction 0.25 --seed 5) into a fitting part
and a development part; a development adapter is trained on the fitting part with the
shipped recipe, and `continuo eval` runs it on the development files at several strengths.
The strength whose continuations are closest to the true ones (the geometric mean over the
six coherence figures of model / Markov chain, the chain fitted on the fitting part) wins;
the shipped style, trained on all its training files, is then set to it with
scripts/set_style_alpha.py.

Usage: python3 scripts/choose_style_strength.py [--weights assets/continuo_base.safetensors]
       [--styles folk,chorale,ragtime] [--strengths 0.25,0.5,0.75,1.0]
"""
import argparse
import json
import os
import sys

from runs import CONFIG, CONTINUO, closeness, link_files, run

# name: (data folder, epochs, augmented copies, extra train-style options), as in train_bundled.sh
STYLES = {
    "folk": ("data/styles/folk", 3, 1, ["--velocity-range", "1:1"]),
    "chorale": ("data/styles/chorale", 3, 2, ["--velocity-range", "1:1"]),
    "ragtime": ("data/styles/ragtime", 6, 1,
                ["--instrument", "0", "--velocity-range", "1:1", "--tempo-range", "0.5:2"]),
}






def split(weights, folder, fraction, seed, extra):
    return json.loads(run([CONTINUO, "train-style", "--config", CONFIG, "--weights", weights,
                           "--data", folder, "--out", "/tmp/unused.safetensors",
                           "--val-fraction", fraction, "--seed", seed, "--dry-run",
                           *extra]))["split"]




def main():
    p = argparse.ArgumentParser()
    p.add_argument("--weights", default="assets/continuo_base.safetensors")
    p.add_argument("--styles", default="folk,chorale,ragtime")
    p.add_argument("--strengths", default="0.25,0.5,0.75,1.0")
    p.add_argument("--out", default="data/style-strength")
    p.add_argument("--max-prompts", default="16")
    a = p.parse_args()
    chosen = {}
    for name in a.styles.split(","):
        folder, epochs, copies, extra = STYLES[name]
        base = os.path.join(a.out, name)
        held_out = split(a.weights, folder, "0.2", "3", extra)
        pool = os.path.join(base, "pool")
        link_files(held_out["train_files"], folder, pool)
        dev = split(a.weights, pool, "0.25", "5", extra)
        link_files(dev["val_files"], pool, os.path.join(base, "dev"))
        link_files(dev["train_files"], pool, os.path.join(base, "fit"))
        adapter = os.path.join(base, "dev_adapter.safetensors")
        run([CONTINUO, "train-style", "--config", CONFIG, "--weights", a.weights, "--data", pool,
             "--out", adapter, "--rank", "8", "--alpha", "32", "--epochs", str(epochs),
             "--lr", "1e-3", "--context", "256", "--batch-size", "1", "--val-fraction", "0.25",
             "--augment-copies", str(copies), "--seed", "5", *extra])
        results = []
        for s in ["0"] + a.strengths.split(","):
            lora = [] if s == "0" else ["--lora", adapter, "--lora-strength", s]
            js = os.path.join(base, f"strength_{s}.json")
            run([CONTINUO, "eval", "--config", CONFIG, "--weights", a.weights, *lora,
                 "--data", os.path.join(base, "dev"), "--train-data", os.path.join(base, "fit"),
                 "--prompt-notes", "32", "--notes", "32", "--max-prompts", a.max_prompts,
                 "--context", "256", "--json", js])
            r = json.load(open(js))
            loss = {x["name"]: x["loss"]["per_note"] for x in r["systems"]}["model"]
            results.append((float(s), closeness(r), loss, r["prompts"]))
            print(f"{name} strength {s}: closeness {results[-1][1]:.3f}, loss {loss:.3f}, "
                  f"{r['prompts']} prompts", file=sys.stderr)
        best = min((r for r in results if r[0] > 0), key=lambda r: r[1])
        chosen[name] = best[0]
        print(f"\n{name}: development files {', '.join(os.path.basename(f) for f in dev['val_files'])}")
        print("| strength | closeness (model / Markov, geometric mean) | loss per note | prompts |")
        print("|---|---|---|---|")
        for s, c, l, n in results:
            mark = " (chosen)" if s == best[0] else ""
            print(f"| {s:g}{mark} | {c:.3f} | {l:.3f} | {n} |")
    print("\nchosen:", json.dumps(chosen))


if __name__ == "__main__":
    main()
