//! Element-wise tables shared by the batched (candle) and the single-token paths:
//! FME angles and sinusoids, rotary frequencies, MRA positions and cos/sin.
//!
//! Both paths compute these values with the same scalar code, so they agree
//! bit for bit, and the bf16-faithful rounding of spec §9 lives in one place.

use crate::config::Config;
use crate::kernels::bf16_round;

/// How faithfully to follow the reference's numerics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// Plain f32 everywhere: matches the golden f32 vectors.
    #[default]
    F32,
    /// f32 arithmetic, but the element-wise steps round as the official bf16
    /// inference does (spec §9): FME inputs, angles and products, rotary
    /// frequencies and cos/sin tables. Use with the released bf16 checkpoints.
    Bf16Faithful,
}

/// The value that enters the MRA rotary for a row: SOS rows become 0 and EOS rows 2^15 (spec §3.2).
pub fn mra_position(row: &[i64; 6], col: usize) -> i64 {
    match row[0] {
        -1 => 0,
        -2 => 32768,
        _ => row[col],
    }
}

/// The value that enters an attribute's input embedding: SOS/EOS rows become 0 (spec §2.3).
pub fn embedding_input(row: &[i64; 6], col: usize) -> i64 {
    if row[0] == -1 || row[0] == -2 {
        0
    } else {
        row[col]
    }
}

/// `angles[j] = 1 / base^(2*floor(j/2)/d)` in f32 (spec §2.1).
pub fn fme_angles(base: f64, d: usize, precision: Precision) -> Vec<f32> {
    (0..d)
        .map(|j| {
            // f32 `powf`, as torch computes it: 118 of the 120 golden angles and
            // frequencies come out bit-identical this way, the other two 2 ulps apart.
            // (Rounding an f64 result instead is closer to the true value but further
            // from torch, which matters for large onsets.)
            let exponent = (2 * (j / 2)) as f32 / d as f32;
            let a = 1.0f32 / (base as f32).powf(exponent);
            match precision {
                Precision::F32 => a,
                Precision::Bf16Faithful => bf16_round(a),
            }
        })
        .collect()
}

/// FME sinusoid of an integer value: interleaved sin/cos pairs, written into `out` (length d).
pub fn fme_sinusoid(value: i64, angles: &[f32], precision: Precision, out: &mut [f32]) {
    match precision {
        Precision::F32 => {
            let x = value as f32;
            for (j, (o, &a)) in out.iter_mut().zip(angles).enumerate() {
                let arg = x * a;
                *o = if j % 2 == 0 { arg.sin() } else { arg.cos() };
            }
        }
        Precision::Bf16Faithful => {
            // Long x bf16 -> bf16: the integer is rounded to bf16, the product too,
            // and sin/cos of a bf16 tensor give bf16 results.
            let x = bf16_round(value as f32);
            for (j, (o, &a)) in out.iter_mut().zip(angles).enumerate() {
                let arg = bf16_round(x * a);
                *o = bf16_round(if j % 2 == 0 { arg.sin() } else { arg.cos() });
            }
        }
    }
}

/// Rotary inverse frequencies `1 / theta^(2i/hd)` for `i < hd/2`, in f32 as HF computes them.
pub fn rope_inv_freq(theta: f64, head_dim: usize, precision: Precision) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| {
            let exponent = (2 * i) as f32 / head_dim as f32;
            let f = 1.0f32 / (theta as f32).powf(exponent);
            match precision {
                Precision::F32 => f,
                Precision::Bf16Faithful => bf16_round(f),
            }
        })
        .collect()
}

/// cos and sin (each `hd/2` wide; the full table repeats them, HF half-split layout) of one position.
pub fn rope_cos_sin(
    position: i64,
    inv_freq: &[f32],
    precision: Precision,
    cos: &mut [f32],
    sin: &mut [f32],
) {
    let p = position as f32;
    for ((c, s), &f) in cos.iter_mut().zip(sin.iter_mut()).zip(inv_freq) {
        let arg = p * f;
        let (sv, cv) = arg.sin_cos();
        match precision {
            Precision::F32 => {
                *c = cv;
                *s = sv;
            }
            Precision::Bf16Faithful => {
                *c = bf16_round(cv);
                *s = bf16_round(sv);
            }
        }
    }
}

/// Which rotary table (index into onset, dur, octave, pitch, velocity) each of the 6 head groups uses.
/// The instrument group (4) reuses onset, as the reference does (spec §3.2).
pub const GROUP_TABLE: [usize; 6] = [0, 1, 2, 3, 0, 4];

/// Which token column drives each rotary table.
pub const TABLE_COLUMN: [usize; 5] = [0, 1, 2, 3, 5];

/// Precomputed constants of one model.
#[derive(Debug, Clone)]
pub struct Tables {
    pub precision: Precision,
    /// FME angles for onset, dur, octave, pitch, velocity.
    pub fme_angles: [Vec<f32>; 5],
    /// Rotary inverse frequencies for onset, dur, octave, pitch, velocity.
    pub inv_freq: [Vec<f32>; 5],
}

impl Tables {
    pub fn new(cfg: &Config, precision: Precision) -> Self {
        let d = cfg.attr_dim();
        let hd = cfg.head_dim();
        Tables {
            precision,
            fme_angles: std::array::from_fn(|i| fme_angles(cfg.fme_base[i], d, precision)),
            inv_freq: std::array::from_fn(|i| rope_inv_freq(cfg.rope_theta[i], hd, precision)),
        }
    }
}
