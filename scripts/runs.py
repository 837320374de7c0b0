"""What the evaluation scripts share: the binary, the bundled config, running a command,
linking a split's files into a folder, and the coherence summary against the Markov chain."""
import math
import os
import subprocess
import sys

CONTINUO = "target/release/continuo"
CONFIG = "assets/configs/continuo_base.json"

# Styles whose test files are a corpus of their own, reserved for evaluation (issue #15), and
# not the validation part of their training folder: folk's are O'Neill's tunes 51-200
# (scripts/fetch_folk.py), chorale's 80 Bach chorales of works it does not train on
# (scripts/fetch_chorale_tests.py). Ragtime, with no other rags to be had, is tested on the
# files `train-style --val-fraction 0.2 --seed 3` holds out of its folder.
TEST_FOLDERS = {"folk": "data/styles-test/folk", "chorale": "data/styles-test/chorale"}


def test_files(name, split, most=None):
    """A style's test files as (root, paths relative to it): its reserved test folder where it
    has one (the first `most` in name order), else the held-out part of `split`."""
    folder = TEST_FOLDERS.get(name)
    if folder is None:
        return None, split["val_files"]
    files = sorted(f for f in os.listdir(folder) if f.endswith(".mid"))
    return folder, files[:most] if most else files


def run(args):
    """Runs a command and returns its stdout; exits with its stderr if it fails."""
    out = subprocess.run(args, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{out.stderr}")
    return out.stdout


def link_files(files, root, folder):
    """Makes `folder` hold symbolic links to exactly `files` (paths relative to `root`)."""
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(folder):
        os.remove(os.path.join(folder, name))
    for f in files:
        src = os.path.realpath(os.path.join(root, f))
        os.symlink(src, os.path.join(folder, os.path.basename(f)))


def markov_ratios(report):
    """The model's median coherence figures divided by the Markov chain's (NaN where either is
    missing; 1e-3 keeps a tie at 0 a tie)."""
    coh = {c["name"]: c for c in report["coherence"]}
    return [float("nan") if m is None or k is None else (m + 1e-3) / (k + 1e-3)
            for m, k in zip(report["coherence"][0]["medians"], coh["markov"]["medians"])]


def closeness(report):
    """Geometric mean of `markov_ratios` (lower is closer to the true continuations)."""
    logs = [math.log(r) for r in markov_ratios(report) if not math.isnan(r)]
    return math.exp(sum(logs) / len(logs)) if logs else float("inf")
