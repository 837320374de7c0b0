//! The built-in polyphonic piano-like voice, so the plugin makes sound on its own without any
//! MIDI routing (many FL Studio users never route plugin MIDI).
//!
//! Each voice is a few slightly inharmonic partials with their own exponential decays (upper
//! partials die faster), a 2 ms attack and a short release. Oscillators are rotating phasors, so
//! there is no `sin()` per sample: one complex multiply per sample both turns and decays a
//! partial, and a release is folded into that rotation too, so a held or released voice needs
//! no envelope work at all.
//!
//! The oscillators of all voices live in one bank, struct-of-arrays, sixteen to a [`Chunk`]
//! (four voices of four partials), so a sample of every voice is a few vector operations. On
//! x86-64 an explicit AVX-512 or AVX2+FMA kernel runs (the widest the CPU has, checked once at
//! construction); elsewhere a portable one with the same arithmetic. Phasors are rescaled to their exact amplitudes
//! every [`SETTLE_FRAMES`] samples, which undoes rounding drift and frees silent voices. Nothing
//! allocates after construction.

use std::f32::consts::{FRAC_PI_4, TAU};

/// The most voices sounding at once; the oldest is stolen beyond that.
pub const MAX_VOICES: usize = 32;
const PARTIALS: usize = 4;
/// Relative partial amplitudes.
const PARTIAL_GAINS: [f32; PARTIALS] = [1.0, 0.45, 0.22, 0.1];
/// Slight stretch of the upper partials, as in a real string.
const INHARMONICITY: f32 = 0.0004;
const ATTACK_SECONDS: f32 = 0.002;
const RELEASE_SECONDS: f32 = 0.12;
/// Release time used when everything is silenced at once (bypass, transport stop).
const FAST_RELEASE_SECONDS: f32 = 0.01;
/// A voice quieter than this is freed.
const SILENCE: f32 = 1.0e-4;
const MASTER_GAIN: f32 = 0.2;

/// Oscillators per chunk: one AVX-512 register of `f32`, or two AVX ones.
const LANES: usize = 16;
const VOICES_PER_CHUNK: usize = LANES / PARTIALS;
const CHUNKS: usize = MAX_VOICES / VOICES_PER_CHUNK;
/// Samples between two rescales of the phasors (and checks for silent voices).
const SETTLE_FRAMES: u64 = 256;

/// Who started a voice: note-offs only end voices of their own source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoiceSource {
    Player,
    Generated,
}

/// Sixteen oscillators (four voices), struct-of-arrays. Lanes of free voices (and of partials
/// above Nyquist) are all zero, so they add nothing.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, align(64))]
struct Chunk {
    /// The phasors. Their length is the partial's amplitude.
    re: [f32; LANES],
    im: [f32; LANES],
    /// The per-sample rotation, including the partial's decay and the voice's release.
    rot_re: [f32; LANES],
    rot_im: [f32; LANES],
    /// The voice's pan gains.
    gain_left: [f32; LANES],
    gain_right: [f32; LANES],
    /// The attack: `envelope = min(envelope + attack_step, 1)` per sample, applied before the
    /// sample is taken. `attack_step` is zero once the attack is over or the voice released;
    /// then `envelope` is 1 (a release moves it into the phasors), so the kernel may skip it.
    envelope: [f32; LANES],
    attack_step: [f32; LANES],
    /// The exact length each phasor should have at the bank's last settle, and the factor it
    /// shrinks by until the next (the per-sample decay to the power [`SETTLE_FRAMES`]). A voice
    /// started or released in between is expressed as of the last settle, so every lane moves
    /// on by the same number of samples.
    amplitude: [f32; LANES],
    settle_decay: [f32; LANES],
}

impl Chunk {
    /// Moves the exact amplitudes on by [`SETTLE_FRAMES`] and rescales the phasors to them,
    /// undoing rounding drift. Lane-wise, so it vectorizes.
    fn settle(&mut self) {
        for l in 0..LANES {
            self.amplitude[l] *= self.settle_decay[l];
            let (re, im) = (self.re[l], self.im[l]);
            let norm = (re * re + im * im).sqrt();
            let scale = if norm > 0.0 {
                self.amplitude[l] / norm
            } else {
                0.0
            };
            self.re[l] = re * scale;
            self.im[l] = im * scale;
        }
    }

