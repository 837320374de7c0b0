//! Hand-written f32 kernels for the single-token decode path.
//!
//! Decoding one note multiplies every weight matrix by a single vector. That is
//! memory-bound, and candle's gemm runs it on one core only, so the decode path
//! uses [`matvec`] instead: rows are split across the rayon pool, and each row is
//! a dot product with several independent accumulators so that the compiler can
//! vectorise it. An AVX2+FMA build of the same loop is picked at run time where
//! the CPU has it; nothing here needs `-C target-cpu=native`.

use rayon::prelude::*;

/// Below this many multiply-adds (a 4 MiB f32 matrix) a matvec runs on the
/// calling thread. Such matrices mostly stay in the last-level cache between
/// decode steps, so a step is dominated by the pool hand-offs, not by memory:
/// measured on the bundled model (largest matrix 1024 x 384), 2.1 ms per note
/// on one thread against 3.1 ms split across two; the official Small and
/// Medium shapes are above the threshold and unchanged (BENCHMARKS.md). It also
/// leaves the host's audio thread a core when the small model runs in the plugin.
const PARALLEL_MIN_MACS: usize = 1 << 20;

fn par_min() -> usize {
    static V: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *V.get_or_init(|| {
        std::env::var("CONTINUO_PAR_MIN")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(PARALLEL_MIN_MACS)
    })
}

/// Rows handed to one rayon task.
const ROWS_PER_TASK: usize = 64;

/// `out[r] = dot(w[r, ..], x)` (+ `bias[r]`) for a row-major `rows x x.len()` matrix.
pub fn matvec(w: &[f32], x: &[f32], bias: Option<&[f32]>, out: &mut [f32]) {
    let cols = x.len();
    let rows = out.len();
    assert_eq!(w.len(), rows * cols, "matvec: weight is not rows x cols");
    if let Some(b) = bias {
        assert_eq!(b.len(), rows, "matvec: bias length");
    }
    let dot = dot_fn();
    for_each_row(out, cols, |r| {
        let v = dot(&w[r * cols..(r + 1) * cols], x);
        match bias {
            Some(b) => v + b[r],
            None => v,
        }
    });
}

/// `out[r] = row(r)` for every row, where each row costs `cols` multiply-adds: on the calling
/// thread for small matrices, else split across the rayon pool in tasks of [`ROWS_PER_TASK`]
/// rows. Every matvec kernel (f32 and quantized) goes through it.
pub(crate) fn for_each_row(out: &mut [f32], cols: usize, row: impl Fn(usize) -> f32 + Sync) {
    for_each_chunk(out, cols, |row0, chunk| {
        for (i, o) in chunk.iter_mut().enumerate() {
            *o = row(row0 + i);
        }
    });
}

/// [`for_each_row`] for kernels that compute several rows at once: `chunk(row0, out)` fills
/// `out` with rows `row0..row0 + out.len()`, the whole matrix on the calling thread or
/// [`ROWS_PER_TASK`] rows per task on the decode pool, by the same rule.
pub(crate) fn for_each_chunk(
    out: &mut [f32],
    cols: usize,
    chunk: impl Fn(usize, &mut [f32]) + Sync,
) {
    for_each_chunk_of([(out, cols)], |_, row0, part| chunk(row0, part));
}

/// A pointer into a buffer whose disjoint parts tasks on several threads write.
struct Shared<T>(*mut T);

// SAFETY: only used where each task writes its own part (see the callers).
unsafe impl<T: Send> Sync for Shared<T> {}

impl<T> Shared<T> {
    /// # Safety
    /// `at..at + n` is within the buffer and no one else uses it meanwhile.
    unsafe fn slice<'a>(&self, at: usize, n: usize) -> &'a mut [T] {
        // SAFETY: as the caller promises.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(at), n) }
    }
}

