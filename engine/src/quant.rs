//! 8- and 4-bit weight matrices with one f16 scale per group of [`GROUP`] weights, and their
//! matrix-vector kernels.
//!
//! The decode path is memory-bound: every weight is read once per note, so the time per note
//! is about the bytes read divided by the memory bandwidth. f32 weights cost 4 bytes each;
//! [`QFormat::Q8`] costs 1.0625 and [`QFormat::Q4`] 0.5625.
//!
//! ## Layout
//!
//! A `(rows, cols)` matrix is quantized row by row, in groups of [`GROUP`] consecutive weights
//! of a row (`cols` must be a multiple of [`GROUP`]; it divides every official shape: 384,
//! 1536, 1920, 5376, 6720 and the vocabularies' head sizes). Each group has a scale
//! `s`, the f16 value nearest above `max |w| / q_max`, and codes `q = round(w / s)`, so
//! `w ≈ s q` (rounding the scale up keeps every `|w / s|` within `q_max`):
//! - **q8**: `q_max = 127`, one signed byte per weight, in order;
//! - **q4**: `q_max = 7`, codes `q + 8` in `1..=15`, two to a byte: byte `j` of a group holds
//!   weight `j` in its low nibble and weight `j + 16` in its high nibble (so SIMD code unpacks
//!   one 16-byte load into the two halves of the group).
//!
//! `codes` holds the rows one after another (`cols` bytes per row for q8, `cols / 2` for q4),
//! `scales` holds `rows * cols / GROUP` f16 values, row-major. f16 (not f32) scales take a
//! tenth off q4's bytes per note; their rounding (at most 2^-11 of the scale) is far below
//! the codes' own (half a step). The x86 kernels widen them with F16C's `vcvtph2ps`.
//!
//! ## Kernels
//!
//! [`QMatrix::matvec_rows`] multiplies by an f32 vector (the decode path) and
//! [`QMatrix::matmul`] by a batch of them (prefill), with the [`Kernel`] chosen at run time:
//! AVX-512 VNNI, else AVX2, on the input quantized to int8 per group of [`GROUP`] (exact
//! integer group sums, then one f32 scale product per group), else a portable one. The
//! portable f32 and int8 kernels are the references the others are tested against. Rows are
//! split across the rayon pool above [`crate::kernels`]' size threshold, as the f32 kernels
//! do, and the quantized input is kept per thread, so the decode path allocates nothing.
//!
//! The SIMD integer kernels work on register tiles of four weight rows (by two inputs on
//! AVX2, four on VNNI, in batches): each group's bytes are loaded and unpacked once per row
//! and used for every input of the tile, four independent accumulator chains hide the FMA
//! latency, and the q4 nibbles are multiplied as unsigned bytes with the `-8` offset taken
//! off once per input (see `QInput`), two groups per step (one 32-byte load). VNNI steps
//! through a whole 64-byte cache line of each row at a time in 512-bit registers (four q4
//! groups, two q8 ones) and finishes the groups left over in 256-bit steps; that halves the
//! instructions per weight, which the compute-bound batches feel (prefill 1.2-1.6x faster on
//! Zen 5) and the memory-bound decode does not. Each tile prefetches the next tile's rows,
//! which follow it in memory: without that, the decode waited on its weight loads. On VNNI
//! the decode (one input) takes one row at a time, a single stream of weights, which
//! measured faster than four interleaved rows. Every (row, input) result goes through the same operations
//! whatever the tile, so one-row decode and batched prefill agree bit for bit.

use std::fmt;

use half::f16;

use crate::kernels::{for_each_chunk, for_each_chunk_of, for_each_row};

/// Weights per scale.
pub const GROUP: usize = 32;

/// A quantized weight format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QFormat {
    Q8,
    Q4,
}

impl QFormat {
    /// The name used in files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            QFormat::Q8 => "q8",
            QFormat::Q4 => "q4",
        }
    }

    /// `q8` or `q4`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "q8" => Some(QFormat::Q8),
            "q4" => Some(QFormat::Q4),
            _ => None,
        }
    }

    /// The largest code magnitude.
    pub fn q_max(self) -> f32 {
        match self {
            QFormat::Q8 => 127.0,
            QFormat::Q4 => 7.0,
        }
    }

    /// Bytes of codes per group.
    pub fn group_bytes(self) -> usize {
        match self {
            QFormat::Q8 => GROUP,
            QFormat::Q4 => GROUP / 2,
        }
    }

    /// Bytes read per weight, scales included.
    pub fn bytes_per_weight(self) -> f64 {
        (self.group_bytes() + 2) as f64 / GROUP as f64
    }
}

impl fmt::Display for QFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a matrix cannot be quantized or rebuilt from its parts.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QuantError {
    #[error("{cols} columns are not a multiple of the group size {GROUP}")]
    Columns { cols: usize },
    #[error("a {rows} x {cols} matrix needs {expected} {what}, got {got}")]
    Length {
        rows: usize,
        cols: usize,
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("a weight is {0}: only finite weights can be quantized")]
    NotFinite(f32),
    #[error("a scale is {0}: scales must be finite and non-negative")]
    BadScale(f32),
    #[error("a group's largest weight is {0}: its scale does not fit an f16")]
    ScaleRange(f32),
    #[error("a q4 code is 0: codes run from 1 to 15")]
    BadCode,
}

/// A quantized `(rows, cols)` weight matrix (see the module doc for the layout).
#[derive(Clone, PartialEq)]
pub struct QMatrix {
    format: QFormat,
    rows: usize,
    cols: usize,
    codes: Vec<u8>,
    scales: Vec<f16>,
}

impl fmt::Debug for QMatrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "QMatrix({}, {} x {})", self.format, self.rows, self.cols)
    }
}

impl QMatrix {
    /// Quantizes a row-major `(rows, cols)` f32 matrix.
    pub fn quantize(
        format: QFormat,
        w: &[f32],
        rows: usize,
        cols: usize,
    ) -> Result<Self, QuantError> {
        check_shape(rows, cols, w.len(), "weights", rows * cols)?;
        if let Some(&bad) = w.iter().find(|v| !v.is_finite()) {
            return Err(QuantError::NotFinite(bad));
        }
        let groups = rows * cols / GROUP;
        let mut codes = Vec::with_capacity(groups * format.group_bytes());
        let mut scales = Vec::with_capacity(groups);
        for group in w.chunks_exact(GROUP) {
            let amax = group.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let scale = f16_at_least(amax / format.q_max()).ok_or(QuantError::ScaleRange(amax))?;
            let inv = if scale > f16::ZERO {
                1.0 / scale.to_f32()
            } else {
                0.0
            };
            let code = |v: f32| (v * inv).round().clamp(-format.q_max(), format.q_max()) as i32;
            match format {
                QFormat::Q8 => codes.extend(group.iter().map(|&v| code(v) as i8 as u8)),
                QFormat::Q4 => codes.extend((0..GROUP / 2).map(|j| {
                    let lo = (code(group[j]) + 8) as u8;
                    let hi = (code(group[j + GROUP / 2]) + 8) as u8;
                    lo | (hi << 4)
                })),
            }
            scales.push(scale);
        }
        Ok(QMatrix {
            format,
            rows,
            cols,
            codes,
            scales,
        })
    }

    /// A matrix from its stored codes and scales, checked.
    pub fn from_parts(
        format: QFormat,
        rows: usize,
        cols: usize,
        codes: Vec<u8>,
        scales: Vec<f16>,
    ) -> Result<Self, QuantError> {
        let groups = rows * cols / GROUP;
        check_shape(
            rows,
            cols,
            codes.len(),
            "code bytes",
            groups * format.group_bytes(),
        )?;
        check_shape(rows, cols, scales.len(), "scales", groups)?;
        if let Some(&bad) = scales
            .iter()
            .find(|s| !(s.is_finite() && s.to_f32() >= 0.0))
        {
            return Err(QuantError::BadScale(bad.to_f32()));
        }
        if format == QFormat::Q4 && codes.iter().any(|b| b & 0x0f == 0 || b >> 4 == 0) {
            return Err(QuantError::BadCode);
        }
        Ok(QMatrix {
            format,
            rows,
            cols,
            codes,
            scales,
        })
    }