    fn clear(&mut self, lanes: std::ops::Range<usize>) {
        for lane in lanes {
            self.re[lane] = 0.0;
            self.im[lane] = 0.0;
            self.rot_re[lane] = 0.0;
            self.rot_im[lane] = 0.0;
            self.gain_left[lane] = 0.0;
            self.gain_right[lane] = 0.0;
            self.envelope[lane] = 0.0;
            self.attack_step[lane] = 0.0;
            self.amplitude[lane] = 0.0;
            self.settle_decay[lane] = 0.0;
        }
    }
}

/// What the bank needs to know about a sounding voice besides its oscillators.
#[derive(Debug, Clone, Copy)]
struct Voice {
    source: VoiceSource,
    channel: u8,
    key: u8,
    /// Increasing start counter, for stealing the oldest voice.
    started: u64,
    /// Per-sample release multiplier once released; `1.0` while held.
    release: f32,
    /// The rotation and per-sample decay of each partial without the release (all zero for a
    /// partial above Nyquist, which stays silent).
    held_rot_re: [f32; PARTIALS],
    held_rot_im: [f32; PARTIALS],
    held_decay: [f32; PARTIALS],
}

/// The chunk of voice `slot`, and its lanes there.
fn lanes(slot: usize) -> (usize, std::ops::Range<usize>) {
    let first = (slot % VOICES_PER_CHUNK) * PARTIALS;
    (slot / VOICES_PER_CHUNK, first..first + PARTIALS)
}

/// The synth. Called on the audio thread only.
pub struct PianoVoice {
    bank: [Chunk; CHUNKS],
    voices: [Option<Voice>; MAX_VOICES],
    /// Chunks `..live_chunks` hold every sounding voice (rounded up to pairs for the kernel).
    live_chunks: usize,
    /// Whether some voice may still be in its attack (the kernel then runs the envelope).
    attacking: bool,
    /// Samples rendered so far, and at the last settle (always a multiple of
    /// [`SETTLE_FRAMES`]: rendering stops at each one).
    clock: u64,
    settled_clock: u64,
    sample_rate: f32,
    next_start: u64,
    kernel: Kernel,
}

impl PianoVoice {
    pub fn new(sample_rate: f32) -> Self {
        Self {
            bank: [Chunk::default(); CHUNKS],
            voices: [None; MAX_VOICES],
            live_chunks: 0,
            attacking: false,
            clock: 0,
            settled_clock: 0,
            sample_rate: sample_rate.max(1.0),
            next_start: 0,
            kernel: Kernel::detect(),
        }
    }

    pub fn set_sample_rate(&mut self, sample_rate: f32) {
        *self = Self {
            kernel: self.kernel,
            ..Self::new(sample_rate)
        };
    }

    /// Runs `kernel` from now on, if this CPU can; returns whether it does.
    pub fn set_kernel(&mut self, kernel: Kernel) -> bool {
        if kernel.is_available() {
            self.kernel = kernel;
        }
        self.kernel == kernel
    }

    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    pub fn active_voices(&self) -> usize {
        self.voices.iter().flatten().count()
    }

    /// Samples since the last settle.
    fn since_settle(&self) -> i32 {
        (self.clock - self.settled_clock) as i32
    }

