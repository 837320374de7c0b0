#!/usr/bin/env bash
# The official Moonbeam code's CPU speed, for BENCHMARKS.md: random-init Medium (839M) in f32,
# torch.set_num_threads(2), a 128-note prompt from a real MIDI file tokenized by the official
# tokenizer, 32 greedy notes from the official generation loop, EOS checks off.
#
# Setup, once, on a machine that can reach GitHub and PyPI (about 5.5 GB, mostly torch):
#   git clone https://github.com/guozixunnicolas/Moonbeam-MIDI-Foundation-Model "$MOONBEAM_OFFICIAL_SRC"
#   git -C "$MOONBEAM_OFFICIAL_SRC" checkout 4e2c015
#   python3 -m venv "$VENV" && "$VENV/bin/pip" install -r scripts/official_bench/requirements-frozen.txt
# Usage: MOONBEAM_OFFICIAL_SRC=<clone> VENV=<venv> scripts/official_bench/run.sh [--config small]
#        [--gen 2] [--json-out <file>]   (--config tiny --weights ../shared/golden/tiny_model.safetensors
#        --verify-golden checks the setup against the golden greedy notes)
# Run it beside `continuo bench --config medium ... --prompt-notes 128 --notes 32` on a quiet
# machine, alternately: only timings from the same window compare.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
: "${MOONBEAM_OFFICIAL_SRC:?set it to a clone of the official repository}"
: "${VENV:?set it to the virtual environment with requirements-frozen.txt}"
export MOONBEAM_OFFICIAL_SRC HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec "$VENV/bin/python" "$HERE/bench_official.py" --config medium --prompt-notes 128 --gen 32 "$@"
