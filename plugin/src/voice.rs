//! The built-in polyphonic piano-like voice, so the plugin makes sound on its own without any
//! MIDI routing (many FL Studio users never route plugin MIDI).
//!
//! Each voice is a few slightly inharmonic partials with their own exponential decays (upper
//! partials die faster), a 2 ms attack and a short release. Oscillators are rotating phasors, so
//! there is no `sin()` per sample. Nothing allocates after construction.

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

/// Who started a voice: note-offs only end voices of their own source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoiceSource {
    Player,
    Generated,
}

#[derive(Debug, Clone, Copy)]
struct Voice {
    source: VoiceSource,
    channel: u8,
    key: u8,
    /// Increasing start counter, for stealing the oldest voice.
    started: u64,
    /// Rotating phasors per partial, as separate real and imaginary lanes (so the per-sample
    /// update is four-wide SIMD). Their length is the partial's amplitude: the per-sample
    /// rotation includes the decay, so one complex multiply both turns and decays a partial.
    re: [f32; PARTIALS],
    im: [f32; PARTIALS],
    rot_re: [f32; PARTIALS],
    rot_im: [f32; PARTIALS],
    /// The exact amplitude of each partial (the phasors are rescaled to it once per block,
    /// undoing rounding drift) and its per-sample decay.
    amplitude: [f32; PARTIALS],
    decay: [f32; PARTIALS],
    envelope: f32,
    attack_step: f32,
    /// Per-sample envelope multiplier once released; `1.0` while held.
    release: f32,
    gain_left: f32,
    gain_right: f32,
}

/// The synth. Called on the audio thread only.
pub struct PianoVoice {
    voices: [Option<Voice>; MAX_VOICES],
    sample_rate: f32,
    next_start: u64,
}

impl PianoVoice {
    pub fn new(sample_rate: f32) -> Self {
        Self {
            voices: [None; MAX_VOICES],
            sample_rate: sample_rate.max(1.0),
            next_start: 0,
        }
    }

    pub fn set_sample_rate(&mut self, sample_rate: f32) {
        self.sample_rate = sample_rate.max(1.0);
        self.voices = [None; MAX_VOICES];
    }