/// [`for_each_chunk`] for several outputs at once, in one parallel dispatch: `chunk(j, row0,
/// out)` fills `out` with rows `row0..row0 + out.len()` of output `j`. Each `(out, cols)` pair
/// is one matrix-vector product of `out.len()` rows by `cols`. Products that read the same
/// input (q, k and v; gate and up; a GRU layer's two) share one fork and join instead of one
/// each, and one output's last rows overlap the next one's first. Small totals stay on the
/// calling thread. The tasks of [`ROWS_PER_TASK`] rows are numbered across the outputs and
/// handed to the decode pool ([`crate::pool`]), or to rayon where the pool is taken; nothing
/// is allocated.
pub(crate) fn for_each_chunk_of<const N: usize>(
    outs: [(&mut [f32], usize); N],
    chunk: impl Fn(usize, usize, &mut [f32]) + Sync,
) {
    let macs: usize = outs.iter().map(|(out, cols)| out.len() * cols).sum();
    if macs < par_min() || rayon::current_num_threads() < 2 {
        for (j, (out, _)) in outs.into_iter().enumerate() {
            chunk(j, 0, out);
        }
        return;
    }
    let lens = outs.each_ref().map(|(out, _)| out.len());
    let rows = outs.map(|(out, _)| Shared(out.as_mut_ptr()));
    // `first[j]`: the number of output `j`'s first task.
    let mut first = [0; N];
    let mut count = 0;
    for (f, len) in first.iter_mut().zip(lens) {
        *f = count;
        count += len.div_ceil(ROWS_PER_TASK);
    }
    let task = |t: usize| {
        let j = first.partition_point(|&f| f <= t) - 1;
        let row0 = (t - first[j]) * ROWS_PER_TASK;
        // SAFETY: each task number is run once, and task `t` owns rows `row0..row0 + n` of
        // output `j`, which no other task touches.
        let part = unsafe { rows[j].slice(row0, (lens[j] - row0).min(ROWS_PER_TASK)) };
        chunk(j, row0, part);
    };
    if !crate::pool::run(count, &task) {
        (0..count).into_par_iter().for_each(task);
    }
}

/// Like [`matvec`], but only for rows `rows.start..rows.end`, written to `out`.
pub fn matvec_rows(w: &[f32], x: &[f32], rows: std::ops::Range<usize>, out: &mut [f32]) {
    let cols = x.len();
    matvec(&w[rows.start * cols..rows.end * cols], x, None, out);
}

type DotFn = fn(&[f32], &[f32]) -> f32;

fn dot_fn() -> DotFn {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static CHOICE: OnceLock<DotFn> = OnceLock::new();
        *CHOICE.get_or_init(|| {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                dot_avx2_entry
            } else {
                dot_portable
            }
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        dot_portable
    }
}

fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    // Without hardware FMA, `mul_add` would be a slow libm call: use plain mul and add.
    const LANES: usize = 32;
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; LANES];
    let mut ca = a.chunks_exact(LANES);
    let mut cb = b.chunks_exact(LANES);
    for (xa, xb) in (&mut ca).zip(&mut cb) {
        for j in 0..LANES {
            acc[j] += xa[j] * xb[j];
        }
    }
    let mut tail = 0.0f32;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        tail += x * y;
    }
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        for j in 0..width {
            acc[j] += acc[j + width];
        }
    }
    acc[0] + tail
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let chunks = n / 32;
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    let mut acc2 = _mm256_setzero_ps();
    let mut acc3 = _mm256_setzero_ps();
    for c in 0..chunks {
        let o = c * 32;
        // SAFETY: o + 32 <= n, and both slices hold at least n elements.
        unsafe {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(o)), _mm256_loadu_ps(pb.add(o)), acc0);
            acc1 = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(o + 8)),
                _mm256_loadu_ps(pb.add(o + 8)),
                acc1,
            );
            acc2 = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(o + 16)),
                _mm256_loadu_ps(pb.add(o + 16)),
                acc2,
            );
            acc3 = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(o + 24)),
                _mm256_loadu_ps(pb.add(o + 24)),
                acc3,
            );
        }
    }
    let acc = _mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3));
    let mut lanes = [0f32; 8];
    // SAFETY: `lanes` holds exactly 8 f32s.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
    let mut sum = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5]))
        + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
    for k in chunks * 32..n {
        sum += a[k] * b[k];
    }
    sum
}

