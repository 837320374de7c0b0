//! The `continuo bench` measurement: load, prefill and per-note decode times, peak memory,
//! and the machine's memory bandwidth with the lower bound it implies per note.

use std::time::{Duration, Instant};

use crate::generate::{Greedy, Session};
use crate::lora::Style;
use crate::model::Moonbeam;
use crate::note::Note;

/// What one benchmark run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    pub load_s: f64,
    pub prefill_s: f64,
    pub prompt_notes: usize,
    pub notes: usize,
    pub transformer_ms_median: f64,
    pub transformer_ms_p95: f64,
    pub head_ms_median: f64,
    pub head_ms_p95: f64,
    pub note_ms_median: f64,
    pub note_ms_p95: f64,
    /// Prefill plus every note.
    pub total_s: f64,
    pub peak_rss_mib: f64,
    /// The process's peak resident memory right after loading the model, and what the
    /// model's weights take in memory ([`weight_bytes`]): loading should need little more.
    pub load_peak_rss_mib: f64,
    pub weights_mib: f64,
    pub bandwidth_gb_s: f64,
    /// Bytes that must be read from memory per generated note (weights, KV cache, head re-reads).
    pub bytes_per_note: f64,
    pub bound_ms_per_note: f64,
    /// Read rate of the model's own weights ([`measure_weight_stream_gb_s`]), and the bound
    /// it implies for [`Self::bytes_per_note`]: the same bytes, read where they lie.
    pub weight_stream_gb_s: f64,
    pub weight_bound_ms_per_note: f64,
    pub threads: usize,
    /// Notes taken into a warm cache in one batched step ([`Session::extend`]): the last
    /// `context_batch` notes of the prompt, on top of the others.
    pub context_batch: usize,
    /// Time of that step (median of three).
    pub context_batch_ms: f64,
    /// Multiply-adds per second of the prefill's projections ([`prefill_macs`]), in G/s.
    pub prefill_gmacs_per_s: f64,
    /// The machine's measured peak for the arithmetic those products run on, in G
    /// multiply-adds per second on the pool's threads, and which instruction that is
    /// ([`measure_peak`]); none where no SIMD loop is known for the CPU.
    pub peak_gmacs_per_s: Option<f64>,
    pub peak_instruction: Option<&'static str>,
}

/// A deterministic, musically plausible prompt: a piano line with chords, in 10 ms ticks.
pub fn synthetic_prompt(n: usize) -> Vec<Note> {
    let scale = [0u8, 2, 4, 5, 7, 9, 11];
    let mut onset = 0i64;
    (0..n)
        .map(|i| {
            if i % 3 != 2 {
                onset += [25, 12, 38, 25][i % 4];
            }
            let pitch = 48 + 12 * ((i / 7) % 3) as u8 + scale[(i * 5) % 7];
            Note::from_pitch(
                onset,
                20 + (i % 5) as i64 * 10,
                pitch,
                0,
                60 + (i % 40) as i64,
            )
        })
        .collect()
}