    pub fn format(&self) -> QFormat {
        self.format
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The stored codes (see the module doc).
    pub fn codes(&self) -> &[u8] {
        &self.codes
    }

    /// One scale per group, row-major.
    pub fn scales(&self) -> &[f16] {
        &self.scales
    }

    /// Bytes a matvec reads: codes and scales.
    pub fn bytes(&self) -> usize {
        self.codes.len() + 2 * self.scales.len()
    }

    /// The f32 matrix the codes stand for, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.rows * self.cols];
        for (g, group) in out.chunks_exact_mut(GROUP).enumerate() {
            let codes = &self.codes[g * self.format.group_bytes()..][..self.format.group_bytes()];
            let scale = self.scales[g].to_f32();
            match self.format {
                QFormat::Q8 => {
                    for (o, &c) in group.iter_mut().zip(codes) {
                        *o = scale * f32::from(c as i8);
                    }
                }
                QFormat::Q4 => {
                    for (j, &c) in codes.iter().enumerate() {
                        group[j] = scale * f32::from((c & 0x0f) as i8 - 8);
                        group[j + GROUP / 2] = scale * f32::from((c >> 4) as i8 - 8);
                    }
                }
            }
        }
        out
    }

    /// `out[i] = dot(row rows.start + i, x)` for the rows in `rows`, with the fastest kernel
    /// this CPU has.
    pub fn matvec_rows(&self, x: &[f32], rows: std::ops::Range<usize>, out: &mut [f32]) {
        self.matvec_rows_with(Kernel::best(), x, rows, out);
    }

    /// [`QMatrix::matvec_rows`] with a chosen kernel (for tests and benchmarks). A kernel the
    /// CPU lacks falls back to the portable one.
    pub fn matvec_rows_with(
        &self,
        kernel: Kernel,
        x: &[f32],
        rows: std::ops::Range<usize>,
        out: &mut [f32],
    ) {
        assert_eq!(x.len(), self.cols, "matvec: input length");
        assert!(rows.end <= self.rows, "matvec: rows out of range");
        assert_eq!(out.len(), rows.len(), "matvec: output length");
        let first = rows.start;
        let kernel = kernel.available();
        if kernel.is_int8() {
            INPUT.with_borrow_mut(|input| {
                input.quantize(x);
                let input = std::slice::from_ref(&*input);
                for_each_chunk(out, self.cols, |row0, part| {
                    self.int8_block(kernel, first + row0, input, part);
                });
            });
            return;
        }
        let dot = kernel.f32_dot();
        for_each_row(out, self.cols, |i| {
            let (codes, scales) = self.row(first + i);
            dot(self.format, codes, scales, x)
        });
    }

