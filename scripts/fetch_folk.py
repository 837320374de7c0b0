#!/usr/bin/env python3
"""Exports the Irish Folk Tune style's training and test tunes from O'Neill's *Music of
Ireland* (1850) as the music21 corpus carries it (PyPI `music21` 10.5.1, installed here if
missing; public-domain tunes, music21's code BSD-3). Nothing here is committed.

Issue #15 reserves tunes 51-200 for evaluation: they go to --test and to no training set.
The training tunes are 1-50 and 201 up to --last (the corpus runs to 1850). Each tune is one
MIDI file named by its number in the book (`oneills_0123.mid`), as music21 writes it: one
melody line at velocity 90, the tempo of its abc header (or music21's default). A number that
two abc files of the corpus both carry (a few alternative settings) is taken once, from the
first file in path order. Tunes music21 cannot read or write are skipped and counted.

Usage: python3 scripts/fetch_folk.py [--train data/styles/folk] [--test data/styles-test/folk]
       [--last 600]
"""
import argparse
import os
import subprocess
import sys

RESERVED = range(51, 201)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--train", default="data/styles/folk", help="folder for the training tunes")
    p.add_argument("--test", default="data/styles-test/folk", help="folder for tunes 51-200")
    p.add_argument("--last", type=int, default=600, help="the last tune number to train on")
    a = p.parse_args()
    try:
        import music21  # noqa: F401
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "music21==10.5.1"], check=True)
    from music21 import corpus

    for folder in (a.train, a.test):
        os.makedirs(folder, exist_ok=True)
        for f in os.listdir(folder):
            if f.endswith(".mid"):
                os.remove(os.path.join(folder, f))
    paths = sorted(str(p) for p in corpus.getPaths() if "oneills1850" in str(p))
    seen, skipped, written = set(), 0, {"train": 0, "test": 0}
    for path in paths:
        first = int(os.path.basename(path)[:4])
        if first > a.last:
            continue
        parsed = corpus.parse(path)
        scores = parsed.scores if hasattr(parsed, "scores") else [parsed]  # one tune: a Score
        for score in scores:
            try:
                number = int(score.metadata.number)
            except (TypeError, ValueError):
                skipped += 1
                continue
            if number in seen or number > a.last:
                continue
            seen.add(number)
            role = "test" if number in RESERVED else "train"
            out = os.path.join(a.test if role == "test" else a.train, "oneills_%04d.mid" % number)
            try:
                score.write("midi", fp=out)
                written[role] += 1
            except Exception as e:  # a few tunes have repeats music21 cannot expand
                print(f"skip tune {number}: {e}", file=sys.stderr)
                skipped += 1
    print(f"{written['train']} training tunes in {a.train}, {written['test']} test tunes "
          f"(51-200) in {a.test}, {skipped} skipped")


if __name__ == "__main__":
    main()