/// Runs `notes` greedy decode steps after a prefill of `prompt_notes`, without stopping on EOS
/// (as the reference benchmark does), so exactly `notes` notes are timed.
/// `load_peak_rss`: the process's peak resident memory measured right after loading `model`
/// ([`peak_rss_bytes`]). `top_p`: decode with temperature 1 and this nucleus (over the full
/// vocabulary, as the reference: the GRU head then computes every `lm_head` row for each
/// attribute) instead of greedily (only the attribute's rows).
pub fn run(
    model: &Moonbeam,
    load: Duration,
    load_peak_rss: u64,
    prompt_notes: usize,
    notes: usize,
    top_p: Option<f32>,
) -> Result<BenchReport, crate::error::ModelError> {
    let mut top_p = top_p.map(|p| crate::generate::TopP::new(1.0, p, 7));
    let prompt = synthetic_prompt(prompt_notes);
    let mut session = Session::new(model, prompt_notes + notes + 1);
    session.set_style(Style::base());
    let t0 = Instant::now();
    session.prefill(&prompt)?;
    let prefill = t0.elapsed();
    let mut transformer = Vec::with_capacity(notes);
    let mut head = Vec::with_capacity(notes);
    let mut prev_onset = prompt.last().map_or(0, |n| n.onset);
    let mut values = [0i64; 6];
    for i in 0..notes {
        if i > 0 {
            // EOS/SOS codes are fed back as they are (all lie inside the embedding tables),
            // as the reference does with its EOS checks disabled.
            let row = [
                prev_onset + values[0],
                values[1],
                values[2],
                values[3],
                values[4],
                values[5],
            ];
            prev_onset = row[0];
            let t = Instant::now();
            session.push(row)?;
            transformer.push(t.elapsed());
        }
        let t = Instant::now();
        values = match top_p.as_mut() {
            Some(chooser) => session.next_values(chooser)?,
            None => session.next_values(&mut Greedy)?,
        };
        head.push(t.elapsed());
    }
    let total = prefill + transformer.iter().sum::<Duration>() + head.iter().sum::<Duration>();
    let per_note: Vec<Duration> = head
        .iter()
        .enumerate()
        .map(|(i, h)| {
            *h + if i > 0 {
                transformer[i - 1]
            } else {
                Duration::ZERO
            }
        })
        .skip(1)
        .collect();
    // Played notes arriving at once: the last (up to) 32 prompt notes in one batched step.
    let context_batch = prompt_notes.min(32);
    let mut batch_times = Vec::new();
    if context_batch >= 2 {
        let rows: Vec<_> = prompt[prompt_notes - context_batch..]
            .iter()
            .map(|n| n.to_row())
            .collect();
        let mut session = Session::new(model, prompt_notes + 1);
        for _ in 0..3 {
            session.prefill(&prompt[..prompt_notes - context_batch])?;
            let t = Instant::now();
            session.extend(&rows)?;
            batch_times.push(t.elapsed());
        }
    }
    let peak_rss = peak_rss_bytes();
    let bandwidth = measure_bandwidth_gb_s();
    let weight_stream = measure_weight_stream_gb_s(model);
    let peak = measure_peak(if model.quantization.is_some() {
        Arithmetic::Int8(crate::quant::Kernel::best())
    } else {
        Arithmetic::F32
    });
    let bytes = bytes_per_note(model, prompt_notes + notes / 2);
    Ok(BenchReport {
        load_s: load.as_secs_f64(),
        prefill_s: prefill.as_secs_f64(),
        prompt_notes,
        notes,
        transformer_ms_median: percentile_ms(&transformer, 0.5),
        transformer_ms_p95: percentile_ms(&transformer, 0.95),
        head_ms_median: percentile_ms(&head, 0.5),
        head_ms_p95: percentile_ms(&head, 0.95),
        note_ms_median: percentile_ms(&per_note, 0.5),
        note_ms_p95: percentile_ms(&per_note, 0.95),
        total_s: total.as_secs_f64(),
        peak_rss_mib: peak_rss as f64 / (1024.0 * 1024.0),
        load_peak_rss_mib: load_peak_rss as f64 / (1024.0 * 1024.0),
        weights_mib: weight_bytes(model) / (1024.0 * 1024.0),
        bandwidth_gb_s: bandwidth,
        bytes_per_note: bytes,
        bound_ms_per_note: bytes / (bandwidth * 1e9) * 1e3,
        weight_stream_gb_s: weight_stream,
        weight_bound_ms_per_note: bytes / (weight_stream * 1e9) * 1e3,
        threads: rayon::current_num_threads(),
        context_batch,
        context_batch_ms: percentile_ms(&batch_times, 0.5),
        prefill_gmacs_per_s: prefill_macs(model, prompt_notes + 1) / prefill.as_secs_f64() / 1e9,
        peak_gmacs_per_s: peak.map(|p| p.0),
        peak_instruction: peak.map(|p| p.1),
    })
}

/// Multiply-adds of the transformer's projections over `rows` positions: every weight of every
/// layer's seven projections once per row. This is the bulk of a prefill; attention's own
/// products, the embeddings and the norms are left out.
pub fn prefill_macs(model: &Moonbeam, rows: usize) -> f64 {
    let per_row: usize = model
        .layers
        .iter()
        .flat_map(|l| l.projections())
        .map(|p| p.out_dim * p.in_dim)
        .sum();
    per_row as f64 * rows as f64
}