    /// Several whole-matrix [`QMatrix::matvec_rows`] in one parallel dispatch, with the
    /// fastest kernel: each output gets the same bits as its own call would give. An input
    /// that consecutive products share (q, k and v read one vector) is quantized once.
    pub fn matvec_many<const N: usize>(products: [Matvec<'_>; N]) {
        Self::matvec_many_with(Kernel::best(), products);
    }

    /// [`QMatrix::matvec_many`] with a chosen kernel.
    pub fn matvec_many_with<const N: usize>(kernel: Kernel, products: [Matvec<'_>; N]) {
        for p in &products {
            assert_eq!(p.x.len(), p.matrix.cols, "matvec: input length");
            assert_eq!(p.out.len(), p.matrix.rows, "matvec: output length");
        }
        let kernel = kernel.available();
        if !kernel.is_int8() {
            for p in products {
                p.matrix
                    .matvec_rows_with(kernel, p.x, 0..p.matrix.rows, p.out);
            }
            return;
        }
        INPUTS.with_borrow_mut(|inputs| {
            // `which[j]`: the quantized input of product `j`.
            let mut which = [0; N];
            let mut count = 0;
            for (j, p) in products.iter().enumerate() {
                if j == 0 || !std::ptr::eq(p.x, products[j - 1].x) {
                    if inputs.len() == count {
                        inputs.push(QInput::default());
                    }
                    inputs[count].quantize(p.x);
                    count += 1;
                }
                which[j] = count - 1;
            }
            let inputs = &inputs[..count];
            let matrices = products.each_ref().map(|p| p.matrix);
            let outs = products.map(|p| (p.out, p.matrix.cols));
            for_each_chunk_of(outs, |j, row0, part| {
                let input = std::slice::from_ref(&inputs[which[j]]);
                matrices[j].int8_block(kernel, row0, input, part);
            });
        });
    }

    /// Row `r`'s codes and scales.
    fn row(&self, r: usize) -> (&[u8], &[f16]) {
        let groups = self.cols / GROUP;
        let bytes = groups * self.format.group_bytes();
        (
            &self.codes[r * bytes..(r + 1) * bytes],
            &self.scales[r * groups..(r + 1) * groups],
        )
    }

    /// `out[i][r] = dot(row r, x[i])` for the `m = x.len() / cols` input rows of `x`
    /// (row-major `(m, cols)`), written row-major `(m, rows)`, with the fastest kernel: the
    /// batched path (prefill) for inputs that need no gradient. Each output equals what
    /// [`QMatrix::matvec_rows`] gives for that input alone, bit for bit; the weights are read
    /// once, in blocks that stay in cache while every input passes over them.
    pub fn matmul(&self, x: &[f32], out: &mut [f32]) {
        self.matmul_with(Kernel::best(), x, out);
    }

    /// [`QMatrix::matmul`] with a chosen kernel.
    pub fn matmul_with(&self, kernel: Kernel, x: &[f32], out: &mut [f32]) {
        use rayon::prelude::*;
        /// Weight rows per task: 16 rows of the widest official input (6720) are 105 KiB of q8.
        const BLOCK: usize = 16;
        assert_eq!(x.len() % self.cols, 0, "matmul: input is not (m, cols)");
        let m = x.len() / self.cols;
        assert_eq!(out.len(), m * self.rows, "matmul: output length");
        if m == 0 {
            return;
        }
        let kernel = kernel.available();
        let inputs: Vec<QInput> = if kernel.is_int8() {
            x.chunks_exact(self.cols)
                .map(|row| {
                    let mut q = QInput::default();
                    q.quantize(row);
                    q
                })
                .collect()
        } else {
            Vec::new()
        };
        let f32_dot = kernel.f32_dot();
        // Transposed: (rows, m), so each task owns a contiguous block of weight rows.
        let mut transposed = vec![0.0f32; self.rows * m];
        transposed
            .par_chunks_mut(BLOCK * m)
            .enumerate()
            .for_each(|(b, chunk)| {
                if kernel.is_int8() {
                    self.int8_block(kernel, b * BLOCK, &inputs, chunk);
                    return;
                }
                for (k, out_row) in chunk.chunks_exact_mut(m).enumerate() {
                    let (codes, scales) = self.row(b * BLOCK + k);
                    for (i, o) in out_row.iter_mut().enumerate() {
                        *o = f32_dot(
                            self.format,
                            codes,
                            scales,
                            &x[i * self.cols..(i + 1) * self.cols],
                        );
                    }
                }
            });
        for (r, col) in transposed.chunks_exact(m).enumerate() {
            for (i, &v) in col.iter().enumerate() {
                out[i * self.rows + r] = v;
            }
        }
    }

    /// The integer kernels' product of weight rows `first..first + out.len() / m` with the `m`
    /// quantized `inputs`, into `out` row-major `(rows, m)`. The SIMD kernels work in register
    /// tiles of [`TILE_ROWS`] rows by several inputs, then one input at a time for the rest;
    /// each (row, input) result goes through the same operations whatever the tile, so the
    /// decode path (`m = 1`) and the batched one agree bit for bit.
    fn int8_block(&self, kernel: Kernel, first: usize, inputs: &[QInput], out: &mut [f32]) {
        let m = inputs.len();
        if m == 0 {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        {
            // Decode (one input) on the 512-bit kernels takes one row at a time: a single
            // stream of weights, which measured faster than four interleaved rows
            // (BENCHMARKS.md). The same operations
            // per (row, input) as the tiles, so the results are the same bits.
            macro_rules! decode {
                ($one_row:expr) => {{
                    let one_row = $one_row;
                    for (k, o) in out.iter_mut().enumerate() {
                        let (codes, scales) = self.row(first + k);
                        *o = one_row([RowRef { codes, scales }], [&inputs[0]])[0][0];
                    }
                }};
            }
            // `tile::<[Q4,] N>(r, x, extra...)`: [`QMatrix::tiles`] over that SIMD kernel
            // (the 512-bit ones: [`decode!`] for one input).
            macro_rules! run {
                ($tile:ident::<$q4:literal, $n:literal>, $($extra:expr),*) => {{
                    // The 256-bit kernels decode in tiles too: one row at a time measured
                    // 2x slower for AVX2 q8, whose per-group work the tile shares.
                    self.tiles::<$n>(
                        first,
                        inputs,
                        out,
                        // SAFETY: `kernel` is one the CPU has (`Kernel::available` ran
                        // before), and each arm below runs that kernel's own tile function.
                        |r, x| unsafe { $tile::<$q4, TILE_ROWS, $n>(r, x, $($extra),*) },
                        // SAFETY: as above.
                        |r, x| unsafe { $tile::<$q4, TILE_ROWS, 1>(r, x, $($extra),*) },
                    )
                }};
                ($tile:ident::<$n:literal>) => {{
                    if m == 1 {
                        // SAFETY: as below.
                        return decode!(|row, x| unsafe { $tile::<1, 1>(row, x) });
                    }
                    self.tiles::<$n>(
                        first,
                        inputs,
                        out,
                        // SAFETY: as above.
                        |r, x| unsafe { $tile::<TILE_ROWS, $n>(r, x) },
                        // SAFETY: as above.
                        |r, x| unsafe { $tile::<TILE_ROWS, 1>(r, x) },
                    )
                }};
            }
            // The 256-bit kernels start at group 0 on zeroed accumulators (all-zero bits are
            // 0.0 in every lane).
            let q4 = self.format == QFormat::Q4;
            match kernel {
                Kernel::Avx512Vnni if q4 => return run!(tile_vnni512_q4::<4>),
                Kernel::Avx512Vnni => return run!(tile_vnni512_q8::<4>),
                Kernel::Avx512Vnni256 if q4 => {
                    return run!(tile_vnni::<true, 4>, 0, std::mem::zeroed());
                }
                Kernel::Avx512Vnni256 => return run!(tile_vnni::<false, 4>, 0, std::mem::zeroed()),
                Kernel::Avx2Int8 if q4 => return run!(tile_avx2::<true, 2>, 0, std::mem::zeroed()),
                Kernel::Avx2Int8 => return run!(tile_avx2::<false, 2>, 0, std::mem::zeroed()),
                _ => {}
            }
        }
        for (k, out_row) in out.chunks_exact_mut(m).enumerate() {
            let (codes, scales) = self.row(first + k);
            for (o, q) in out_row.iter_mut().zip(inputs) {
                *o = dot_int8_portable(self.format, codes, scales, &q.codes, &q.scales);
            }
        }
    }

    /// Drives a tile kernel over [`QMatrix::int8_block`]'s rows: `wide` takes [`TILE_ROWS`]
    /// rows by `N` inputs, `narrow` the same rows by one input (the inputs left over). A last
    /// tile short of rows repeats its last row, and the repeats are not written.
    #[cfg(target_arch = "x86_64")]
    fn tiles<const N: usize>(
        &self,
        first: usize,
        inputs: &[QInput],
        out: &mut [f32],
        wide: impl Fn([RowRef<'_>; TILE_ROWS], [&QInput; N]) -> [[f32; N]; TILE_ROWS],
        narrow: impl Fn([RowRef<'_>; TILE_ROWS], [&QInput; 1]) -> [[f32; 1]; TILE_ROWS],
    ) {
        let m = inputs.len();
        let count = out.len() / m;
        for k in (0..count).step_by(TILE_ROWS) {
            let rows = std::array::from_fn(|j| {
                let (codes, scales) = self.row(first + (k + j).min(count - 1));
                RowRef { codes, scales }
            });
            let live = (count - k).min(TILE_ROWS);
            let mut i = 0;
            while i + N <= m {
                let tile = wide(rows, std::array::from_fn(|n| &inputs[i + n]));
                for (j, row) in tile.iter().enumerate().take(live) {
                    out[(k + j) * m + i..][..N].copy_from_slice(row);
                }
                i += N;
            }
            while i < m {
                let tile = narrow(rows, [&inputs[i]]);
                for (j, row) in tile.iter().enumerate().take(live) {
                    out[(k + j) * m + i] = row[0];
                }
                i += 1;
            }
        }
    }
}

/// One product of [`QMatrix::matvec_many`]: `out = matrix x`, over every row.
pub struct Matvec<'a> {
    pub matrix: &'a QMatrix,
    pub x: &'a [f32],
    pub out: &'a mut [f32],
}

/// The smallest f16 at or above `v >= 0`, if there is a finite one.
fn f16_at_least(v: f32) -> Option<f16> {
    let h = f16::from_f32(v);
    let h = if h.to_f32() < v {
        f16::from_bits(h.to_bits() + 1)
    } else {
        h
    };
    h.is_finite().then_some(h)
}

fn check_shape(
    rows: usize,
    cols: usize,
    got: usize,
    what: &'static str,
    expected: usize,
) -> Result<(), QuantError> {
    if !cols.is_multiple_of(GROUP) {
        return Err(QuantError::Columns { cols });
    }
    if got != expected {
        return Err(QuantError::Length {
            rows,
            cols,
            what,
            expected,
            got,
        });
    }
    Ok(())
}

/// A matvec kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Plain Rust, on every CPU: the weights dequantized to f32 on the fly, the input in f32.
    /// The reference for the others.
    Portable,
    /// The same arithmetic in AVX2 + FMA (x86-64).
    Avx2,
    /// Plain Rust integer kernel: the input quantized to int8 per group of [`GROUP`] (one
    /// f32 scale each), exact integer dot products per group, then scaled. The reference for
    /// the integer SIMD kernels.
    PortableInt8,
    /// [`Kernel::PortableInt8`] in AVX2 (`maddubs`): half the instructions per weight of
    /// [`Kernel::Avx2`].
    Avx2Int8,
    /// [`Kernel::PortableInt8`] with AVX-512 VNNI's `vpdpbusd`, in 512-bit registers: one
    /// 64-byte cache line of each weight row per step (four q4 groups, two q8 ones), then
    /// 256-bit steps for the groups left over, so no masked tails.
    Avx512Vnni,
    /// [`Kernel::Avx512Vnni`] in 256-bit registers only (the decode kernel before 512-bit
    /// steps, kept to compare CPUs on which wide registers cost clock speed).
    Avx512Vnni256,
}

impl Kernel {
    /// Every kernel.
    pub const ALL: [Kernel; 6] = [
        Kernel::Portable,
        Kernel::Avx2,
        Kernel::PortableInt8,
        Kernel::Avx2Int8,
        Kernel::Avx512Vnni,
        Kernel::Avx512Vnni256,
    ];

    /// Whether this CPU can run the kernel.
    pub fn is_supported(self) -> bool {
        match self {
            Kernel::Portable | Kernel::PortableInt8 => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 | Kernel::Avx2Int8 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                    && std::arch::is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni | Kernel::Avx512Vnni256 => {
                Kernel::Avx2Int8.is_supported()
                    && std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx2 | Kernel::Avx2Int8 | Kernel::Avx512Vnni | Kernel::Avx512Vnni256 => false,
        }
    }

    /// Whether the kernel quantizes its input to int8.
    pub fn is_int8(self) -> bool {
        matches!(
            self,
            Kernel::PortableInt8 | Kernel::Avx2Int8 | Kernel::Avx512Vnni | Kernel::Avx512Vnni256
        )
    }

    /// The portable kernel computing the same function.
    pub fn reference(self) -> Kernel {
        if self.is_int8() {
            Kernel::PortableInt8
        } else {
            Kernel::Portable
        }
    }

    /// The kernel the decode path uses: the AVX-512 VNNI kernel, else the integer AVX2 one,
    /// where the CPU has them, else the portable f32 one. `CONTINUO_QKERNEL` (`portable`,
    /// `avx2`, `portable-int8`, `avx2-int8`, `avx512-vnni`, `avx512-vnni-256`) overrides the
    /// choice, for measurements.
    pub fn best() -> Kernel {
        static BEST: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| {
            let forced = std::env::var("CONTINUO_QKERNEL")
                .ok()
                .and_then(|v| match v.as_str() {
                    "portable" => Some(Kernel::Portable),
                    "avx2" => Some(Kernel::Avx2),
                    "portable-int8" => Some(Kernel::PortableInt8),
                    "avx2-int8" => Some(Kernel::Avx2Int8),
                    "avx512-vnni" => Some(Kernel::Avx512Vnni),
                    "avx512-vnni-256" => Some(Kernel::Avx512Vnni256),
                    _ => None,
                });
            forced
                .or_else(|| {
                    [Kernel::Avx512Vnni, Kernel::Avx2Int8]
                        .into_iter()
                        .find(|k| k.is_supported())
                })
                .unwrap_or(Kernel::Portable)
                .available()
        })
    }

    /// The row dot product of an f32-input kernel (the portable one for the others).
    fn f32_dot(self) -> DotFn {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => dot_avx2_entry,
            _ => dot_portable,
        }
    }

    /// This kernel if the CPU has it, else its portable reference.
    fn available(self) -> Kernel {
        if self.is_supported() {
            self
        } else {
            self.reference()
        }
    }
}

/// An input vector quantized to int8 per group of [`GROUP`]: `x ≈ scale × code`, with
/// `scale = max |x| / 127` over the group, and two forms of the codes that the SIMD kernels
/// would otherwise recompute for every weight row. Kept per thread and reused, so the decode
/// path does not allocate per step.
#[derive(Default)]
// Only the x86 SIMD kernels read the precomputed forms.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct QInput {
    codes: Vec<i8>,
    scales: Vec<f32>,
    /// `code + 128` as unsigned bytes: VNNI's `vpdpbusd` multiplies unsigned by signed bytes,
    /// so the q8 kernel feeds it these and takes `128 × sum w` off.
    shifted: Vec<u8>,
    /// Per group, eight i32 lanes: `-8 ×` the sum of the four codes that lane `k` multiplies
    /// (bytes `4k..4k + 4`). A q4 weight is stored as `n = q + 8` in `0..=15`, an unsigned
    /// byte once unpacked, so `sum q x = sum n x + this`: the q4 kernels multiply the nibbles
    /// as they are.
    q4_offset: Vec<i32>,
    /// The codes for q4's two-groups-at-a-time step, per pair of groups `(g, g + 1)`: bytes
    /// `0..16` of each (`pair_a`) and bytes `16..32` of each (`pair_b`), 32 bytes per pair,
    /// to match the low and high nibbles of the pair's 32 stored bytes.
    pair_a: Vec<i8>,
    pair_b: Vec<i8>,
    /// Per pair, eight i32 lanes: `-8 ×` the sum of the codes lane `k` multiplies in
    /// `pair_a` and `pair_b` (bytes `4k..4k + 4` of each).
    pair_offset: Vec<i32>,
    /// Per pair, the two groups' scales, each repeated over its four lanes.
    pair_scales: Vec<f32>,
}

impl QInput {
    fn quantize(&mut self, x: &[f32]) {
        self.codes.clear();
        self.scales.clear();
        self.shifted.clear();
        self.q4_offset.clear();
        for group in x.chunks_exact(GROUP) {
            let amax = group.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let scale = amax / 127.0;
            let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            self.codes.extend(group.iter().map(|v| round_code(v * inv)));
            self.scales.push(scale);
        }
        self.shifted
            .extend(self.codes.iter().map(|&c| (c as u8) ^ 0x80));
        self.q4_offset.extend(
            self.codes
                .chunks_exact(4)
                .map(|c| -8 * c.iter().map(|&v| i32::from(v)).sum::<i32>()),
        );
        self.pair_a.clear();
        self.pair_b.clear();
        self.pair_offset.clear();
        self.pair_scales.clear();
        for (codes, scales) in self
            .codes
            .chunks_exact(2 * GROUP)
            .zip(self.scales.chunks_exact(2))
        {
            let (g, h) = codes.split_at(GROUP);
            let (a0, a1) = (self.pair_a.len(), self.pair_b.len());
            self.pair_a.extend_from_slice(&g[..GROUP / 2]);
            self.pair_a.extend_from_slice(&h[..GROUP / 2]);
            self.pair_b.extend_from_slice(&g[GROUP / 2..]);
            self.pair_b.extend_from_slice(&h[GROUP / 2..]);
            let (a, b) = (&self.pair_a[a0..], &self.pair_b[a1..]);
            self.pair_offset.extend((0..8).map(|k| {
                let lane = a[4 * k..4 * k + 4].iter().chain(&b[4 * k..4 * k + 4]);
                -8 * lane.map(|&v| i32::from(v)).sum::<i32>()
            }));
            self.pair_scales.extend([scales[0]; 4]);
            self.pair_scales.extend([scales[1]; 4]);
        }
    }
}

/// `x.round().clamp(-127.0, 127.0) as i8` for `|x| <= 127` (and any finite `x`, by the
/// clamp), without `round`, which is a library call on x86-64's baseline (no SSE4.1): the
/// decode quantizes a few hundred thousand input values per note, and the loop of integer
/// conversions below vectorizes. Halves round away from zero, as `f32::round` does.
#[inline]
fn round_code(x: f32) -> i8 {
    let x = x.clamp(-127.0, 127.0);
    let whole = x as i32; // toward zero
    let frac = x - whole as f32; // exact: |x| < 2^23
    (whole + i32::from(frac >= 0.5) - i32::from(frac <= -0.5)) as i8
}

thread_local! {
    static INPUT: std::cell::RefCell<QInput> = std::cell::RefCell::default();
    /// [`QMatrix::matvec_many`]'s inputs, one per distinct vector.
    static INPUTS: std::cell::RefCell<Vec<QInput>> = std::cell::RefCell::default();
}

/// One row's integer dot product, the reference of the integer SIMD kernels: the row's codes
/// and scales, the quantized input's codes and scales.
fn dot_int8_portable(format: QFormat, codes: &[u8], scales: &[f16], xq: &[i8], xs: &[f32]) -> f32 {
    let gb = format.group_bytes();
    let mut total = 0.0f32;
    for (g, ((&ws, &s), xg)) in scales
        .iter()
        .zip(xs)
        .zip(xq.chunks_exact(GROUP))
        .enumerate()
    {
        let c = &codes[g * gb..(g + 1) * gb];
        let sum: i32 = match format {
            QFormat::Q8 => c
                .iter()
                .zip(xg)
                .map(|(&w, &x)| i32::from(w as i8) * i32::from(x))
                .sum(),
            QFormat::Q4 => c
                .iter()
                .enumerate()
                .map(|(j, &b)| {
                    i32::from((b & 0x0f) as i8 - 8) * i32::from(xg[j])
                        + i32::from((b >> 4) as i8 - 8) * i32::from(xg[j + GROUP / 2])
                })
                .sum(),
        };
        total += ws.to_f32() * s * sum as f32;
    }
    total
}

/// The 32 codes of group `g` as signed bytes in a 256-bit register (q4 unpacked to `-8..=7`).
#[cfg(target_arch = "x86_64")]
macro_rules! group_codes {
    ($format:expr, $pc:expr, $g:expr) => {
        match $format {
            QFormat::Q8 => _mm256_loadu_si256($pc.add($g * GROUP) as *const __m256i),
            QFormat::Q4 => {
                let packed = _mm_loadu_si128($pc.add($g * GROUP / 2) as *const __m128i);
                let mask = _mm_set1_epi8(0x0f);
                let eight = _mm_set1_epi8(8);
                let lo = _mm_sub_epi8(_mm_and_si128(packed, mask), eight);
                let hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(packed, 4), mask), eight);
                _mm256_set_m128i(hi, lo)
            }
        }
    };
}

/// The sum of the eight lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn hsum256(v: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let hi = _mm256_extractf128_ps(v, 1);
    let s = _mm_add_ps(_mm256_castps256_ps128(v), hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// Weight rows per register tile of the integer SIMD kernels.
const TILE_ROWS: usize = 4;

/// One weight row as the tile kernels read it: its codes and its group scales.
#[derive(Clone, Copy)]
struct RowRef<'a> {
    codes: &'a [u8],
    scales: &'a [f16],
}

/// The f16 at `p` widened to f32 (F16C).
///
/// # Safety
/// `p` must point at a readable f16, on a CPU with F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "f16c")]
unsafe fn widen_one(p: *const f16) -> f32 {
    use std::arch::x86_64::*;
    // SAFETY: `p` is readable (the caller's promise).
    let bits = unsafe { p.cast::<u16>().read_unaligned() };
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
}

/// The 32 codes of group `g` as bytes in a 256-bit register, as stored: signed for q8, the
/// unsigned nibbles `0..=15` for q4 (weight `j` in byte `j`).
#[cfg(target_arch = "x86_64")]
macro_rules! group_bytes {
    ($q4:expr, $pc:expr, $g:expr) => {
        if $q4 {
            let packed = _mm_loadu_si128($pc.add($g * GROUP / 2) as *const __m128i);
            let mask = _mm_set1_epi8(0x0f);
            let lo = _mm_and_si128(packed, mask);
            let hi = _mm_and_si128(_mm_srli_epi16(packed, 4), mask);
            _mm256_set_m128i(hi, lo)
        } else {
            _mm256_loadu_si256($pc.add($g * GROUP) as *const __m256i)
        }
    };
}

/// An integer tile kernel over 256-bit registers: [`TILE_ROWS`] weight rows by `N` quantized
/// inputs, every group's exact integer products as eight i32 lanes, each scaled into an f32
/// accumulator per (row, input) by one FMA. The two x86 kernels differ only in how a group's
/// lanes are made: `$prep` once per row and group from its bytes `w` (see `group_bytes!`), then
/// `$pair` per input from that, the input's signed codes `x`, shifted codes `xu` and q4
/// offsets `off` (see [`QInput`]).
#[cfg(target_arch = "x86_64")]
macro_rules! int8_tile_kernel {
    ($name:ident, $features:literal, |$w:ident| $prep:expr,
     |$p:ident, $x:ident, $xu:ident, $off:ident| $pair:expr,
     |$lo:ident, $hi:ident, $xa:ident, $xb:ident, $off2:ident| $quad:expr) => {
        #[target_feature(enable = $features)]
        unsafe fn $name<const Q4: bool, const R: usize, const N: usize>(
            rows: [RowRef<'_>; R],
            inputs: [&QInput; N],
            from_group: usize,
            mut acc: [[std::arch::x86_64::__m256; N]; R],
        ) -> [[f32; N]; R] {
            use std::arch::x86_64::*;
            let format = if Q4 { QFormat::Q4 } else { QFormat::Q8 };
            let groups = rows[0].scales.len();
            for r in &rows {
                assert!(r.scales.len() == groups && r.codes.len() >= groups * format.group_bytes());
            }
            for q in &inputs {
                assert!(
                    q.scales.len() >= groups
                        && q.codes.len() >= groups * GROUP
                        && q.shifted.len() >= groups * GROUP
                        && q.q4_offset.len() >= groups * 8
                        && q.pair_a.len() >= groups / 2 * GROUP
                        && q.pair_b.len() >= groups / 2 * GROUP
                        && q.pair_offset.len() >= groups / 2 * 8
                        && q.pair_scales.len() >= groups / 2 * 8
                );
            }
            assert!(from_group % 2 == 0 && from_group <= groups);
            let gb = format.group_bytes();
            // q4 takes two groups per step: one 32-byte load holds both groups' codes, its low
            // nibbles are weights 0..16 of each and its high nibbles weights 16..32, against
            // the input's codes arranged to match (`QInput::pair_a`, `pair_b`); lanes 0..4 sum
            // the first group, lanes 4..8 the second, each scaled by its own product.
            let pairs = if Q4 { groups / 2 } else { 0 };
            let spread = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
            let nibble = _mm256_set1_epi8(0x0f);
            // As the tile reaches byte `at` of its rows, fetch each new cache line ahead.
            let prefetch_ahead = |at: usize| {
                if at % 64 == 0 {
                    prefetch_rows(&rows, at);
                }
            };
            for p in from_group / 2..pairs {
                prefetch_ahead(p * GROUP);
                // SAFETY: pair p (groups 2p and 2p + 1) of every row and input is in bounds
                // (asserts above).
                unsafe {
                    let load = |v: &Vec<i8>| {
                        _mm256_loadu_si256(v.as_ptr().add(p * GROUP) as *const __m256i)
                    };
                    let xa: [__m256i; N] = std::array::from_fn(|i| load(&inputs[i].pair_a));
                    let xb: [__m256i; N] = std::array::from_fn(|i| load(&inputs[i].pair_b));
                    let off2: [__m256i; N] = std::array::from_fn(|i| {
                        _mm256_loadu_si256(inputs[i].pair_offset.as_ptr().add(p * 8) as *const __m256i)
                    });
                    let xs: [__m256; N] = std::array::from_fn(|i| {
                        _mm256_loadu_ps(inputs[i].pair_scales.as_ptr().add(p * 8))
                    });
                    for (r, acc_r) in rows.iter().zip(acc.iter_mut()) {
                        let v = _mm256_loadu_si256(r.codes.as_ptr().add(p * GROUP) as *const __m256i);
                        let $lo = _mm256_and_si256(v, nibble);
                        let $hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble);
                        // The two groups' weight scales, each over its four lanes.
                        let two = _mm_cvtph_ps(_mm_cvtsi32_si128(
                            (r.scales.as_ptr().add(2 * p) as *const i32).read_unaligned(),
                        ));
                        let ws = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(two), spread);
                        for i in 0..N {
                            let ($xa, $xb, $off2) = (xa[i], xb[i], off2[i]);
                            let lanes = $quad;
                            acc_r[i] = _mm256_fmadd_ps(
                                _mm256_cvtepi32_ps(lanes),
                                _mm256_mul_ps(ws, xs[i]),
                                acc_r[i],
                            );
                        }
                    }
                }
            }
            for g in (2 * pairs).max(from_group)..groups {
                prefetch_ahead(g * gb);
                // SAFETY: group g of every row and input is in bounds (asserts above).
                unsafe {
                    let x: [__m256i; N] = std::array::from_fn(|i| {
                        _mm256_loadu_si256(inputs[i].codes.as_ptr().add(g * GROUP) as *const __m256i)
                    });
                    let xu: [__m256i; N] = std::array::from_fn(|i| {
                        _mm256_loadu_si256(inputs[i].shifted.as_ptr().add(g * GROUP) as *const __m256i)
                    });
                    let off: [__m256i; N] = std::array::from_fn(|i| {
                        _mm256_loadu_si256(inputs[i].q4_offset.as_ptr().add(g * 8) as *const __m256i)
                    });
                    let xs: [f32; N] = std::array::from_fn(|i| *inputs[i].scales.get_unchecked(g));
                    for (r, acc_r) in rows.iter().zip(acc.iter_mut()) {
                        let $w = group_bytes!(Q4, r.codes.as_ptr(), g);
                        let $p = $prep;
                        let ws = widen_one(r.scales.as_ptr().add(g));
                        for i in 0..N {
                            let ($x, $xu, $off) = (x[i], xu[i], off[i]);
                            let lanes = $pair;
                            acc_r[i] = _mm256_fmadd_ps(
                                _mm256_cvtepi32_ps(lanes),
                                _mm256_set1_ps(ws * xs[i]),
                                acc_r[i],
                            );
                        }
                    }
                }
            }
            // A loop, not `map` closures (see `fold512`).
            let mut out = [[0.0f32; N]; R];
            for (o, a) in out.iter_mut().zip(&acc) {
                for (o, &a) in o.iter_mut().zip(a) {
                    *o = hsum256(a);
                }
            }
            out
        }
    };
}