    pub fn active_voices(&self) -> usize {
        self.voices.iter().flatten().count()
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
            re: [0.0; PARTIALS],
            im: [0.0; PARTIALS],
            rot_re: [1.0; PARTIALS],
            rot_im: [0.0; PARTIALS],
            amplitude: [0.0; PARTIALS],
            decay: [1.0; PARTIALS],
            envelope: 0.0,
            attack_step: 1.0 / (ATTACK_SECONDS * sample_rate),
            release: 1.0,
            gain_left: gain * pan.cos(),
            gain_right: gain * pan.sin(),
        };
        // NOTE: Indexing keeps the four per-partial arrays visibly in step.
        #[allow(clippy::needless_range_loop)]
        for p in 0..PARTIALS {
            let n = (p + 1) as f32;
            let partial_frequency = frequency * n * (1.0 + INHARMONICITY * n * n).sqrt();
            if partial_frequency >= sample_rate * 0.45 {
                continue;
            }
            let step = TAU * partial_frequency / sample_rate;
            let decay = (-1.0 / (decay_seconds / n * sample_rate)).exp();
            voice.rot_re[p] = decay * step.cos();
            voice.rot_im[p] = decay * step.sin();
            voice.re[p] = PARTIAL_GAINS[p];
            voice.amplitude[p] = PARTIAL_GAINS[p];
            voice.decay[p] = decay;
        }
        self.next_start += 1;
        let slot = match self.voices.iter().position(Option::is_none) {
            Some(free) => free,
            None => self
                .voices
                .iter()
                .enumerate()
                .min_by_key(|(_, v)| v.map_or(0, |v| v.started))
                .map_or(0, |(i, _)| i),
        };
        self.voices[slot] = Some(voice);
    }

    /// Releases the held voices of this source, channel and key (`None` matches all).
    pub fn note_off(&mut self, source: VoiceSource, channel: Option<u8>, key: Option<u8>) {
        let release = self.release_multiplier(RELEASE_SECONDS);
        for voice in self.voices.iter_mut().flatten() {
            if voice.source == source
                && channel.is_none_or(|c| c == voice.channel)
                && key.is_none_or(|k| k == voice.key)
                && voice.release == 1.0
            {
                voice.release = release;
            }
        }
    }

    /// Quickly fades out every voice.
    pub fn release_all(&mut self) {
        let release = self.release_multiplier(FAST_RELEASE_SECONDS);
        for voice in self.voices.iter_mut().flatten() {
            voice.release = voice.release.min(release);
        }
    }

    fn release_multiplier(&self, seconds: f32) -> f32 {
        (-1.0 / (seconds * self.sample_rate)).exp()
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
        let mono = right.is_none();
        let mut right = right;
        for slot in &mut self.voices {
            let Some(voice) = slot else { continue };
            // Rescale the phasors to their exact amplitudes, undoing rounding drift.
            for p in 0..PARTIALS {
                let norm = (voice.re[p] * voice.re[p] + voice.im[p] * voice.im[p]).sqrt();
                if norm > 0.0 {
                    let scale = voice.amplitude[p] / norm;
                    voice.re[p] *= scale;
                    voice.im[p] *= scale;
                }
                voice.amplitude[p] *= voice.decay[p].powi(frames as i32);
            }
            let (gain_left, gain_right) = if mono {
                let g = (voice.gain_left + voice.gain_right) * 0.5;
                (g, g)
            } else {
                (voice.gain_left, voice.gain_right)
            };
            let (mut re, mut im) = (voice.re, voice.im);
            let (rot_re, rot_im) = (voice.rot_re, voice.rot_im);
            let mut envelope = voice.envelope;
            for i in 0..frames {
                let mut sample = 0.0;
                let mut next_re = [0.0; PARTIALS];
                for p in 0..PARTIALS {
                    sample += im[p];
                    next_re[p] = re[p] * rot_re[p] - im[p] * rot_im[p];
                    im[p] = re[p] * rot_im[p] + im[p] * rot_re[p];
                }
                re = next_re;
                if voice.release < 1.0 {
                    envelope *= voice.release;
                } else if envelope < 1.0 {
                    envelope = (envelope + voice.attack_step).min(1.0);
                }
                let sample = sample * envelope;
                left[i] += sample * gain_left;
                if let Some(right) = right.as_deref_mut() {
                    right[i] += sample * gain_right;
                }
            }
            voice.re = re;
            voice.im = im;
            voice.envelope = envelope;
            let level = voice.envelope * voice.amplitude[0].max(voice.amplitude[1]);
            if level < SILENCE && (voice.release < 1.0 || voice.envelope >= 1.0) {
                *slot = None;
            }
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

    /// The phasor recurrence, rendered in blocks of odd sizes, matches the closed form
    /// `sum_p g_p d_p^n sin(w_p n)` times the attack envelope, to f32 accuracy.
    #[test]
    fn partials_follow_the_closed_form() {
        let rate = 48_000.0_f32;
        let key = 57_u8;
        let mut synth = PianoVoice::new(rate);
        synth.note_on(VoiceSource::Player, 0, key, 1.0);
        let frames = 20_000;
        let (mut left, mut right) = (vec![0.0; frames], vec![0.0; frames]);
        let mut at = 0;
        for block in [1, 7, 64, 511, 4096].iter().cycle() {
            let to = (at + block).min(frames);
            synth.render(&mut [&mut left[..], &mut right[..]], at, to);
            at = to;
            if at == frames {
                break;
            }
        }
        let frequency = 440.0 * 2f64.powf((f64::from(key) - 69.0) / 12.0);
        let decay_seconds = 6.0 * 2f64.powf(-(f64::from(key) - 21.0) / 30.0);
        let pan = f64::from(FRAC_PI_4) + (f64::from(key) - 64.0) / 64.0 * 0.35;
        let gain = f64::from(MASTER_GAIN) * pan.cos();
        let attack_step = 1.0 / (f64::from(ATTACK_SECONDS) * f64::from(rate));
        let mut envelope = 0.0_f64;
        let mut worst = 0.0_f64;
        for (i, &got) in left.iter().enumerate() {
            let n = i as f64;
            let mut expected = 0.0;
            for (p, &partial_gain) in PARTIAL_GAINS.iter().enumerate() {
                let k = (p + 1) as f64;
                let f = frequency * k * (1.0 + f64::from(INHARMONICITY) * k * k).sqrt();
                let decay = (-1.0 / (decay_seconds / k * f64::from(rate))).exp();
                let step = std::f64::consts::TAU * f / f64::from(rate);
                expected += f64::from(partial_gain) * decay.powf(n) * (step * n).sin();
            }
            envelope = (envelope + attack_step).min(1.0);
            expected *= envelope * gain;
            worst = worst.max((f64::from(got) - expected).abs());
        }
        assert!(worst < 1e-4, "largest deviation {worst}");
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