#[cfg(target_arch = "x86_64")]
fn dot_avx2_entry(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: only selected by `dot_fn` after checking that the CPU has AVX2 and FMA.
    unsafe { dot_avx2(a, b) }
}

/// Plain dot product on the calling thread (attention scores, small vectors).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    dot_fn()(a, b)
}

/// `out = x * rsqrt(mean(x^2) + eps) * weight`, as the reference's RMSNorm (f32 throughout).
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f64, out: &mut [f32]) {
    let mean_sq = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let scale = 1.0 / (mean_sq + eps as f32).sqrt();
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = w * (v * scale);
    }
}

pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// `tanh(x)` as `1 - 2 / (e^(2x) + 1)`: one `exp` (glibc's `tanhf` goes through `expm1f`
/// and measured several times slower on the GRU head's 37 k values per note). At most about
/// 1.2e-7 from `f32::tanh` (one unit in the last place of 1), and exactly ±1 where `e^(2x)`
/// overflows or vanishes.
pub fn tanh(x: f32) -> f32 {
    1.0 - 2.0 / ((2.0 * x).exp() + 1.0)
}

pub fn silu(x: f32) -> f32 {
    x * sigmoid(x)
}

/// In-place softmax over a slice.
pub fn softmax_in_place(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

/// Rounds an f32 to the nearest bfloat16 (ties to even), returned as f32.
pub fn bf16_round(x: f32) -> f32 {
    half::bf16::from_f32(x).to_f32()
}

/// Runs `f` on the contiguous f32 data of a CPU tensor without copying it: how the decode
/// kernels read candle's weights.
pub fn with_f32<R>(
    t: &candle_core::Tensor,
    f: impl FnOnce(&[f32]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("the decode path needs CPU tensors");
    };
    let data = cpu.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => f(&data[start..end]),
        None => candle_core::bail!("the decode path needs contiguous tensors"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tanh_is_within_an_ulp_of_one_of_the_library_tanh() {
        let mut worst = 0.0f32;
        let mut x = -30.0f32;
        while x <= 30.0 {
            for v in [x, x * 1e-3, x * 1e-6] {
                worst = worst.max((tanh(v) - v.tanh()).abs());
            }
            x += 0.001;
        }
        assert!(worst <= 2.5e-7, "{worst}");
        assert_eq!((tanh(100.0), tanh(-100.0), tanh(0.0)), (1.0, -1.0, 0.0));
        assert!(tanh(f32::NAN).is_nan());
    }

    fn naive(w: &[f32], x: &[f32], rows: usize) -> Vec<f32> {
        (0..rows)
            .map(|r| {
                w[r * x.len()..(r + 1) * x.len()]
                    .iter()
                    .zip(x)
                    .map(|(a, b)| (*a as f64) * (*b as f64))
                    .sum::<f64>() as f32
            })
            .collect()
    }

    #[test]
    fn matvec_matches_naive_on_odd_shapes() {
        for &(rows, cols) in &[(1, 1), (3, 7), (5, 33), (130, 515), (700, 1000)] {
            let w: Vec<f32> = (0..rows * cols)
                .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
                .collect();
            let x: Vec<f32> = (0..cols)
                .map(|i| ((i * 104729) % 997) as f32 / 498.0 - 1.0)
                .collect();
            let mut out = vec![0.0; rows];
            matvec(&w, &x, None, &mut out);
            for (a, b) in out.iter().zip(naive(&w, &x, rows)) {
                assert!(
                    (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                    "{rows}x{cols}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn bf16_round_matches_the_spec_examples() {
        assert_eq!(bf16_round(257.0), 256.0);
        assert_eq!(bf16_round(1001.0), 1000.0);
        assert_eq!(bf16_round(5001.0), 4992.0);
        assert_eq!(bf16_round(40001.0), 39936.0);
        assert_eq!(bf16_round(0.82636), 0.828125);
    }
}
