#!/usr/bin/env python3
"""An independent style check (issue #15): does an answer sound like its style?

A nearest-centroid classifier, independent of the model, is fitted on 32-note windows of the
training files of four corpora (the piano performances' training split, and the training
files of the Folk, Chorale and Ragtime styles), on features of the notes alone: density,
register, polyphony, inter-onset and duration distributions, dynamics, melodic intervals and
a key-independent pitch-class profile. It then labels 32-note continuations of each style's
held-out files (the first 32 notes are the prompt):

- the true music after each prompt, in 32-note windows (how well the check recognises real
  music of that style it has not seen);
- the bundled base alone (does the base continue in the prompt's style?);
- the base with the style (does the style move the answer toward its style?).

Each held-out prompt is continued with several seeds at the plugin's sampling (temperature
1.0, top-p 0.95). Prints one row per style: the share labelled as the style. Nothing here is
chosen on these files; they only report.

Usage: python3 scripts/style_check.py [--seeds 5] [--out data/style-check]
"""
import argparse
import json
import math
import os
import sys

from runs import CONFIG, CONTINUO, run, test_files

WINDOW = 32
STYLES = {  # name: (data folder, extra train-style options)
    "folk": ("data/styles/folk", []),
    "chorale": ("data/styles/chorale", []),
    "ragtime": ("data/styles/ragtime", ["--instrument", "0"]),
}
MAJOR = [6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88]


def tokens(path):
    return json.loads(run([CONTINUO, "tokens", path]))


def features(rows):
    """A fixed-length description of a window of compound notes (10 ms ticks)."""
    rows = sorted(rows, key=lambda r: r[0])
    n = len(rows)
    pitch = [12 * r[2] + r[3] for r in rows]
    onsets = sorted({r[0] for r in rows})
    span = max(onsets[-1] - onsets[0], 1) * 0.01
    mean_p = sum(pitch) / n
    sd_p = math.sqrt(sum((p - mean_p) ** 2 for p in pitch) / n)
    iois = [(b - a) * 0.01 for a, b in zip(onsets, onsets[1:])]
    edges = [0.07, 0.14, 0.28, 0.56, 1.12]
    ioi_hist = [0.0] * (len(edges) + 1)
    for x in iois:
        ioi_hist[sum(x > e for e in edges)] += 1
    ioi_hist = [c / max(len(iois), 1) for c in ioi_hist]
    durs = [math.log(max(r[1], 1) * 0.01) for r in rows]
    mean_d = sum(durs) / n
    sd_d = math.sqrt(sum((d - mean_d) ** 2 for d in durs) / n)
    vel = [r[5] for r in rows]
    mean_v = sum(vel) / n
    sd_v = math.sqrt(sum((v - mean_v) ** 2 for v in vel) / n)
    steps = [abs(b - a) for a, b in zip(pitch, pitch[1:])]
    step_edges = [0, 2, 4, 7, 12]
    step_hist = [0.0] * (len(step_edges) + 1)
    for s in steps:
        step_hist[sum(s > e for e in step_edges)] += 1
    step_hist = [c / max(len(steps), 1) for c in step_hist]
    pcs = [0.0] * 12
    for p in pitch:
        pcs[p % 12] += 1.0 / n
    # Rotate the profile to its best-matching major key, so the key does not count.
    best = max(range(12), key=lambda k: sum(pcs[(k + i) % 12] * MAJOR[i] for i in range(12)))
    pcs = [pcs[(best + i) % 12] for i in range(12)]
    return ([math.log(n / span), mean_p / 12, sd_p / 12, math.log(n / len(onsets)),
             mean_d, sd_d, mean_v / 32, sd_v / 32] + ioi_hist + step_hist + pcs)


def windows(rows, most=20):
    out = []
    for start in range(0, len(rows) - WINDOW + 1, WINDOW):
        out.append(rows[start:start + WINDOW])
        if len(out) == most:
            break
    return out