/// What a matrix product runs on, for [`measure_peak`].
#[derive(Debug, Clone, Copy)]
pub enum Arithmetic {
    /// f32 weights: FMA (candle's batched products use the widest registers the CPU has).
    F32,
    /// Quantized weights, multiplied by this integer kernel.
    Int8(crate::quant::Kernel),
}

/// The peak multiply-adds per second of `arithmetic` on every thread of the pool at once, in
/// G/s, with the instruction measured: the best of three runs of a loop of twelve independent
/// accumulators (no memory traffic). `vpdpbusd` does 4 byte products per 32-bit lane, `vpmaddubsw`
/// 2 per 16-bit lane (its kernel then needs a `vpmaddwd` as well), an f32 FMA one per lane.
/// None for the portable kernels.
pub fn measure_peak(arithmetic: Arithmetic) -> Option<(f64, &'static str)> {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::quant::Kernel;
        let has = |f: &[bool]| f.iter().all(|&b| b);
        let avx512 = has(&[
            std::arch::is_x86_feature_detected!("avx512f"),
            std::arch::is_x86_feature_detected!("avx512bw"),
            std::arch::is_x86_feature_detected!("avx512vl"),
        ]);
        let avx2 = has(&[
            std::arch::is_x86_feature_detected!("avx2"),
            std::arch::is_x86_feature_detected!("fma"),
        ]);
        let (name, macs_per_instr, run): (&'static str, f64, fn(u64) -> i64) = match arithmetic {
            Arithmetic::Int8(Kernel::Avx512Vnni) => ("vpdpbusd zmm", 64.0, peak::vnni512),
            Arithmetic::Int8(Kernel::Avx512Vnni256) => ("vpdpbusd ymm", 32.0, peak::vnni256),
            Arithmetic::Int8(Kernel::Avx2Int8) => ("vpmaddubsw ymm", 32.0, peak::maddubs256),
            Arithmetic::F32 if avx512 => ("f32 FMA zmm", 16.0, peak::fma512),
            Arithmetic::F32 if avx2 => ("f32 FMA ymm", 8.0, peak::fma256),
            _ => return None,
        };
        const ITERS: u64 = 4_000_000;
        let mut best = f64::MAX;
        for _ in 0..3 {
            let t = Instant::now();
            let sums = rayon::broadcast(|_| run(ITERS));
            std::hint::black_box(sums);
            best = best.min(t.elapsed().as_secs_f64());
        }
        let instrs = ITERS as f64 * peak::ACCUMULATORS as f64 * rayon::current_num_threads() as f64;
        Some((instrs * macs_per_instr / best / 1e9, name))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = arithmetic;
        None
    }
}

/// The loops of [`measure_peak`]: `iters` rounds of one instruction on each of
/// [`peak::ACCUMULATORS`] independent accumulators, returning their sum so that the work is
/// not optimised away (and can be checked). Each checks its CPU features and panics without
/// them, so they are safe to call.
#[cfg(target_arch = "x86_64")]
mod peak {
    use std::arch::x86_64::*;

    /// Independent accumulators: enough to cover the latency of every instruction measured.
    pub const ACCUMULATORS: usize = 12;

    macro_rules! peak_loop {
        ($name:ident, $inner:ident, $features:literal, $check:expr,
         |$acc:ident| $init:expr, $step:expr, $sum:expr) => {
            pub fn $name(iters: u64) -> i64 {
                assert!(
                    $check,
                    concat!(stringify!($name), ": CPU lacks ", $features)
                );
                // SAFETY: the CPU has the features (assert above).
                unsafe { $inner(iters) }
            }

            #[target_feature(enable = $features)]
            fn $inner(iters: u64) -> i64 {
                let mut accs = [$init; ACCUMULATORS];
                for _ in 0..iters {
                    for $acc in accs.iter_mut() {
                        *$acc = $step;
                    }
                }
                let $acc = accs;
                $sum
            }
        };
    }