// AVX2: `maddubs` (unsigned by signed bytes, to i16 pairs), then `madd` with ones to i32. q8
// moves the weights' signs onto the inputs (|w| by ±x; |products| ≤ 2 × 127² fit i16); q4's
// nibbles are unsigned already (≤ 2 × 15 × 127), and the offset takes the 8s off.
#[cfg(target_arch = "x86_64")]
int8_tile_kernel!(
    tile_avx2,
    "avx2,fma,f16c",
    |w| if Q4 {
        (w, w)
    } else {
        (_mm256_sign_epi8(w, w), w)
    },
    |p, x, xu, off| {
        let _ = xu;
        let ones = _mm256_set1_epi16(1);
        if Q4 {
            _mm256_add_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(p.0, x), ones), off)
        } else {
            _mm256_madd_epi16(_mm256_maddubs_epi16(p.0, _mm256_sign_epi8(x, p.1)), ones)
        }
    },
    |lo, hi, xa, xb, off2| {
        // Two byte-pair sums per i16 lane, each at most 2 × 15 × 127: their sum fits.
        let pairs = _mm256_add_epi16(_mm256_maddubs_epi16(lo, xa), _mm256_maddubs_epi16(hi, xb));
        _mm256_add_epi32(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)), off2)
    }
);

// AVX-512 VNNI: `vpdpbusd` (unsigned by signed bytes, summed into i32 lanes) in one
// instruction. q4: the nibbles by x, on top of the input's offset. q8: the shifted input
// (x + 128) by w, on top of `-128 × sum w`, which is computed once per row and group.
#[cfg(target_arch = "x86_64")]
int8_tile_kernel!(
    tile_vnni,
    "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni",
    |w| if Q4 {
        (w, w)
    } else {
        let zero = _mm256_setzero_si256();
        (
            w,
            _mm256_sub_epi32(zero, _mm256_dpbusd_epi32(zero, _mm256_set1_epi8(-128), w)),
        )
    },
    |p, x, xu, off| if Q4 {
        _mm256_dpbusd_epi32(off, p.0, x)
    } else {
        _mm256_dpbusd_epi32(p.1, xu, p.0)
    },
    |lo, hi, xa, xb, off2| _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(off2, lo, xa), hi, xb)
);

