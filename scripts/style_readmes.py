#!/usr/bin/env python3
"""Writes the quality part of each shipped style's card (lora-weights/<style>/README.md).

Reads what scripts/eval_styles.py left in data/style-eval/<style>/{base,style}.json and what
scripts/choose_style_strength.py left in data/style-strength/<style>/strength_*.json, plus each
style's training log (data/style_<style>.log, written by the caller), and rewrites everything
of the README below its "## Quality" heading. The text above it (data, licence) is kept.

Usage: python3 scripts/style_readmes.py [--styles folk,chorale,ragtime]
"""
import argparse
import glob
import json
import os

from runs import closeness

FIGURES = ["\\|ln nps\\|", "mean pitch", "pitch range", "pitch class", "mean velocity", "inter-onset"]


def load(path):
    with open(path) as f:
        return json.load(f)


def quality(name):
    base = load(f"data/style-eval/{name}/base.json")
    style = load(f"data/style-eval/{name}/style.json")
    loss = lambda r, s: {x["name"]: x["loss"]["per_note"] for x in r["systems"]}[s]
    coh = lambda r: {c["name"]: c for c in r["coherence"]}
    lb, ls, lm, lu = loss(base, "model"), loss(style, "model"), loss(base, "markov"), loss(base, "unigram")
    cb, cs = coh(base)["model"]["medians"], coh(style)["model"]["medians"]
    cm, cr = coh(base)["markov"]["medians"], coh(base)["repeat_last_bar"]["medians"]
    wins = sum(s < m for s, m in zip(cs, cm))
    closer = sum(s < b for s, b in zip(cs, cb))
    lines = [
        "## Quality (`continuo eval` on the held-out files, with and without the style)",
        "",
        f"`python3 scripts/eval_styles.py` ({style['prompts']} prompts of {style['prompt_notes']} notes "
        f"from the held-out pieces, {style['continuation_notes']} notes generated for each, "
        "temperature 0.9, top-p 0.95; the baselines are fitted on the style's training files).",
        "",
        f"- Held-out loss per note: {lb:.3f} nats for the base alone, **{ls:.3f}** with the style "
        f"({100 * (lb - ls) / lb:.1f} % lower). A first-order Markov chain fitted on the style's "
        f"training files reaches {lm:.3f}, a unigram model {lu:.3f}.",
        f"- Coherence with each prompt's true continuation (medians, lower is closer): the style "
        f"is closer than the base on {closer} of 6 figures and closer than the Markov chain on "
        f"{wins} of 6.",
        "",
        "| system | " + " | ".join(FIGURES) + " |",
        "|---" * (len(FIGURES) + 1) + "|",
    ]
    for label, med in [("base", cb), ("**with the style**", cs), ("Markov chain", cm),
                       ("repeat the last bar", cr)]:
        lines.append(f"| {label} | " + " | ".join("n/a" if m is None else f"{m:.3f}" for m in med) + " |")
    stats = style["statistics"]
    db = {x["name"]: x["distances"] for x in base["systems"]}["model"]
    ds = {x["name"]: x["distances"] for x in style["systems"]}["model"]
    n_closer = sum(s < b for s, b in zip(ds, db))
    lines += [
        "",
        f"Pooled statistics of the generated against the true continuations (total variation, "
        f"lower is closer): the style is closer on {n_closer} of {len(stats)}.",
        "",
        "| statistic | base | with the style |",
        "|---|---|---|",
    ]
    lines += [f"| {s} | {b:.3f} | {x:.3f} |" for s, b, x in zip(stats, db, ds)]
    valid = sum(x["valid_notes"] for x in style["systems"] if x["name"] == "model")
    total = sum(x["generated_notes"] for x in style["systems"] if x["name"] == "model")
    lines += ["", f"Valid MIDI: {valid} of {total} generated notes.", ""]
    # Strength
    rows = []
    for path in sorted(glob.glob(f"data/style-strength/{name}/strength_*.json")):
        s = float(os.path.basename(path)[len("strength_"):-len(".json")])
        r = load(path)
        rows.append((s, closeness(r), loss(r, "model"), r["prompts"]))
    rows.sort()
    if rows:
        best = min((r for r in rows if r[0] > 0), key=lambda r: r[1])[0]
        lines += [
            "## Strength",
            "",
            f"Shipped at strength {best:g} of the trained adapter (alpha {32 * best:g} of 32). Chosen "
            "by `scripts/choose_style_strength.py` on development files carved out of the style's "
            "*training* files (a development adapter is trained on the rest), never on the "
            "held-out files above: the strength whose continuations are closest to the true ones "
            "(geometric mean over the six coherence figures of model / Markov chain). The "
            "plugin's style strength (0-1.5) scales from the shipped level.",
            "",
            "| strength | closeness (model / Markov) | loss per note | prompts |",
            "|---|---|---|---|",
        ]
        lines += [f"| {s:g}{' (chosen)' if s == best else ''} | {c:.3f} | {l:.3f} | {n} |"
                  for s, c, l, n in rows]
        lines.append("")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--styles", default="folk,chorale,ragtime", help="the cards to rewrite")
    for name in p.parse_args().styles.split(","):
        path = f"lora-weights/{name}/README.md"
        text = open(path).read()
        head = text.split("## Quality")[0].rstrip() + "\n\n"
        with open(path, "w") as f:
            f.write(head + quality(name))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
