#!/usr/bin/env python3
"""CPU speed measurement of the official Moonbeam code (spec section 10 method).

Uses the unmodified official repository (extracted under ./src, commit 4e2c015) for the model
(`LlamaForCausalLM` from the bundled transformers fork), the tokenizer (`MusicTokenizer`) and the
generation loop (`MusicLlama.generate`).  Nothing of the official code is edited; this script only
  * wraps `torch.tensor` so that the loop's hard-coded device="cuda" becomes "cpu"
    (the same shim the golden vectors were made with),
  * builds `MusicLlama(model, tokenizer, config)` directly instead of `MusicLlama.build()`
    (build() needs a checkpoint file and moves the model to CUDA),
  * disables the EOS checks (tokenizer.eos_* set to an impossible value) so that exactly
    --gen notes are produced, as in section 10,
  * wraps `model.forward` with a timer to split transformer time from GRU-head time.
Official prints (tokenizer dicts, "i/N generated") go to a log file, not the terminal.
"""
import argparse
import contextlib
import json
import os
import resource
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# The official repository (guozixunnicolas/Moonbeam-MIDI-Foundation-Model at 4e2c015), unmodified.
SRC = os.environ.get("MOONBEAM_OFFICIAL_SRC", os.path.join(HERE, "src"))
SHARED = os.environ.get("CONTINUO_SHARED", os.path.join(HERE, "..", "..", "..", "shared"))
sys.path.insert(0, os.path.join(SRC, "src", "llama_recipes", "transformers_minimal", "src"))
sys.path.insert(0, os.path.join(SRC, "src"))
sys.path.insert(0, os.path.join(SRC, "recipes", "inference", "custom_music_generation"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402

# --- shim: official generate() hard-codes device="cuda" in torch.tensor(...) -------------------
_orig_tensor = torch.tensor


def _cpu_tensor(*a, **kw):
    if str(kw.get("device", "")).startswith("cuda"):
        kw["device"] = "cpu"
    return _orig_tensor(*a, **kw)


torch.tensor = _cpu_tensor

CONFIGS = {
    "medium": os.path.join(SRC, "src", "llama_recipes", "configs", "model_config.json"),
    "small": os.path.join(SRC, "src", "llama_recipes", "configs", "model_config_small.json"),
    "tiny": os.path.join(SHARED, "golden", "tiny_config.json"),
}
GOLDEN = os.path.join(SHARED, "golden")


def pct(xs, q):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="medium", help="medium | small | tiny | path to a config json")
    ap.add_argument("--weights", default="random",
                    help="random (model's own init) | path to .safetensors (official names) | "
                         "path to release-format .pt ({'model_state_dict': {'module.'+name: ...}})")
    ap.add_argument("--midi", default=os.path.join(SHARED, "midi-samples", "hannds_piano_perf", "Joplin_MapleLeaveRag.mid"))
    ap.add_argument("--prompt-notes", type=int, default=128)
    ap.add_argument("--gen", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    ap.add_argument("--keep-eos", action="store_true", help="do not disable the EOS checks")
    ap.add_argument("--verify-golden", action="store_true",
                    help="tiny golden check: golden prompt, 16 greedy notes, compare with greedy_base.json")
    ap.add_argument("--log", default="official_stdout.log")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    log = open(args.log, "w")
    from transformers import LlamaForCausalLM, LlamaConfig
    with contextlib.redirect_stdout(log):
        from generation import MusicLlama  # official recipes/inference/custom_music_generation/generation.py
        from llama_recipes.datasets.music_tokenizer import MusicTokenizer

    cfg_path = CONFIGS.get(args.config, args.config)
    config = LlamaConfig.from_pretrained(cfg_path)

    t0 = time.perf_counter()
    with contextlib.redirect_stdout(log):
        model = LlamaForCausalLM(config)  # random init from the model's own _init_weights, f32
    t_init = time.perf_counter() - t0
    if args.weights != "random":
        if args.weights.endswith(".safetensors"):
            from safetensors.torch import load_file
            sd = load_file(args.weights)
        else:  # same steps as MusicLlama.build()
            sd = torch.load(args.weights, map_location="cpu")["model_state_dict"]
            sd = {(k[7:] if k.startswith("module.") else k): v for k, v in sd.items()}
        missing, unexpected = model.load_state_dict(sd, strict=False)
        print(f"loaded {args.weights}: {len(sd)} tensors, missing={len(missing)} unexpected={len(unexpected)}")
        if missing or unexpected:
            print("  missing:", missing[:5], "unexpected:", unexpected[:5])
    model.eval()
    if args.dtype == "bf16":
        model = model.to(torch.bfloat16)
    n_params = sum(p.numel() for p in model.parameters())
    pdt = next(model.parameters()).dtype

    with contextlib.redirect_stdout(log):
        tokenizer = MusicTokenizer(timeshift_vocab_size=config.onset_vocab_size, dur_vocab_size=config.dur_vocab_size,
                                   octave_vocab_size=config.octave_vocab_size,
                                   pitch_class_vocab_size=config.pitch_class_vocab_size,
                                   instrument_vocab_size=config.instrument_vocab_size,
                                   velocity_vocab_size=config.velocity_vocab_size)
    gen = MusicLlama(model, tokenizer, config)

    if args.verify_golden:
        g = json.load(open(os.path.join(GOLDEN, "greedy_base.json")))
        prompt = g["prompt_with_sos"]
        n_gen = g["max_gen_len"]
        keep_eos = True
        # also check the official tokenizer on the golden MIDI
        comp = MusicTokenizer.midi_to_compound(os.path.join(GOLDEN, "input.mid"))
        tok = json.load(open(os.path.join(GOLDEN, "tokens.json")))
        print("tokenizer matches tokens.json compounds:", [list(map(int, r)) for r in comp] == tok["compounds"])
        print("golden prompt == tokens.json prompt_for_generation:", prompt == tok["prompt_for_generation"])
    else:
        comp = MusicTokenizer.midi_to_compound(args.midi)
        if len(comp) < args.prompt_notes:
            sys.exit(f"{args.midi} has only {len(comp)} notes")
        # as unconditional_music_generation.py: encode_series(sos=True, eos=False)[:prompt_len]
        prompt = tokenizer.encode_series(comp, if_add_sos=True, if_add_eos=False)[: args.prompt_notes + 1]
        prompt = [list(map(int, r)) for r in prompt]
        n_gen = args.gen
        keep_eos = args.keep_eos
    if not keep_eos:
        for a in ["eos_timeshift", "eos_dur", "eos_octave", "eos_pitch_class", "eos_instrument", "eos_velocity"]:
            setattr(tokenizer, a, -999)

    # --- timer around model.forward: transformer calls carry input_ids, GRU calls decoded_hidden_state
    events = []  # (kind, start, end)
    orig_forward = model.forward

    def timed_forward(*a, **kw):
        kind = "tf" if kw.get("input_ids") is not None else "gru"
        s = time.perf_counter()
        out = orig_forward(*a, **kw)
        events.append((kind, s, time.perf_counter(), kw.get("input_ids").shape[1] if kind == "tf" else None))
        return out

    model.forward = timed_forward

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, config {cfg_path}")
    print(f"params {n_params:,} ({pdt}), attn {config._attn_implementation}, build+init {t_init:.2f} s")
    print(f"prompt: {len(prompt) - 1} notes + SOS from {'golden tokens' if args.verify_golden else args.midi}; "
          f"generate {n_gen} notes, greedy, EOS checks {'on' if keep_eos else 'off'}")

    t_start = time.perf_counter()
    with contextlib.redirect_stdout(log):
        out_tokens, _ = gen.generate(prompt_tokens=[prompt], max_gen_len=n_gen, temperature=0.0, top_p=0.9, echo=True)
    t_end = time.perf_counter()
    model.forward = orig_forward
    log.close()

    # --- split events into steps (one transformer call starts each step)
    tf_idx = [i for i, e in enumerate(events) if e[0] == "tf"]
    steps = []
    for j, i in enumerate(tf_idx):
        nxt = tf_idx[j + 1] if j + 1 < len(tf_idx) else len(events)
        s = events[i][1]
        e = events[tf_idx[j + 1]][1] if j + 1 < len(tf_idx) else t_end
        tf = events[i][2] - events[i][1]
        gru = sum(ev[2] - ev[1] for ev in events[i + 1:nxt])
        steps.append(dict(rows=events[i][3], total=e - s, tf=tf, gru=gru, py=(e - s) - tf - gru))
    first, rest = steps[0], steps[1:]
    ms = lambda x: 1000.0 * x  # noqa: E731
    per_note = [ms(s["total"]) for s in rest]
    n_out = len(out_tokens[0]) - (len(prompt) - 1)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

    print(f"\nnotes generated: {n_out} (transformer calls {len(steps)})")
    print(f"prefill (transformer, {first['rows']} rows): {first['tf']:.3f} s")
    print(f"first step total (prefill + official GRU over all {first['rows']} positions): {first['total']:.3f} s "
          f"(GRU {first['gru']:.3f} s)")
    if rest:
        print(f"per note after the first ({len(rest)} notes): median {statistics.median(per_note):.1f} ms, "
              f"p95 {pct(per_note, 0.95):.1f} ms, min {min(per_note):.1f} ms, max {max(per_note):.1f} ms")
        print(f"  split, medians: transformer {statistics.median(ms(s['tf']) for s in rest):.1f} ms / "
              f"GRU head (6 steps) {statistics.median(ms(s['gru']) for s in rest):.1f} ms / "
              f"Python loop rest {statistics.median(ms(s['py']) for s in rest):.1f} ms")
    print(f"generate total: {t_end - t_start:.3f} s")
    print(f"peak RSS: {rss_mb:.0f} MiB")

    ok = True
    if args.verify_golden:
        g = json.load(open(os.path.join(GOLDEN, "greedy_base.json")))
        same = out_tokens[0] == g["output_tokens_prompt_plus_generated_no_sos"]
        print("greedy output == golden greedy_base.json:", same)
        ok = same

    if args.json_out:
        json.dump(dict(torch=torch.__version__, threads=torch.get_num_threads(), config=cfg_path, params=n_params,
                       dtype=str(pdt), prompt_notes=len(prompt) - 1, notes=n_out, init_s=t_init,
                       prefill_s=first["tf"], first_step_s=first["total"], first_step_gru_s=first["gru"],
                       per_note_ms=per_note, tf_ms=[ms(s["tf"]) for s in rest], gru_ms=[ms(s["gru"]) for s in rest],
                       total_s=t_end - t_start, peak_rss_mib=rss_mb, generated=out_tokens[0][len(prompt) - 1:]),
                  open(args.json_out, "w"), indent=1)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