/// q4 on AVX-512 VNNI in 512-bit registers: four groups per step, one 64-byte load (a whole
/// cache line) per row, against the pair step's arrangement of the input taken two pairs at a
/// time (`QInput`'s pair forms hold consecutive pairs back to back). Half the instructions per
/// weight of [`tile_vnni`]'s pair step. The groups left over (fewer than four) go through
/// [`tile_vnni`]'s pair and single steps, on top of these accumulators folded to 256 bits.
///
/// # Safety
/// The CPU must have the features enabled below ([`Kernel::Avx512Vnni`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
unsafe fn tile_vnni512_q4<const R: usize, const N: usize>(
    rows: [RowRef<'_>; R],
    inputs: [&QInput; N],
) -> [[f32; N]; R] {
    use std::arch::x86_64::*;
    let groups = rows[0].scales.len();
    for r in &rows {
        assert!(r.scales.len() == groups && r.codes.len() >= groups * GROUP / 2);
    }
    for q in &inputs {
        assert!(
            q.pair_a.len() >= groups / 2 * GROUP
                && q.pair_b.len() >= groups / 2 * GROUP
                && q.pair_offset.len() >= groups / 2 * 8
                && q.pair_scales.len() >= groups / 2 * 8
        );
    }
    let quads = groups / 4;
    let spread = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    let nibble = _mm512_set1_epi8(0x0f);
    let mut acc = [[_mm512_setzero_ps(); N]; R];
    for q in 0..quads {
        // Each step reads one cache line of every row.
        prefetch_rows(&rows, q * 64);
        // SAFETY: groups 4q..4q + 4 of every row and input are in bounds (asserts above).
        unsafe {
            let load = |v: &Vec<i8>| _mm512_loadu_si512(v.as_ptr().add(q * 64) as *const _);
            let xa: [__m512i; N] = std::array::from_fn(|i| load(&inputs[i].pair_a));
            let xb: [__m512i; N] = std::array::from_fn(|i| load(&inputs[i].pair_b));
            let off: [__m512i; N] = std::array::from_fn(|i| {
                _mm512_loadu_si512(inputs[i].pair_offset.as_ptr().add(q * 16) as *const _)
            });
            let xs: [__m512; N] = std::array::from_fn(|i| {
                _mm512_loadu_ps(inputs[i].pair_scales.as_ptr().add(q * 16))
            });
            for (r, acc_r) in rows.iter().zip(acc.iter_mut()) {
                let v = _mm512_loadu_si512(r.codes.as_ptr().add(q * 64) as *const _);
                let lo = _mm512_and_si512(v, nibble);
                let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(v), nibble);
                // The four groups' weight scales, each over its four lanes.
                let four = _mm_cvtph_ps(_mm_loadl_epi64(
                    r.scales.as_ptr().add(4 * q) as *const __m128i
                ));
                let ws = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(four));
                for i in 0..N {
                    let lanes =
                        _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(off[i], lo, xa[i]), hi, xb[i]);
                    acc_r[i] = _mm512_fmadd_ps(
                        _mm512_cvtepi32_ps(lanes),
                        _mm512_mul_ps(ws, xs[i]),
                        acc_r[i],
                    );
                }
            }
        }
    }
    // SAFETY: the same CPU features (this function's own).
    unsafe { tile_vnni::<true, R, N>(rows, inputs, 4 * quads, fold512(acc)) }
}