    peak_loop!(
        vnni512,
        vnni512_inner,
        "avx512f,avx512bw,avx512vnni",
        std::arch::is_x86_feature_detected!("avx512vnni")
            && std::arch::is_x86_feature_detected!("avx512bw"),
        |acc| _mm512_setzero_si512(),
        _mm512_dpbusd_epi32(*acc, _mm512_set1_epi8(3), _mm512_set1_epi8(-2)),
        acc.iter()
            .map(|&a| i64::from(_mm512_reduce_add_epi32(a)))
            .sum()
    );
    peak_loop!(
        vnni256,
        vnni256_inner,
        "avx2,avx512f,avx512vl,avx512vnni",
        std::arch::is_x86_feature_detected!("avx512vnni")
            && std::arch::is_x86_feature_detected!("avx512vl"),
        |acc| _mm256_setzero_si256(),
        _mm256_dpbusd_epi32(*acc, _mm256_set1_epi8(3), _mm256_set1_epi8(-2)),
        acc.iter().map(|&a| lanes32(a)).sum()
    );
    // `vpmaddubsw` of the accumulator's own bytes (so that it cannot be hoisted out of the
    // loop), then `vpaddw` into it; wrapping i16 arithmetic, checked by the test.
    peak_loop!(
        maddubs256,
        maddubs256_inner,
        "avx2",
        std::arch::is_x86_feature_detected!("avx2"),
        |acc| _mm256_set1_epi16(0x0103),
        _mm256_add_epi16(*acc, _mm256_maddubs_epi16(*acc, _mm256_set1_epi8(-2))),
        acc.iter().map(|&a| lanes16(a)).sum()
    );
    peak_loop!(
        fma512,
        fma512_inner,
        "avx512f",
        std::arch::is_x86_feature_detected!("avx512f"),
        |acc| _mm512_setzero_ps(),
        _mm512_fmadd_ps(*acc, _mm512_set1_ps(0.5), _mm512_set1_ps(1.0)),
        acc.iter()
            .map(|&a| _mm512_reduce_add_ps(a).round() as i64)
            .sum()
    );
    peak_loop!(
        fma256,
        fma256_inner,
        "avx2,fma",
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma"),
        |acc| _mm256_setzero_ps(),
        _mm256_fmadd_ps(*acc, _mm256_set1_ps(0.5), _mm256_set1_ps(1.0)),
        acc.iter().map(|&a| lanes_f32(a)).sum()
    );

    /// The sum of the sixteen i16 lanes.
    #[target_feature(enable = "avx2")]
    fn lanes16(v: __m256i) -> i64 {
        let mut out = [0i16; 16];
        // SAFETY: `out` holds 32 bytes.
        unsafe { _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, v) };
        out.iter().map(|&x| i64::from(x)).sum()
    }

    /// The sum of the eight f32 lanes, rounded.
    #[target_feature(enable = "avx2")]
    fn lanes_f32(v: __m256) -> i64 {
        let mut out = [0f32; 8];
        // SAFETY: `out` holds 32 bytes.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), v) };
        out.iter().sum::<f32>().round() as i64
    }

    /// The sum of the eight i32 lanes.
    #[target_feature(enable = "avx2")]
    fn lanes32(v: __m256i) -> i64 {
        let mut out = [0i32; 8];
        // SAFETY: `out` holds 32 bytes.
        unsafe { _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, v) };
        out.iter().map(|&x| i64::from(x)).sum()
    }
}

fn percentile_ms(xs: &[Duration], q: f64) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    let mut v: Vec<f64> = xs.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    v.sort_by(f64::total_cmp);
    let idx = ((v.len() - 1) as f64 * q).round() as usize;
    v[idx]
}

/// Bytes the model's weights take in memory: f32 tensors, and quantized codes and scales.
pub fn weight_bytes(model: &Moonbeam) -> f64 {
    let tensor = |t: &candle_core::Tensor| 4.0 * t.elem_count() as f64;
    let linears: f64 = model
        .linears()
        .map(|l| l.weight_bytes() + l.bias.as_ref().map_or(0.0, tensor))
        .sum();
    let norms = model
        .layers
        .iter()
        .flat_map(|l| [&l.input_norm, &l.post_attention_norm]);
    let tables = model.fme.iter().map(|f| &f.translation_bias).chain([
        &model.instrument,
        &model.supplementary,
        &model.norm,
        &model.decoder_embedding,
    ]);
    linears + norms.chain(tables).map(tensor).sum::<f64>()
}