    pub fn note_on(&mut self, source: VoiceSource, channel: u8, key: u8, velocity: f32) {
        let sample_rate = self.sample_rate;
        let frequency = 440.0 * 2f32.powf((f32::from(key) - 69.0) / 12.0);
        // Low notes ring longer, as on a piano: about 6 s at the bottom, 1 s at the top.
        let decay_seconds = 6.0 * 2f32.powf(-(f32::from(key) - 21.0) / 30.0);
        let pan = FRAC_PI_4 + (f32::from(key) - 64.0) / 64.0 * 0.35;
        let gain = MASTER_GAIN * velocity.clamp(0.0, 1.0);
        let mut voice = Voice {
            source,
            channel,
            key,
            started: self.next_start,
            release: 1.0,
            held_rot_re: [0.0; PARTIALS],
            held_rot_im: [0.0; PARTIALS],
            held_decay: [0.0; PARTIALS],
        };
        self.next_start += 1;
        // The first free slot, or else the oldest voice's.
        let mut slot = 0;
        let mut oldest = u64::MAX;
        for (i, voice) in self.voices.iter().enumerate() {
            match voice {
                None => {
                    slot = i;
                    break;
                }
                Some(voice) if voice.started < oldest => {
                    oldest = voice.started;
                    slot = i;
                }
                Some(_) => {}
            }
        }
        let since = self.since_settle();
        let attack_step = 1.0 / (ATTACK_SECONDS * sample_rate);
        let (chunk, lanes) = lanes(slot);
        let chunk = &mut self.bank[chunk];
        chunk.clear(lanes.clone());
        for (p, lane) in lanes.enumerate() {
            let n = (p + 1) as f32;
            let partial_frequency = frequency * n * (1.0 + INHARMONICITY * n * n).sqrt();
            if partial_frequency >= sample_rate * 0.45 {
                continue;
            }
            let step = TAU * partial_frequency / sample_rate;
            let decay = (-1.0 / (decay_seconds / n * sample_rate)).exp();
            voice.held_rot_re[p] = decay * step.cos();
            voice.held_rot_im[p] = decay * step.sin();
            voice.held_decay[p] = decay;
            chunk.re[lane] = PARTIAL_GAINS[p];
            chunk.rot_re[lane] = voice.held_rot_re[p];
            chunk.rot_im[lane] = voice.held_rot_im[p];
            chunk.gain_left[lane] = gain * pan.cos();
            chunk.gain_right[lane] = gain * pan.sin();
            chunk.attack_step[lane] = attack_step;
            // The amplitude now, as of the last settle.
            chunk.amplitude[lane] = PARTIAL_GAINS[p] * decay.powi(-since);
            chunk.settle_decay[lane] = decay.powi(SETTLE_FRAMES as i32);
        }
        self.voices[slot] = Some(voice);
        self.attacking = true;
        self.live_chunks = self.live_chunks.max(live_chunks_for(slot));
    }

    /// Releases the held voices of this source, channel and key (`None` matches all).
    pub fn note_off(&mut self, source: VoiceSource, channel: Option<u8>, key: Option<u8>) {
        let release = self.release_multiplier(RELEASE_SECONDS);
        for slot in 0..MAX_VOICES {
            let Some(voice) = &self.voices[slot] else {
                continue;
            };
            if voice.source == source
                && channel.is_none_or(|c| c == voice.channel)
                && key.is_none_or(|k| k == voice.key)
                && voice.release == 1.0
            {
                self.set_release(slot, release);
            }
        }
    }

    /// Quickly fades out every voice.
    pub fn release_all(&mut self) {
        let release = self.release_multiplier(FAST_RELEASE_SECONDS);
        for slot in 0..MAX_VOICES {
            if self.voices[slot].is_some_and(|voice| voice.release > release) {
                self.set_release(slot, release);
            }
        }
    }

    fn release_multiplier(&self, seconds: f32) -> f32 {
        (-1.0 / (seconds * self.sample_rate)).exp()
    }

    /// Folds a release into a voice's rotation: from now on every partial also shrinks by
    /// `release` per sample, and the attack stops where it is (the envelope there moves into
    /// the phasors, since the kernel without the attack leaves the envelope out).
    fn set_release(&mut self, slot: usize, release: f32) {
        let since = self.since_settle();
        let Some(voice) = &mut self.voices[slot] else {
            return;
        };
        let (chunk, lanes) = lanes(slot);
        let chunk = &mut self.bank[chunk];
        let envelope = chunk.envelope[lanes.start];
        for (p, lane) in lanes.enumerate() {
            let held = voice.held_decay[p];
            if held == 0.0 {
                continue;
            }
            let (before, after) = (held * voice.release, held * release);
            let now = chunk.amplitude[lane] * before.powi(since) * envelope;
            chunk.amplitude[lane] = now * after.powi(-since);
            chunk.settle_decay[lane] = after.powi(SETTLE_FRAMES as i32);
            chunk.re[lane] *= envelope;
            chunk.im[lane] *= envelope;
            chunk.envelope[lane] = 1.0;
            chunk.attack_step[lane] = 0.0;
            chunk.rot_re[lane] = voice.held_rot_re[p] * release;
            chunk.rot_im[lane] = voice.held_rot_im[p] * release;
        }
        voice.release = release;
    }