/// q8 on AVX-512 VNNI in 512-bit registers: two groups per step, one 64-byte load (a whole
/// cache line) per row, against the shifted input codes of both groups (consecutive in
/// `QInput::shifted`). Half the instructions per weight of [`tile_vnni`]'s step. A last odd
/// group goes through [`tile_vnni`], on top of these accumulators folded to 256 bits.
///
/// # Safety
/// The CPU must have the features enabled below ([`Kernel::Avx512Vnni`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
unsafe fn tile_vnni512_q8<const R: usize, const N: usize>(
    rows: [RowRef<'_>; R],
    inputs: [&QInput; N],
) -> [[f32; N]; R] {
    use std::arch::x86_64::*;
    let groups = rows[0].scales.len();
    for r in &rows {
        assert!(r.scales.len() == groups && r.codes.len() >= groups * GROUP);
    }
    for q in &inputs {
        assert!(q.scales.len() >= groups && q.shifted.len() >= groups * GROUP);
    }
    let pairs = groups / 2;
    // Lanes 0..8 belong to the first group of a pair, 8..16 to the second.
    let spread = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    let zero = _mm512_setzero_si512();
    let minus128 = _mm512_set1_epi8(-128);
    let mut acc = [[_mm512_setzero_ps(); N]; R];
    for p in 0..pairs {
        // Each step reads one cache line of every row.
        prefetch_rows(&rows, p * 64);
        // SAFETY: groups 2p and 2p + 1 of every row and input are in bounds (asserts above).
        unsafe {
            let xu: [__m512i; N] = std::array::from_fn(|i| {
                _mm512_loadu_si512(inputs[i].shifted.as_ptr().add(p * 64) as *const _)
            });
            let xs: [__m512; N] = std::array::from_fn(|i| {
                let two = _mm_castsi128_ps(_mm_loadl_epi64(
                    inputs[i].scales.as_ptr().add(2 * p) as *const __m128i
                ));
                _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(two))
            });
            for (r, acc_r) in rows.iter().zip(acc.iter_mut()) {
                let w = _mm512_loadu_si512(r.codes.as_ptr().add(p * 64) as *const _);
                // `-128 × sum w` per lane, which the shifted input adds.
                let base = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, minus128, w));
                let two = _mm_cvtph_ps(_mm_cvtsi32_si128(
                    (r.scales.as_ptr().add(2 * p) as *const i32).read_unaligned(),
                ));
                let ws = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(two));
                for i in 0..N {
                    let lanes = _mm512_dpbusd_epi32(base, xu[i], w);
                    acc_r[i] = _mm512_fmadd_ps(
                        _mm512_cvtepi32_ps(lanes),
                        _mm512_mul_ps(ws, xs[i]),
                        acc_r[i],
                    );
                }
            }
        }
    }
    // SAFETY: the same CPU features (this function's own).
    unsafe { tile_vnni::<false, R, N>(rows, inputs, 2 * pairs, fold512(acc)) }
}

/// The integer SIMD kernels' prefetch: for each of the `R` rows, the cache line at byte `at`
/// of the row that far ahead in memory: the next tile of `R` rows (they follow these), but at
/// least [`PREFETCH_MIN_BYTES`]. A prefetch never faults, hence the wrapping address.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse")]
#[inline]
fn prefetch_rows<const R: usize>(rows: &[RowRef<'_>; R], at: usize) {
    use std::arch::x86_64::*;
    for r in rows {
        let ahead = (R * r.codes.len()).max(PREFETCH_MIN_BYTES) + at;
        _mm_prefetch::<_MM_HINT_T0>(r.codes.as_ptr().wrapping_add(ahead) as *const i8);
    }
}

/// The least prefetch distance of the integer SIMD kernels. One q4 row of 1920 weights is 960 bytes:
/// too close to cover the memory's latency when decode takes one row at a time. 4 KiB made
/// Medium q4 decode about 7 % faster on Zen 5 (8 KiB the same; q8, whose rows are longer,
/// unchanged).
#[cfg(target_arch = "x86_64")]
const PREFETCH_MIN_BYTES: usize = 4096;

/// 512-bit accumulators folded to 256 bits: lanes `k` and `k + 8` summed.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f")]
#[inline]
fn fold512<const R: usize, const N: usize>(
    acc: [[std::arch::x86_64::__m512; N]; R],
) -> [[std::arch::x86_64::__m256; N]; R] {
    use std::arch::x86_64::*;
    // Loops, not `map` closures: a closure does not inherit the target features, so it is
    // not inlined, and in decode (one row per call) that call cost as much as the row.
    let mut out = [[_mm256_setzero_ps(); N]; R];
    for (o, a) in out.iter_mut().zip(&acc) {
        for (o, &a) in o.iter_mut().zip(a) {
            let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(a)));
            *o = _mm256_add_ps(_mm512_castps512_ps256(a), hi);
        }
    }
    out
}