/// Bytes read per generated note at context length `context`: every transformer weight once
/// (in its stored format: f32 or quantized codes and scales), the f32 KV cache, and the head's
/// GRU, `fc_out` and the allowed `lm_head` rows six times (greedy).
pub fn bytes_per_note(model: &Moonbeam, context: usize) -> f64 {
    let cfg = &model.cfg;
    let layers: f64 = model
        .layers
        .iter()
        .map(|l| {
            l.projections()
                .iter()
                .map(|p| p.weight_bytes())
                .sum::<f64>()
        })
        .sum();
    let embed: f64 = model
        .fme
        .iter()
        .map(|f| f.linear.weight_bytes())
        .sum::<f64>()
        + model.mlp_in.weight_bytes()
        + model.mlp_out.weight_bytes();
    let kv = (cfg.n_kv_heads * cfg.head_dim()) as f64;
    let cache = 4.0 * 2.0 * kv * context as f64 * cfg.n_layers as f64;
    let gru_step: f64 = model
        .gru
        .iter()
        .map(|g| g.ih.weight_bytes() + g.hh.weight_bytes())
        .sum::<f64>()
        + model.fc_out.weight_bytes();
    let allowed_rows: f64 = cfg.vocab.iter().map(|&v| v as f64).sum::<f64>() / 6.0;
    let lm_head = model.lm_head.weight_bytes() * allowed_rows / cfg.decode_vocab_size as f64;
    let head = 6.0 * (gru_step + lm_head) + model.summary_projection.weight_bytes();
    layers + embed + cache + head
}

/// Streaming read bandwidth of this machine with the rayon pool: the best of a few
/// vectorised parallel sums over 2 GiB (larger than any last-level cache).
pub fn measure_bandwidth_gb_s() -> f64 {
    use rayon::prelude::*;
    let n = 512usize << 20; // f32s = 2 GiB
    let buf: Vec<f32> = (0..n).into_par_iter().map(|i| (i & 7) as f32).collect();
    let ones = vec![1f32; 1 << 14];
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let s: f32 = buf
            .par_chunks(1 << 14)
            .map(|c| crate::kernels::dot(c, &ones))
            .sum();
        std::hint::black_box(s);
        best = best.min(t.elapsed().as_secs_f64());
    }
    (n * 4) as f64 / best / 1e9
}

/// Read rate of the model's linear weights where they lie in memory (quantized codes and
/// scales, or f32 values), in GB/s: the best of three passes, each reading every byte once.
/// The quantized layers' bytes are read in one parallel pass over pieces of 256 KiB, as one
/// stream with no hand-offs between layers; an f32 layer is read in a pass of its own (its
/// storage is only lent inside a closure). This bounds a decode that reads each weight once
/// more tightly than [`measure_bandwidth_gb_s`], whose fresh buffer may lie in faster or
/// slower memory than the weights do (on one VM it read 43 to 70 GB/s from run to run while
/// decode times moved far less).
pub fn measure_weight_stream_gb_s(model: &Moonbeam) -> f64 {
    use rayon::prelude::*;
    const PIECE: usize = 256 << 10;
    fn sum_bytes(b: &[u8]) -> u64 {
        let words = b.chunks_exact(32);
        let tail = words.remainder();
        let mut acc = [0u64; 4];
        for w in words {
            for (k, a) in acc.iter_mut().enumerate() {
                let word: [u8; 8] = w[8 * k..8 * k + 8].try_into().expect("8 bytes");
                *a = a.wrapping_add(u64::from_le_bytes(word));
            }
        }
        tail.iter()
            .map(|&v| u64::from(v))
            .chain(acc)
            .fold(0, u64::wrapping_add)
    }
    let mut pieces: Vec<&[u8]> = Vec::new();
    let mut f32_layers = Vec::new();
    let mut bytes = 0usize;
    for layer in model.linears() {
        match layer.quantized() {
            Some(q) => {
                let scales = q.scales();
                // SAFETY: f16 is two plain bytes; the slice covers exactly the scales.
                let scale_bytes = unsafe {
                    std::slice::from_raw_parts(scales.as_ptr().cast::<u8>(), scales.len() * 2)
                };
                for part in [q.codes(), scale_bytes] {
                    bytes += part.len();
                    pieces.extend(part.chunks(PIECE));
                }
            }
            None => f32_layers.push(layer),
        }
    }
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let mut sum: u64 = pieces
            .par_iter()
            .map(|p| sum_bytes(p))
            .reduce(|| 0, u64::wrapping_add);
        let mut f32_bytes = 0usize;
        for layer in &f32_layers {
            if let crate::model::linear::Weight::F32(w) = &layer.weight {
                let _ = crate::kernels::with_f32(w, |w| {
                    f32_bytes += 4 * w.len();
                    sum = sum.wrapping_add(
                        w.par_chunks(PIECE / 4)
                            .map(|c| {
                                c.iter()
                                    .map(|v| u64::from(v.to_bits()))
                                    .fold(0, u64::wrapping_add)
                            })
                            .reduce(|| 0, u64::wrapping_add),
                    );
                    Ok(())
                });
            }
        }
        std::hint::black_box(sum);
        best = best.min(t.elapsed().as_secs_f64() / (bytes + f32_bytes).max(1) as f64);
    }
    1.0 / best / 1e9
}