    /// Settles every chunk, frees the silent voices and ends finished attacks.
    fn settle_all(&mut self) {
        self.settled_clock = self.clock;
        for chunk in &mut self.bank[..self.live_chunks] {
            chunk.settle();
        }
        self.attacking = false;
        self.live_chunks = 0;
        for slot in 0..MAX_VOICES {
            if self.voices[slot].is_none() {
                continue;
            }
            let (chunk, lanes) = lanes(slot);
            let chunk = &mut self.bank[chunk];
            let first = lanes.start;
            let envelope = chunk.envelope[first];
            let level = envelope * chunk.amplitude[first].max(chunk.amplitude[first + 1]);
            let in_attack = chunk.attack_step[first] > 0.0;
            if level < SILENCE && !in_attack {
                chunk.clear(lanes);
                self.voices[slot] = None;
                continue;
            }
            if in_attack && envelope >= 1.0 {
                for lane in lanes {
                    chunk.attack_step[lane] = 0.0;
                }
            } else if in_attack {
                self.attacking = true;
            }
            self.live_chunks = self.live_chunks.max(live_chunks_for(slot));
        }
    }

    /// Adds samples `from..to` of every voice into the output channels (mono goes to channel 0,
    /// stereo to 0 and 1).
    pub fn render(&mut self, outputs: &mut [&mut [f32]], from: usize, to: usize) {
        if to <= from {
            return;
        }
        // The output lanes once per call, cut to the block (no per-sample bounds checks).
        let (left, right): (&mut [f32], Option<&mut [f32]>) = match outputs {
            [] => return,
            [mono] => {
                let end = to.min(mono.len());
                (&mut mono[from.min(end)..end], None)
            }
            [left, right, ..] => {
                let end = to.min(left.len()).min(right.len());
                (
                    &mut left[from.min(end)..end],
                    Some(&mut right[from.min(end)..end]),
                )
            }
        };
        let frames = left.len();
        let mut right = right;
        let mut done = 0;
        while done < frames {
            if self.clock - self.settled_clock >= SETTLE_FRAMES {
                self.settle_all();
            }
            let run =
                (frames - done).min((SETTLE_FRAMES - (self.clock - self.settled_clock)) as usize);
            if self.live_chunks > 0 {
                let bank = &mut self.bank[..self.live_chunks];
                let left = &mut left[done..done + run];
                let attacking = self.attacking;
                match right.as_deref_mut() {
                    Some(right) => {
                        let right = &mut right[done..done + run];
                        self.kernel.render(bank, left, right, false, attacking);
                    }
                    None => self.kernel.render(bank, left, &mut [], true, attacking),
                }
            }
            done += run;
            self.clock += run as u64;
        }
    }
}

/// The chunks (rounded up to a pair) that hold voice `slot`.
fn live_chunks_for(slot: usize) -> usize {
    (slot / VOICES_PER_CHUNK + 1).next_multiple_of(2)
}

/// Which synthesis kernel runs. [`PianoVoice::new`] picks the widest this CPU has;
/// [`PianoVoice::set_kernel`] can pick a narrower one (to measure or compare them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Plain Rust, on every CPU.
    Portable,
    /// AVX2 and FMA intrinsics (x86-64): a chunk of sixteen oscillators is two registers.
    Avx2,
    /// AVX-512F intrinsics (x86-64): a chunk is one register.
    Avx512,
}

impl Kernel {
    pub const ALL: [Kernel; 3] = [Kernel::Portable, Kernel::Avx2, Kernel::Avx512];

    /// Whether this CPU can run the kernel.
    pub fn is_available(self) -> bool {
        match self {
            Self::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            Self::Avx2 | Self::Avx512 => false,
        }
    }

    /// The widest kernel this CPU can run.
    pub fn detect() -> Self {
        Self::ALL
            .into_iter()
            .rev()
            .find(|kernel| kernel.is_available())
            .unwrap_or(Self::Portable)
    }