/// One row's dot product: `codes` and `scales` of the row, `x` of length `cols`.
type DotFn = fn(QFormat, &[u8], &[f16], &[f32]) -> f32;

fn dot_portable(format: QFormat, codes: &[u8], scales: &[f16], x: &[f32]) -> f32 {
    let gb = format.group_bytes();
    let mut total = 0.0f32;
    for (g, (&scale, xg)) in scales.iter().zip(x.chunks_exact(GROUP)).enumerate() {
        let c = &codes[g * gb..(g + 1) * gb];
        // Eight independent partial sums, so the compiler can vectorise the group.
        let mut acc = [0.0f32; 8];
        match format {
            QFormat::Q8 => {
                for (j, (&code, &xv)) in c.iter().zip(xg).enumerate() {
                    acc[j % 8] += f32::from(code as i8) * xv;
                }
            }
            QFormat::Q4 => {
                for (j, &byte) in c.iter().enumerate() {
                    acc[j % 8] += f32::from((byte & 0x0f) as i8 - 8) * xg[j];
                    acc[j % 8] += f32::from((byte >> 4) as i8 - 8) * xg[j + GROUP / 2];
                }
            }
        }
        let sum = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
        total += scale.to_f32() * sum;
    }
    total
}

#[cfg(target_arch = "x86_64")]
fn dot_avx2_entry(format: QFormat, codes: &[u8], scales: &[f16], x: &[f32]) -> f32 {
    // SAFETY: this entry is only chosen when `Kernel::Avx2.is_supported()`.
    unsafe { dot_avx2(format, codes, scales, x) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_avx2(format: QFormat, codes: &[u8], scales: &[f16], x: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let groups = scales.len();
    assert!(codes.len() >= groups * format.group_bytes() && x.len() >= groups * GROUP);
    let (pc, px) = (codes.as_ptr(), x.as_ptr());
    let mut acc = _mm256_setzero_ps();
    // Four products of eight i8 codes (as f32) with eight inputs, summed into one vector.
    let fma4 = |bytes: __m256i, xg: *const f32, sum: __m256| -> __m256 {
        // SAFETY: `xg` points at 32 readable f32 (checked by the assert above).
        unsafe {
            let lo = _mm256_castsi256_si128(bytes);
            let hi = _mm256_extracti128_si256(bytes, 1);
            let c0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo));
            let c1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)));
            let c2 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi));
            let c3 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)));
            let s01 = _mm256_fmadd_ps(
                c1,
                _mm256_loadu_ps(xg.add(8)),
                _mm256_mul_ps(c0, _mm256_loadu_ps(xg)),
            );
            let s23 = _mm256_fmadd_ps(
                c3,
                _mm256_loadu_ps(xg.add(24)),
                _mm256_mul_ps(c2, _mm256_loadu_ps(xg.add(16))),
            );
            _mm256_add_ps(sum, _mm256_add_ps(s01, s23))
        }
    };
    for g in 0..groups {
        // SAFETY: group g's codes and inputs are in bounds (assert above).
        unsafe {
            let bytes = group_codes!(format, pc, g);
            let group = fma4(bytes, px.add(g * GROUP), _mm256_setzero_ps());
            acc = _mm256_fmadd_ps(
                group,
                _mm256_set1_ps(widen_one(scales.as_ptr().add(g))),
                acc,
            );
        }
    }
    hsum256(acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic matrix with a spread of magnitudes per group, zeros and one all-zero group.
    fn matrix(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
        let mut state = seed;
        let mut w: Vec<f32> = (0..rows * cols)
            .map(|i| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                let magnitude = [0.01, 0.3, 2.0, 40.0][(i / GROUP) % 4];
                if i % 37 == 0 {
                    0.0
                } else {
                    u * magnitude
                }
            })
            .collect();
        w[..GROUP].fill(0.0);
        w
    }

    fn reference(w: &[f32], x: &[f32], rows: std::ops::Range<usize>) -> Vec<f64> {
        let cols = x.len();
        rows.map(|r| {
            (0..cols)
                .map(|c| f64::from(w[r * cols + c]) * f64::from(x[c]))
                .sum()
        })
        .collect()
    }

    #[test]
    fn dequantized_weights_are_within_half_a_step() {
        let (rows, cols) = (6, 4 * GROUP);
        let w = matrix(rows, cols, 1);
        for format in [QFormat::Q8, QFormat::Q4] {
            let q = QMatrix::quantize(format, &w, rows, cols).unwrap();
            let d = q.dequantize();
            for (g, (wg, dg)) in w.chunks(GROUP).zip(d.chunks(GROUP)).enumerate() {
                let step = q.scales()[g].to_f32();
                let amax = wg.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                // The f16 at or just above amax / q_max: within one f16 step of it (relative
                // 2^-10 for normal f16s, 2^-24 absolute for subnormal ones).
                let exact = amax / format.q_max();
                let f16_step = (exact / 1024.0).max(2f32.powi(-24));
                assert!(
                    step >= exact && step <= exact + f16_step,
                    "{step} vs {exact}"
                );
                for (a, b) in wg.iter().zip(dg) {
                    assert!(
                        (a - b).abs() <= 0.5001 * step,
                        "{format}: {a} vs {b}, step {step}"
                    );
                }
            }
            // The all-zero group stays exactly zero.
            assert!(d[..GROUP].iter().all(|&v| v == 0.0));
        }
    }

    #[test]
    fn the_portable_kernel_matches_dequantize_then_f32() {
        let (rows, cols) = (40, 1920);
        let w = matrix(rows, cols, 2);
        let x: Vec<f32> = (0..cols)
            .map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0)
            .collect();
        for format in [QFormat::Q8, QFormat::Q4] {
            let q = QMatrix::quantize(format, &w, rows, cols).unwrap();
            let d = q.dequantize();
            let want = reference(&d, &x, 3..rows);
            let mut got = vec![0.0; rows - 3];
            q.matvec_rows_with(Kernel::Portable, &x, 3..rows, &mut got);
            for (r, (g, want)) in got.iter().zip(&want).enumerate() {
                let scale: f64 = (0..cols)
                    .map(|c| f64::from(d[(r + 3) * cols + c] * x[c]).abs())
                    .sum();
                assert!(
                    (f64::from(*g) - want).abs() <= 1e-5 * scale.max(1e-6),
                    "{format} row {r}: {g} vs {want}"
                );
            }
        }
    }

    #[test]
    fn every_kernel_this_cpu_has_matches_its_portable_reference() {
        // Group counts per row: 210 (four at a time leaves a pair), 60 (nothing left), 7 (a
        // pair and one left), 5 (one left) and 3 (no step of four, a pair and one left).
        for (rows, cols) in [
            (300, 6720),
            (9, 1920),
            (7, 7 * GROUP),
            (5, 5 * GROUP),
            (7, 3 * GROUP),
        ] {
            check_kernels(rows, cols);
        }
    }

    fn check_kernels(rows: usize, cols: usize) {
        let w = matrix(rows, cols, 3);
        let x: Vec<f32> = (0..cols)
            .map(|i| ((i * 104729) % 211) as f32 / 100.0 - 1.05)
            .collect();
        for format in [QFormat::Q8, QFormat::Q4] {
            let q = QMatrix::quantize(format, &w, rows, cols).unwrap();
            let d = q.dequantize();
            for kernel in Kernel::ALL.into_iter().filter(|k| k.is_supported()) {
                let mut reference = vec![0.0; rows];
                q.matvec_rows_with(kernel.reference(), &x, 0..rows, &mut reference);
                let mut got = vec![0.0; rows];
                q.matvec_rows_with(kernel, &x, 0..rows, &mut got);
                for r in 0..rows {
                    let scale: f32 = d[r * cols..(r + 1) * cols]
                        .iter()
                        .zip(&x)
                        .map(|(a, b)| (a * b).abs())
                        .sum();
                    assert!(
                        (got[r] - reference[r]).abs() <= 1e-5 * scale.max(1e-6),
                        "{format} {kernel:?} row {r}: {} vs {}",
                        got[r],
                        reference[r]
                    );
                }
            }
        }
    }

    #[test]
    fn the_int8_kernel_is_within_the_input_rounding_bound_of_f32() {
        // Quantizing the input moves each x by at most half its group's step s_x, so a row's
        // result moves by at most sum over groups of s_x / 2 * sum |w|.
        let (rows, cols) = (50, 1920);
        let w = matrix(rows, cols, 5);
        let x: Vec<f32> = (0..cols)
            .map(|i| (((i * 7919) % 103) as f32 / 51.0 - 1.0) * [0.1, 3.0][(i / GROUP) % 2])
            .collect();
        for format in [QFormat::Q8, QFormat::Q4] {
            let q = QMatrix::quantize(format, &w, rows, cols).unwrap();
            let d = q.dequantize();
            let want = reference(&d, &x, 0..rows);
            let mut got = vec![0.0; rows];
            q.matvec_rows_with(Kernel::PortableInt8, &x, 0..rows, &mut got);
            for r in 0..rows {
                let row = &d[r * cols..(r + 1) * cols];
                let bound: f64 = row
                    .chunks(GROUP)
                    .zip(x.chunks(GROUP))
                    .map(|(wg, xg)| {
                        let step = xg.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0;
                        f64::from(step) / 2.0 * wg.iter().map(|v| f64::from(v.abs())).sum::<f64>()
                    })
                    .sum();
                let err = (f64::from(got[r]) - want[r]).abs();
                assert!(
                    err <= bound * 1.001 + 1e-4,
                    "{format} row {r}: error {err} > {bound}"
                );
            }
        }
    }

    #[test]
    fn the_batched_product_equals_one_matvec_per_input() {
        // 3 groups per row, and 7 (a step of four groups, then a pair and one).
        for (rows, cols, m) in [(37, 3 * GROUP, 5), (37, 7 * GROUP, 6)] {
            check_batched_against_single(rows, cols, m);
        }
    }

    #[test]
    fn input_codes_round_as_f32_round_does() {
        let mut x = -130.0f32;
        while x <= 130.0 {
            for v in [
                x,
                x + 0.5,
                x - f32::EPSILON * x.abs(),
                x + f32::EPSILON * x.abs(),
            ] {
                assert_eq!(round_code(v), v.round().clamp(-127.0, 127.0) as i8, "{v}");
            }
            x += 0.125;
        }
        for v in [0.49999997f32, -0.49999997, 126.5, -126.5, 0.0, -0.0] {
            assert_eq!(round_code(v), v.round() as i8, "{v}");
        }
    }

    #[test]
    fn several_products_in_one_dispatch_equal_one_call_each() {
        // q, k and v of one input, then a product of another: 1100 x 1536 is above the
        // parallel threshold, so its rows are split into tasks (the last one short), and
        // the small ones ride along in the same dispatch.
        let shapes = [(1100, 1536), (130, 1536), (130, 1536), (70, 640)];
        let x1: Vec<f32> = (0..1536)
            .map(|i| ((i * 7) % 23) as f32 / 11.0 - 1.0)
            .collect();
        let x2: Vec<f32> = (0..640)
            .map(|i| ((i * 5) % 19) as f32 / 9.0 - 1.0)
            .collect();
        let xs = [&x1, &x1, &x1, &x2];
        for format in [QFormat::Q8, QFormat::Q4] {
            let mats: Vec<QMatrix> = shapes
                .iter()
                .enumerate()
                .map(|(i, &(r, c))| {
                    QMatrix::quantize(format, &matrix(r, c, 20 + i as u64), r, c).unwrap()
                })
                .collect();
            for kernel in Kernel::ALL.into_iter().filter(|k| k.is_supported()) {
                let mut together: Vec<Vec<f32>> =
                    shapes.iter().map(|&(r, _)| vec![f32::NAN; r]).collect();
                let mut outs = together.iter_mut();
                let products = std::array::from_fn::<_, 4, _>(|i| Matvec {
                    matrix: &mats[i],
                    x: xs[i],
                    out: outs.next().expect("one output per product"),
                });
                QMatrix::matvec_many_with(kernel, products);
                for ((q, x), got) in mats.iter().zip(xs).zip(&together) {
                    let mut alone = vec![0.0; q.rows()];
                    q.matvec_rows_with(kernel, x, 0..q.rows(), &mut alone);
                    assert_eq!(got, &alone, "{format} {kernel:?} {} rows", q.rows());
                }
            }
        }
    }

    fn check_batched_against_single(rows: usize, cols: usize, m: usize) {
        let w = matrix(rows, cols, 6);
        let x: Vec<f32> = (0..m * cols)
            .map(|i| ((i * 31) % 17) as f32 / 8.0 - 1.0)
            .collect();
        for format in [QFormat::Q8, QFormat::Q4] {
            let q = QMatrix::quantize(format, &w, rows, cols).unwrap();
            for kernel in Kernel::ALL.into_iter().filter(|k| k.is_supported()) {
                let mut batched = vec![0.0; m * rows];
                q.matmul_with(kernel, &x, &mut batched);
                for i in 0..m {
                    let mut single = vec![0.0; rows];
                    q.matvec_rows_with(kernel, &x[i * cols..(i + 1) * cols], 0..rows, &mut single);
                    assert_eq!(
                        &batched[i * rows..(i + 1) * rows],
                        &single[..],
                        "{format} {kernel:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn scales_are_f16_at_or_above_the_exact_ones_and_out_of_range_groups_are_errors() {
        // Tiny weights (the scale an f16 subnormal) still dequantize within half a step.
        let tiny: Vec<f32> = (0..GROUP).map(|i| (i as f32 - 15.5) * 1e-7).collect();
        for format in [QFormat::Q8, QFormat::Q4] {
            let q = QMatrix::quantize(format, &tiny, 1, GROUP).unwrap();
            let step = q.scales()[0].to_f32();
            assert!(step >= 15.5e-7 / format.q_max(), "{format}: {step}");
            for (a, b) in tiny.iter().zip(q.dequantize()) {
                assert!((a - b).abs() <= 0.5001 * step, "{format}: {a} vs {b}");
            }
        }
        assert_eq!(f16_at_least(1.0), Some(f16::ONE));
        assert!(f16_at_least(1.0 + 1e-4).unwrap() > f16::ONE);
        // 1e6 / 7 is beyond f16's largest finite value (65504); 1e6 / 127 is not.
        let huge = [1e6f32; GROUP];
        assert_eq!(
            QMatrix::quantize(QFormat::Q4, &huge, 1, GROUP),
            Err(QuantError::ScaleRange(1e6))
        );
        assert!(QMatrix::quantize(QFormat::Q8, &huge, 1, GROUP).is_ok());
    }

    #[test]
    fn bad_shapes_and_parts_are_errors() {
        assert_eq!(
            QMatrix::quantize(QFormat::Q8, &[0.0; 40], 2, 20),
            Err(QuantError::Columns { cols: 20 })
        );
        assert!(matches!(
            QMatrix::quantize(QFormat::Q4, &[0.0; 32], 2, 32),
            Err(QuantError::Length { .. })
        ));
        let mut nan = vec![0.0; 32];
        nan[5] = f32::NAN;
        assert!(matches!(
            QMatrix::quantize(QFormat::Q8, &nan, 1, 32),
            Err(QuantError::NotFinite(_))
        ));
        let q = QMatrix::quantize(QFormat::Q4, &matrix(2, 64, 4), 2, 64).unwrap();
        let (codes, scales) = (q.codes().to_vec(), q.scales().to_vec());
        assert_eq!(
            QMatrix::from_parts(QFormat::Q4, 2, 64, codes.clone(), scales.clone()).unwrap(),
            q
        );
        let mut bad_scales = scales.clone();
        bad_scales[1] = f16::from_f32(-1.0);
        assert!(QMatrix::from_parts(QFormat::Q4, 2, 64, codes.clone(), bad_scales).is_err());
        let mut bad_codes = codes.clone();
        bad_codes[0] = 0;
        assert_eq!(
            QMatrix::from_parts(QFormat::Q4, 2, 64, bad_codes, scales.clone()),
            Err(QuantError::BadCode)
        );
        assert!(QMatrix::from_parts(QFormat::Q8, 2, 64, codes, scales).is_err());
    }
}