class Centroids:
    """Nearest centroid on features scaled by their pooled standard deviation."""

    def __init__(self, labelled):
        dims = len(next(iter(labelled.values()))[0])
        every = [f for fs in labelled.values() for f in fs]
        mean = [sum(f[i] for f in every) / len(every) for i in range(dims)]
        self.scale = [math.sqrt(sum((f[i] - mean[i]) ** 2 for f in every) / len(every)) or 1.0
                      for i in range(dims)]
        self.centres = {label: [sum(f[i] for f in fs) / len(fs) / self.scale[i]
                                for i in range(dims)]
                        for label, fs in labelled.items()}

    def label(self, f):
        x = [v / s for v, s in zip(f, self.scale)]
        return min(self.centres, key=lambda c: sum((a - b) ** 2 for a, b in zip(x, self.centres[c])))


def split_of(name, folder, extra, weights):
    out = run([CONTINUO, "train-style", "--config", CONFIG, "--weights", weights, "--data",
               folder, "--out", "/tmp/unused.safetensors", "--val-fraction", "0.2", "--seed",
               "3", "--dry-run", *extra])
    return json.loads(out)["split"]


def continuation(path, weights, lora, seed, out):
    for f in (out + ".mid", out + ".json"):
        if os.path.exists(f):
            os.remove(f)
    run([CONTINUO, "continue", "--config", CONFIG, "--weights", weights, "--midi", path,
         "--prompt-notes", str(WINDOW), "--notes", str(WINDOW), "--temperature", "1.0",
         "--top-p", "0.95", "--seed", str(seed), "--out", out + ".mid", "--json",
         out + ".json"] + lora)
    with open(out + ".json") as f:
        return json.load(f)["generated_only"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--weights", default="assets/continuo_base.safetensors")
    p.add_argument("--styles", default="lora-weights")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--out", default="data/style-check")
    p.add_argument("--only", default=",".join(STYLES),
                   help="the styles whose answers are checked (all still label the windows)")
    p.add_argument("--most-test-files", type=int, default=20,
                   help="at most this many files of a reserved test corpus (folk has 138)")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    manifest = json.load(open("data/manifest.json"))
    train = {"piano": [os.path.join("data", e["file"]) for e in manifest
                       if e["split"] == "train" and e["style"] == "piano-performance"]}
    held_out = {}
    for name, (folder, extra) in STYLES.items():
        split = split_of(name, folder, extra, a.weights)
        train[name] = [os.path.join(folder, f) for f in split["train_files"]]
        root, files = test_files(name, split, most=a.most_test_files)
        held_out[name] = [os.path.join(root or folder, f) for f in files]
    labelled = {label: [features(w) for f in files for w in windows(tokens(f))]
                for label, files in train.items()}
    check = Centroids(labelled)
    print("training windows: " + ", ".join(f"{k} {len(v)}" for k, v in labelled.items()),
          file=sys.stderr)
    rows = []
    for name in a.only.split(","):
        style = os.path.join(a.styles, name, f"{name}.safetensors")
        counts = {"true": [0, 0], "base": [0, 0], "style": [0, 0]}
        for i, path in enumerate(held_out[name]):
            notes = tokens(path)
            if len(notes) < 2 * WINDOW:
                continue
            # Every 32-note window of the held-out file after its prompt.
            for w in windows(notes[WINDOW:]):
                counts["true"][0] += check.label(features(w)) == name
                counts["true"][1] += 1
            for label, lora in (("base", []), ("style", ["--lora", style])):
                for seed in range(1, a.seeds + 1):
                    out = os.path.join(a.out, f"{name}-{i}-{label}-{seed}")
                    gen = continuation(path, a.weights, lora, seed, out)
                    if len(gen) >= 8:
                        counts[label][0] += check.label(features(gen)) == name
                        counts[label][1] += 1
        rows.append((name, counts))
    print("| style | held-out music after the prompt | base alone | base + style |")
    print("|---|---|---|---|")
    for name, c in rows:
        cell = lambda k: f"{100 * c[k][0] / max(c[k][1], 1):.0f} % ({c[k][0]}/{c[k][1]})"
        print(f"| {name} | {cell('true')} | {cell('base')} | {cell('style')} |")


if __name__ == "__main__":
    main()