    /// Renders `left.len()` samples of the chunks (an even number of them) into the outputs:
    /// `right` is as long as `left` for stereo, and ignored for mono.
    fn render(
        self,
        bank: &mut [Chunk],
        left: &mut [f32],
        right: &mut [f32],
        mono: bool,
        attack: bool,
    ) {
        debug_assert!(bank.len().is_multiple_of(2));
        debug_assert!(mono || right.len() == left.len());
        macro_rules! dispatch {
            ($module:ident) => {
                match (attack, mono) {
                    (false, false) => $module::render::<false, false>(bank, left, right),
                    (true, false) => $module::render::<true, false>(bank, left, right),
                    (false, true) => $module::render::<false, true>(bank, left, right),
                    (true, true) => $module::render::<true, true>(bank, left, right),
                }
            };
        }
        match self {
            Self::Portable => dispatch!(portable),
            // SAFETY: a `PianoVoice` only runs a kernel that `is_available` on this CPU, which
            // checked the features these are compiled for.
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => unsafe { dispatch!(avx2) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 => unsafe { dispatch!(avx512) },
            #[cfg(not(target_arch = "x86_64"))]
            Self::Avx2 | Self::Avx512 => unreachable!("never available off x86-64"),
        }
    }
}

/// Adds one sample's sums of every lane to the outputs.
#[inline(always)]
fn emit<const MONO: bool>(left: &mut f32, right: Option<&mut f32>, l: f32, r: f32) {
    if MONO {
        *left += 0.5 * (l + r);
    } else if let Some(right) = right {
        *left += l;
        *right += r;
    }
}

/// The kernel in plain Rust, for CPUs without AVX2 and FMA (and as the reference in tests).
mod portable {
    use super::{emit, Chunk, LANES};

    pub(super) fn render<const ATTACK: bool, const MONO: bool>(
        bank: &mut [Chunk],
        left: &mut [f32],
        right: &mut [f32],
    ) {
        for (i, out) in left.iter_mut().enumerate() {
            let mut sum_left = [0.0f32; LANES];
            let mut sum_right = [0.0f32; LANES];
            for chunk in bank.iter_mut() {
                for l in 0..LANES {
                    let mut sample = chunk.im[l];
                    if ATTACK {
                        chunk.envelope[l] = (chunk.envelope[l] + chunk.attack_step[l]).min(1.0);
                        sample *= chunk.envelope[l];
                    }
                    sum_left[l] += sample * chunk.gain_left[l];
                    sum_right[l] += sample * chunk.gain_right[l];
                    let (re, im) = (chunk.re[l], chunk.im[l]);
                    chunk.re[l] = re * chunk.rot_re[l] - im * chunk.rot_im[l];
                    chunk.im[l] = re * chunk.rot_im[l] + im * chunk.rot_re[l];
                }
            }
            let (l, r) = (sum_left.iter().sum(), sum_right.iter().sum());
            emit::<MONO>(out, right.get_mut(i), l, r);
        }
    }
}

/// The kernel with AVX2 and FMA intrinsics: a chunk is two registers.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{emit, Chunk};
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn render<const ATTACK: bool, const MONO: bool>(
        bank: &mut [Chunk],
        left: &mut [f32],
        right: &mut [f32],
    ) {
        let one = _mm256_set1_ps(1.0);
        for (i, out) in left.iter_mut().enumerate() {
            // One accumulator per half, so the sums are two independent chains.
            let mut sum_left = [_mm256_setzero_ps(); 2];
            let mut sum_right = [_mm256_setzero_ps(); 2];
            for chunk in bank.iter_mut() {
                for (h, (sum_left, sum_right)) in
                    sum_left.iter_mut().zip(&mut sum_right).enumerate()
                {
                    let at = h * 8;
                    // SAFETY: `Chunk` is 64-byte aligned and each field is sixteen `f32`s, so
                    // both halves are in bounds and 32-byte aligned.
                    unsafe {
                        macro_rules! load {
                            ($field:ident) => {
                                _mm256_load_ps(chunk.$field.as_ptr().add(at))
                            };
                        }
                        let re = load!(re);
                        let im = load!(im);
                        let rot_re = load!(rot_re);
                        let rot_im = load!(rot_im);
                        let mut sample = im;
                        if ATTACK {
                            let envelope = _mm256_min_ps(
                                _mm256_add_ps(load!(envelope), load!(attack_step)),
                                one,
                            );
                            _mm256_store_ps(chunk.envelope.as_mut_ptr().add(at), envelope);
                            sample = _mm256_mul_ps(sample, envelope);
                        }
                        *sum_left = _mm256_fmadd_ps(sample, load!(gain_left), *sum_left);
                        *sum_right = _mm256_fmadd_ps(sample, load!(gain_right), *sum_right);
                        let next_re = _mm256_fmsub_ps(re, rot_re, _mm256_mul_ps(im, rot_im));
                        let next_im = _mm256_fmadd_ps(re, rot_im, _mm256_mul_ps(im, rot_re));
                        _mm256_store_ps(chunk.re.as_mut_ptr().add(at), next_re);
                        _mm256_store_ps(chunk.im.as_mut_ptr().add(at), next_im);
                    }
                }
            }
            let l = horizontal_sum(_mm256_add_ps(sum_left[0], sum_left[1]));
            let r = horizontal_sum(_mm256_add_ps(sum_right[0], sum_right[1]));
            emit::<MONO>(out, right.get_mut(i), l, r);
        }
    }

