#!/usr/bin/env python3
"""Rewrites a Continuo style file with its LoRA alpha scaled, i.e. its default strength.

A style's strength multiplies alpha / rank, so scaling alpha by s ships the style at what
strength s was before (the plugin's style strength then starts from there). The tensors are
copied byte for byte; only the card in the safetensors header changes, and the change is
recorded in the card's metrics.

Usage: python3 scripts/set_style_alpha.py <in.safetensors> <out.safetensors> <scale> "<why>"
"""
import json
import struct
import sys

src, dst, scale, why = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
raw = open(src, "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
header = json.loads(raw[8:8 + n])
card = json.loads(header["__metadata__"]["continuo.style"])
trained = card["alpha"]
card["alpha"] = trained * scale
metrics = card.get("metrics") or {}
metrics["alpha_scaled_after_training"] = {"trained_alpha": trained, "shipped_alpha": card["alpha"], "why": why}
card["metrics"] = metrics
header["__metadata__"]["continuo.style"] = json.dumps(card)
encoded = json.dumps(header, separators=(",", ":")).encode()
encoded += b" " * ((8 - len(encoded) % 8) % 8)
with open(dst, "wb") as out:
    out.write(struct.pack("<Q", len(encoded)) + encoded + raw[8 + n:])
print(f"{dst}: alpha {trained} -> {card['alpha']}")