pub use crate::memory::peak_rss_bytes;

/// What the style part of `continuo bench --style-rank R` measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StyleBenchReport {
    pub rank: usize,
    pub file_mb: f64,
    pub load_ms_median: f64,
    pub swap_us_median: f64,
    pub swap_us_max: f64,
    pub note_ms_median: f64,
}

/// Writes a random style of rank `rank` for `model`, then times loading it (read, parse,
/// shape and finiteness checks), swapping styles in a live session, and decoding with it.
pub fn run_style(
    model: &Moonbeam,
    rank: usize,
    prompt_notes: usize,
    notes: usize,
) -> anyhow::Result<StyleBenchReport> {
    use std::sync::Arc;
    let (vars, _) = crate::train::params::new_lora(model, rank, 2.0 * rank as f64, 9)?;
    // Non-zero B so the style really changes the output.
    for (name, var) in &vars {
        if name.ends_with("lora_B") {
            let t = var.as_tensor();
            var.set(&(t.randn_like(0.0, 0.01)?))?;
        }
    }
    let dir = std::env::temp_dir().join(format!("continuo-bench-style-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("bench.safetensors");
    let adapter = crate::lora::Adapter {
        rank,
        alpha: 2.0 * rank as f64,
        pairs: crate::train::params::pairs_of(model, &vars, rank)?,
        lm_head_base: None,
    };
    let card = crate::style::StyleCard::new("bench", "");
    crate::style::save_style(&path, &adapter, &card)?;
    let file_mb = std::fs::metadata(&path)?.len() as f64 / 1e6;
    let mut loads = Vec::new();
    let mut loaded = None;
    for _ in 0..7 {
        let t = Instant::now();
        let (a, _) = crate::style::load_style(&path, &model.cfg, None)?;
        loads.push(t.elapsed());
        loaded = Some(a);
    }
    let styled = Style::single(
        Arc::new(loaded.ok_or_else(|| anyhow::anyhow!("no style"))?),
        1.0,
    );
    let prompt = synthetic_prompt(prompt_notes);
    let mut session = Session::new(model, prompt_notes + notes + 1);
    session.prefill(&prompt)?;
    let mut swaps = Vec::new();
    let mut other = Style::base();
    for _ in 0..1000 {
        let t = Instant::now();
        other = session.set_style(other);
        swaps.push(t.elapsed());
        // Dropping the returned style happens off the timed path, as on the inference thread.
    }
    session.set_style(styled);
    drop(other);
    let mut per_note = Vec::new();
    let mut prev_onset = prompt.last().map_or(0, |n| n.onset);
    for i in 0..notes {
        let t = Instant::now();
        let v = session.next_values(&mut Greedy)?;
        if i + 1 < notes {
            let row = [prev_onset + v[0], v[1], v[2], v[3], v[4], v[5]];
            prev_onset = row[0];
            session.push(row)?;
        }
        per_note.push(t.elapsed());
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(StyleBenchReport {
        rank,
        file_mb,
        load_ms_median: percentile_ms(&loads, 0.5),
        swap_us_median: percentile_ms(&swaps, 0.5) * 1e3,
        swap_us_max: percentile_ms(&swaps, 1.0) * 1e3,
        note_ms_median: percentile_ms(&per_note, 0.5),
    })
}

/// What `continuo bench --train-context N` measured: LoRA training steps on one packed sequence.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrainBenchReport {
    pub rank: usize,
    pub context_rows: usize,
    pub step_s_median: f64,
    pub notes_per_s: f64,
    pub peak_rss_mib: f64,
}

/// Times `steps` LoRA training steps (forward, backward, AdamW) on one packed sequence of
/// `context_rows` rows of the synthetic prompt.
pub fn run_train(
    model: &Moonbeam,
    rank: usize,
    context_rows: usize,
    steps: usize,
) -> anyhow::Result<TrainBenchReport> {
    use crate::train::loss::{packed_loss, PackedBatch};
    let (vars, style) = crate::train::params::new_lora(model, rank, 2.0 * rank as f64, 1)?;
    let mut opt = crate::train::optim::AdamW::new(vars, 3e-4, 0.0)?;
    let notes = synthetic_prompt(context_rows.saturating_sub(2).max(1));
    let rows = crate::vocab::input_rows(&notes, true);
    let segments = vec![vec![0u32; rows.len()]];
    let loss_mask = vec![vec![true; rows.len() - 1]];
    let mut times = Vec::new();
    for _ in 0..steps.max(1) {
        let t = Instant::now();
        let batch = PackedBatch {
            rows: vec![&rows],
            segments: segments.clone(),
            loss_mask: loss_mask.clone(),
        };
        let (loss, _) = packed_loss(model, &style, &batch)?;
        opt.backward_step(&loss)?;
        times.push(t.elapsed());
    }
    let step = percentile_ms(&times, 0.5) / 1e3;
    Ok(TrainBenchReport {
        rank,
        context_rows: rows.len(),
        step_s_median: step,
        notes_per_s: (rows.len() - 1) as f64 / step,
        peak_rss_mib: peak_rss_bytes() as f64 / (1024.0 * 1024.0),
    })
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_peak_loops_do_the_arithmetic_they_count() {
        use super::peak;
        let acc = peak::ACCUMULATORS as i64;
        let has = |f: &str| match f {
            "vnni" => {
                std::arch::is_x86_feature_detected!("avx512vnni")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vl")
            }
            "avx512" => std::arch::is_x86_feature_detected!("avx512f"),
            _ => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
        };
        // Each lane gains 3 × -2 per byte product: 4 products per i32 lane, 2 per i16 lane.
        if has("vnni") {
            assert_eq!(peak::vnni512(1000), 1000 * acc * 16 * -24);
            assert_eq!(peak::vnni256(1000), 1000 * acc * 8 * -24);
        }
        if has("avx2") {
            // One i16 lane: its two bytes (unsigned) times -2, summed with saturation, added.
            let mut v: i16 = 0x0103;
            for _ in 0..1000 {
                let (lo, hi) = (i32::from(v as u16 as u8), i32::from((v as u16 >> 8) as u8));
                let product = (-2 * lo - 2 * hi).clamp(i16::MIN.into(), i16::MAX.into());
                v = v.wrapping_add(product as i16);
            }
            assert_eq!(peak::maddubs256(1000), acc * 16 * i64::from(v));
            // a <- a / 2 + 1 from 0 reaches 2 exactly in f32.
            assert_eq!(peak::fma256(100), acc * 8 * 2);
        }
        if has("avx512") {
            assert_eq!(peak::fma512(100), acc * 16 * 2);
        }
    }

    #[test]
    fn the_peak_is_measured_where_a_loop_is_known() {
        use super::{measure_peak, Arithmetic};
        use crate::quant::Kernel;
        assert!(measure_peak(Arithmetic::Int8(Kernel::Portable)).is_none());
        for kernel in [Kernel::Avx2Int8, Kernel::Avx512Vnni, Kernel::Avx512Vnni256] {
            if kernel.is_supported() {
                let (g, name) = measure_peak(Arithmetic::Int8(kernel)).unwrap();
                assert!(g.is_finite() && g > 0.0, "{name}: {g}");
            }
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            let (g, _) = measure_peak(Arithmetic::F32).unwrap();
            assert!(g.is_finite() && g > 0.0);
        }
    }
}