    #[target_feature(enable = "avx2,fma")]
    fn horizontal_sum(v: __m256) -> f32 {
        let half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let pairs = _mm_add_ps(half, _mm_movehl_ps(half, half));
        _mm_cvtss_f32(_mm_add_ss(pairs, _mm_shuffle_ps::<0b01>(pairs, pairs)))
    }
}

/// The kernel with AVX-512F intrinsics: a chunk is one register.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{emit, Chunk};
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f")]
    pub(super) fn render<const ATTACK: bool, const MONO: bool>(
        bank: &mut [Chunk],
        left: &mut [f32],
        right: &mut [f32],
    ) {
        let one = _mm512_set1_ps(1.0);
        for (i, out) in left.iter_mut().enumerate() {
            // One accumulator per chunk of a pair, so the sums are two independent chains.
            let mut sum_left = [_mm512_setzero_ps(); 2];
            let mut sum_right = [_mm512_setzero_ps(); 2];
            for pair in bank.chunks_exact_mut(2) {
                for (k, chunk) in pair.iter_mut().enumerate() {
                    // SAFETY: `Chunk` is 64-byte aligned and each field is sixteen `f32`s.
                    unsafe {
                        macro_rules! load {
                            ($field:ident) => {
                                _mm512_load_ps(chunk.$field.as_ptr())
                            };
                        }
                        let re = load!(re);
                        let im = load!(im);
                        let rot_re = load!(rot_re);
                        let rot_im = load!(rot_im);
                        let mut sample = im;
                        if ATTACK {
                            let envelope = _mm512_min_ps(
                                _mm512_add_ps(load!(envelope), load!(attack_step)),
                                one,
                            );
                            _mm512_store_ps(chunk.envelope.as_mut_ptr(), envelope);
                            sample = _mm512_mul_ps(sample, envelope);
                        }
                        sum_left[k] = _mm512_fmadd_ps(sample, load!(gain_left), sum_left[k]);
                        sum_right[k] = _mm512_fmadd_ps(sample, load!(gain_right), sum_right[k]);
                        let next_re = _mm512_fmsub_ps(re, rot_re, _mm512_mul_ps(im, rot_im));
                        let next_im = _mm512_fmadd_ps(re, rot_im, _mm512_mul_ps(im, rot_re));
                        _mm512_store_ps(chunk.re.as_mut_ptr(), next_re);
                        _mm512_store_ps(chunk.im.as_mut_ptr(), next_im);
                    }
                }
            }
            let l = _mm512_reduce_add_ps(_mm512_add_ps(sum_left[0], sum_left[1]));
            let r = _mm512_reduce_add_ps(_mm512_add_ps(sum_right[0], sum_right[1]));
            emit::<MONO>(out, right.get_mut(i), l, r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(voice: &mut PianoVoice, frames: usize) -> (Vec<f32>, Vec<f32>) {
        let (mut left, mut right) = (vec![0.0; frames], vec![0.0; frames]);
        voice.render(&mut [&mut left[..], &mut right[..]], 0, frames);
        (left, right)
    }

    #[test]
    fn a_note_sounds_and_its_release_fades_to_silence() {
        let mut synth = PianoVoice::new(48_000.0);
        synth.note_on(VoiceSource::Player, 0, 60, 0.8);
        let (left, right) = render(&mut synth, 4800);
        let peak = left.iter().chain(&right).fold(0f32, |m, x| m.max(x.abs()));
        assert!(peak > 0.05 && peak <= 1.0, "peak {peak}");
        synth.note_off(VoiceSource::Player, Some(0), Some(60));
        render(&mut synth, 96_000);
        assert_eq!(synth.active_voices(), 0);
    }

    /// Renders `frames` samples in blocks of odd sizes, calling `event(synth, at)` before each.
    fn render_in_odd_blocks(
        synth: &mut PianoVoice,
        frames: usize,
        mut event: impl FnMut(&mut PianoVoice, usize),
    ) -> (Vec<f32>, Vec<f32>) {
        let (mut left, mut right) = (vec![0.0; frames], vec![0.0; frames]);
        let mut at = 0;
        for block in [1, 7, 64, 511, 4096, 300].iter().cycle() {
            event(synth, at);
            let to = (at + block).min(frames);
            synth.render(&mut [&mut left[..], &mut right[..]], at, to);
            at = to;
            if at == frames {
                break;
            }
        }
        (left, right)
    }

    /// The left channel of one voice in closed form: `sum_p g_p d_p^n sin(w_p n)` times the
    /// attack envelope, and times `release^(n - released_at)` after a release.
    fn closed_form(rate: f32, key: u8, frames: usize, released_at: Option<usize>) -> Vec<f64> {
        let frequency = 440.0 * 2f64.powf((f64::from(key) - 69.0) / 12.0);
        let decay_seconds = 6.0 * 2f64.powf(-(f64::from(key) - 21.0) / 30.0);
        let pan = f64::from(FRAC_PI_4) + (f64::from(key) - 64.0) / 64.0 * 0.35;
        let gain = f64::from(MASTER_GAIN) * pan.cos();
        let attack_step = 1.0 / (f64::from(ATTACK_SECONDS) * f64::from(rate));
        let release = (-1.0 / (f64::from(RELEASE_SECONDS) * f64::from(rate))).exp();
        let mut envelope = 0.0_f64;
        (0..frames)
            .map(|i| {
                let n = i as f64;
                let mut expected = 0.0;
                for (p, &partial_gain) in PARTIAL_GAINS.iter().enumerate() {
                    let k = (p + 1) as f64;
                    let f = frequency * k * (1.0 + f64::from(INHARMONICITY) * k * k).sqrt();
                    let decay = (-1.0 / (decay_seconds / k * f64::from(rate))).exp();
                    let step = std::f64::consts::TAU * f / f64::from(rate);
                    expected += f64::from(partial_gain) * decay.powf(n) * (step * n).sin();
                }
                match released_at {
                    Some(at) if i >= at => envelope *= release,
                    _ => envelope = (envelope + attack_step).min(1.0),
                }
                expected * envelope * gain
            })
            .collect()
    }

    fn largest_deviation(got: &[f32], expected: &[f64]) -> f64 {
        assert_eq!(got.len(), expected.len());
        got.iter()
            .zip(expected)
            .map(|(&got, &expected)| (f64::from(got) - expected).abs())
            .fold(0.0, f64::max)
    }

    /// The phasor recurrence, rendered in blocks of odd sizes, matches the closed form to f32
    /// accuracy.
    #[test]
    fn partials_follow_the_closed_form() {
        let (rate, key, frames) = (48_000.0, 57, 20_000);
        let mut synth = PianoVoice::new(rate);
        synth.note_on(VoiceSource::Player, 0, key, 1.0);
        let (left, _) = render_in_odd_blocks(&mut synth, frames, |_, _| {});
        let worst = largest_deviation(&left, &closed_form(rate, key, frames, None));
        assert!(worst < 1e-4, "largest deviation {worst}");
    }

    /// A release, folded into the phasors' rotation, is the held sound times the release
    /// curve, also when it comes in the middle of the attack.
    #[test]
    fn a_release_multiplies_the_sound_by_its_curve() {
        let (rate, key, frames) = (44_100.0, 64, 12_000);
        // Block starts (1 + 7 + 64 = 72 is inside the 88-sample attack).
        for released_at in [72, 4_979] {
            let mut synth = PianoVoice::new(rate);
            synth.note_on(VoiceSource::Generated, 3, key, 1.0);
            let (left, _) = render_in_odd_blocks(&mut synth, frames, |synth, at| {
                if at == released_at {
                    synth.note_off(VoiceSource::Generated, Some(3), Some(key));
                }
            });
            let released = closed_form(rate, key, frames, Some(released_at));
            let worst = largest_deviation(&left, &released);
            assert!(
                worst < 1e-4,
                "released at {released_at}: largest deviation {worst}"
            );
        }
    }

    /// Every vector kernel this CPU has (AVX2, AVX-512) gives the same sound as the portable
    /// one, for many voices starting, stolen and released at odd times, in stereo and in mono.
    #[test]
    fn vector_and_portable_kernels_agree() {
        let play = |synth: &mut PianoVoice, step: usize| {
            let key = |step: usize| 21 + (step * 7 % 88) as u8;
            match step % 5 {
                0..=2 => {
                    let velocity = 0.3 + 0.1 * (step % 7) as f32;
                    synth.note_on(VoiceSource::Player, 0, key(step), velocity);
                }
                3 => synth.note_off(VoiceSource::Player, Some(0), Some(key(step - 3))),
                _ if step % 45 == 4 => synth.release_all(),
                _ => synth.note_on(VoiceSource::Generated, 1, key(step), 1.0),
            }
        };
        let frames = 30_000;
        let render = |kernel: Kernel, mono: bool| {
            let mut synth = PianoVoice::new(48_000.0);
            assert!(synth.set_kernel(kernel));
            let (mut left, mut right) = (vec![0.0; frames], vec![0.0; frames]);
            let (mut at, mut step) = (0, 0);
            while at < frames {
                play(&mut synth, step);
                let to = (at + 1 + step * 37 % 700).min(frames);
                if mono {
                    synth.render(&mut [&mut left[..]], at, to);
                } else {
                    synth.render(&mut [&mut left[..], &mut right[..]], at, to);
                }
                at = to;
                step += 1;
            }
            assert!(
                synth.active_voices() > 8,
                "the test should keep many voices busy"
            );
            [left, right]
        };
        for mono in [false, true] {
            let reference = render(Kernel::Portable, mono);
            let peak = reference[0].iter().fold(0f32, |m, x| m.max(x.abs()));
            assert!(peak > 0.1, "peak {peak}");
            for kernel in Kernel::ALL.into_iter().filter(|k| k.is_available()) {
                let got = render(kernel, mono);
                for (channel, (got, expected)) in got.iter().zip(&reference).enumerate() {
                    let worst = got
                        .iter()
                        .zip(expected)
                        .map(|(x, y)| (x - y).abs())
                        .fold(0f32, f32::max);
                    assert!(
                        worst < 1e-4,
                        "{kernel:?}, mono {mono}, channel {channel}: largest difference {worst}"
                    );
                }
            }
        }
    }

    #[test]
    fn note_offs_only_end_their_own_source() {
        let mut synth = PianoVoice::new(48_000.0);
        synth.note_on(VoiceSource::Player, 0, 60, 0.8);
        synth.note_on(VoiceSource::Generated, 0, 60, 0.8);
        synth.note_off(VoiceSource::Generated, None, None);
        render(&mut synth, 48_000);
        assert_eq!(synth.active_voices(), 1);
        synth.release_all();
        render(&mut synth, 4800);
        assert_eq!(synth.active_voices(), 0);
    }

    #[test]
    fn voices_are_stolen_beyond_the_limit() {
        let mut synth = PianoVoice::new(44_100.0);
        for key in 0..(MAX_VOICES as u8 + 8) {
            synth.note_on(VoiceSource::Player, 0, 40 + key, 1.0);
        }
        assert_eq!(synth.active_voices(), MAX_VOICES);
        let (left, _) = render(&mut synth, 256);
        assert!(left.iter().all(|x| x.is_finite() && x.abs() < 8.0));
    }
}
