#!/usr/bin/env python3
"""Exports test files for the Bach Chorale style: Bach chorales from the music21 corpus (PyPI
`music21` 10.5.1, installed here if missing; public-domain works, music21's code BSD-3).
Nothing here is committed.

Issue #15 reserves music21's `bach` corpus for evaluation, except the 20 chorales in
../shared/midi-samples/m21_bach_chorales that the style trains on. Those 20 are named by BWV
number only (`bwv153.mid`), so every movement of those 20 works is left out here (bwv153.1,
bwv153.5, ...), not only the one that was exported. Of the rest, the four-part scores are
taken in path order, at most --most of them, each written as music21 writes MIDI (all parts
at velocity 90, in one file).

Usage: python3 scripts/fetch_chorale_tests.py [--out data/styles-test/chorale] [--most 80]
       [--train ../shared/midi-samples/m21_bach_chorales]
"""
import argparse
import os
import re
import subprocess
import sys


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="data/styles-test/chorale")
    p.add_argument("--most", type=int, default=80, help="at most this many chorales")
    p.add_argument("--train", default="../shared/midi-samples/m21_bach_chorales",
                   help="the style's training chorales, whose works are left out")
    a = p.parse_args()
    try:
        import music21  # noqa: F401
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "music21==10.5.1"], check=True)
    from music21 import corpus

    bwv = lambda name: (re.match(r"bwv(\d+)", os.path.basename(name)) or [None, None])[1]
    trained = {bwv(f) for f in os.listdir(a.train)}
    os.makedirs(a.out, exist_ok=True)
    for f in os.listdir(a.out):
        if f.endswith(".mid"):
            os.remove(os.path.join(a.out, f))
    paths = sorted(str(p) for p in corpus.getComposer("bach") if bwv(str(p)))
    written, left_out, skipped = 0, 0, 0
    for path in paths:
        if written >= a.most:
            break
        if bwv(path) in trained:
            left_out += 1
            continue
        try:
            score = corpus.parse(path)
            if len(score.parts) != 4:
                skipped += 1
                continue
            name = os.path.splitext(os.path.basename(path))[0].replace(".", "_")
            score.write("midi", fp=os.path.join(a.out, name + ".mid"))
            written += 1
        except Exception as e:  # a few scores have repeats music21 cannot expand
            print(f"skip {path}: {e}", file=sys.stderr)
            skipped += 1
    print(f"{written} chorales in {a.out}; {left_out} movements of the training works left "
          f"out, {skipped} skipped (not four parts, or unreadable)")


if __name__ == "__main__":
    main()
