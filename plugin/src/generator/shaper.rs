//! Note shaping on the generator thread: grid quantization with swing, key/scale lock, the
//! pitch range and the density cap.
//!
//! Pure functions on plain numbers, kept apart from the generator ([`super::moonbeam`]) so the arithmetic can be
//! tested without a model. The generator thread applies them to each decoded note (see
//! `MoonbeamGenerator::playable`); the enums are also the parameters' values (`params.rs`).
//!
//! **Grid.** Times are in quarter notes (beats) from the answer's start, which the audio thread
//! puts on a beat (on a bar in continuous mode), so grid point 0 is a beat and the grid lines up
//! with the host's. A straight grid has its points at `n × step`; a 1/8 triplet grid at
//! `n × 1/3` beat.
//!
//! **Swing** (straight 1/8 and 1/16 grids only) delays every second grid point, the off-beats
//! `n = 1, 3, 5, …`, by `swing × step / 2`, the usual DAW definition: 0 % is straight, 50 %
//! puts the off-beat at 5/8 of its pair of steps, 66.7 % at 2/3 (the triplet shuffle) and the
//! maximum, [`MAX_SWING_PERCENT`] = 75 %, at 11/16. (In MPC terms, where 50 % is straight, this
//! swing `s` is `50 % + s / 4`.) Triplet grids ignore swing: they already are the shuffle.
//!
//! **Scale lock.** A pitch whose pitch class is not in the scale moves to the nearest pitch
//! that is; at equal distance it moves **down** (a blue note falls back rather than pushing
//! up, and the result never depends on anything but the pitch). The octave folding into the
//! pitch range happens afterwards and keeps the pitch class, so it stays in the scale.

use std::collections::VecDeque;

use continuo_engine::Note;
use continuo_engine::TICK_MS;

use crate::protocol::{GenParams, Quantize, Scale, MAX_SWING_PERCENT};

impl Quantize {
    /// The distance between grid points in beats; `None` when off.
    pub fn step_beats(self) -> Option<f64> {
        match self {
            Self::Off => None,
            Self::Eighth => Some(0.5),
            Self::Sixteenth => Some(0.25),
            Self::EighthTriplet => Some(1.0 / 3.0),
        }
    }

    /// How far, in beats, swing delays the off-beat grid points (0 for triplets and when off).
    pub fn swing_delay_beats(self, swing_percent: u8) -> f64 {
        match (self, self.step_beats()) {
            (Self::Eighth | Self::Sixteenth, Some(step)) => {
                step * 0.5 * f64::from(swing_percent.min(MAX_SWING_PERCENT)) / 100.0
            }
            _ => 0.0,
        }
    }

    /// Grid point `index` in beats from the answer's start (`None` when off).
    pub fn grid_point(self, index: u64, swing_percent: u8) -> Option<f64> {
        let step = self.step_beats()?;
        let delay = if index % 2 == 1 {
            self.swing_delay_beats(swing_percent)
        } else {
            0.0
        };
        Some(index as f64 * step + delay)
    }

    /// The grid point nearest to `beats` (beats from the answer's start; negative times count
    /// as 0). At equal distance the earlier point wins, so snapping keeps the order of notes.
    /// Unchanged when off or not finite.
    pub fn snap_beats(self, beats: f64, swing_percent: u8) -> f64 {
        let Some(step) = self.step_beats() else {
            return beats;
        };
        if !beats.is_finite() {
            return beats;
        }
        let t = beats.max(0.0);
        let pair = 2.0 * step;
        let base = (t / pair).floor() * pair;
        // The pair's downbeat, its (swung) off-beat and the next pair's downbeat: the nearest
        // grid point is one of them, whatever rounding did to `floor`.
        let delay = self.swing_delay_beats(swing_percent);
        let mut best = base;
        for point in [base + step + delay, base + pair] {
            if (point - t).abs() < (best - t).abs() {
                best = point;
            }
        }
        best
    }

    /// [`Quantize::snap_beats`] for milliseconds at `ms_per_beat`.
    pub fn snap_ms(self, ms: f64, ms_per_beat: f64, swing_percent: u8) -> f64 {
        if self == Self::Off || !(ms_per_beat.is_finite() && ms_per_beat > 0.0) {
            return ms;
        }
        self.snap_beats(ms / ms_per_beat, swing_percent) * ms_per_beat
    }
}

impl Scale {
    /// The scale's semitones above its root.
    pub fn intervals(self) -> &'static [u8] {
        match self {
            Self::Off => &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
            Self::Major => &[0, 2, 4, 5, 7, 9, 11],
            Self::NaturalMinor => &[0, 2, 3, 5, 7, 8, 10],
            Self::HarmonicMinor => &[0, 2, 3, 5, 7, 8, 11],
            Self::Dorian => &[0, 2, 3, 5, 7, 9, 10],
            Self::Mixolydian => &[0, 2, 4, 5, 7, 9, 10],
            Self::MajorPentatonic => &[0, 2, 4, 7, 9],
            Self::MinorPentatonic => &[0, 3, 5, 7, 10],
            Self::Blues => &[0, 3, 5, 6, 7, 10],
        }
    }

    /// The pitch classes of this scale on `root` (0 = C; taken modulo 12) as a mask, bit `pc`
    /// set for pitch class `pc`. `None` when the lock is off.
    pub fn mask(self, root: u8) -> Option<PitchClasses> {
        if self == Self::Off {
            return None;
        }
        let root = u32::from(root % 12);
        let bits = self
            .intervals()
            .iter()
            .fold(0u16, |bits, &i| bits | 1 << ((root + u32::from(i)) % 12));
        Some(PitchClasses(bits))
    }
}

/// A set of pitch classes, bit `pc` for pitch class `pc` (0 = C).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PitchClasses(pub u16);

impl PitchClasses {
    pub fn contains(self, pitch: i64) -> bool {
        self.0 >> pitch.rem_euclid(12) & 1 == 1
    }

    /// The pitch nearest to `pitch` whose class is in the set; at equal distance the lower one.
    /// Unchanged for an empty set.
    pub fn snap(self, pitch: i64) -> i64 {
        for distance in 0..12 {
            if self.contains(pitch - distance) {
                return pitch - distance;
            }
            if self.contains(pitch + distance) {
                return pitch + distance;
            }
        }
        pitch
    }
}

/// How a generated pitch fits the range: folded by octaves, or `None` if no octave fits.
pub(super) fn fold_pitch(pitch: i64, low: u8, high: u8) -> Option<u8> {
    let (low, high) = (i64::from(low.min(high)), i64::from(low.max(high)));
    let mut p = pitch;
    if p < low {
        p += (low - p + 11) / 12 * 12;
    } else if p > high {
        p -= (p - high + 11) / 12 * 12;
    }
    (low..=high).contains(&p).then_some(p as u8)
}

/// The shortest note a quantized start may leave before the answer's end: a 1/64 note, but at
/// least one model tick (10 ms).
pub(super) fn min_note_ms(ms_per_beat: f64) -> f64 {
    (ms_per_beat / 16.0).max(TICK_MS)
}

/// `(window in beats, notes allowed in it)` for a density cap in notes per beat; `None` for no
/// cap (a cap that is not a number).
pub(super) fn density_window(cap: f32) -> Option<(f64, usize)> {
    if cap.is_nan() {
        return None;
    }
    let cap = f64::from(cap);
    Some(if cap >= 1.0 {
        (1.0, cap.floor().min(1e6) as usize)
    } else {
        (1.0 / cap.max(1e-3), 1)
    })
}

/// Notes closer than this (in ms) start at the same time.
const SAME_START_MS: f64 = 1e-3;

/// A decoded note as it is played: times in ms after the answer's start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct ShapedNote {
    pub(super) start_ms: f64,
    /// Never before `start_ms`, never after the answer's end.
    pub(super) end_ms: f64,
    pub(super) key: u8,
    /// In `[1/127, 1]`.
    pub(super) velocity: f32,
}

/// Shapes one answer's decoded notes into the notes played: scale lock, octave folding into the
/// range, quantize (with swing), one start per key at a time, the density cap and the velocity
/// scale, in that order. It keeps what the answer has played so far; the settings are passed
/// with every note, so a change during an answer applies from the next note on.
#[derive(Debug, Clone)]
pub(super) struct Shaper {
    ms_per_beat: f64,
    /// Notes starting this long after the answer's start or later are not played; ends are cut
    /// to it.
    length_ms: f64,
    /// Start times (ms after the answer's start) of the notes played in the density window.
    recent: VecDeque<f64>,
    /// Per key, the start (ms after the answer's start) of the latest note played.
    key_starts: [f64; 128],
}

impl Shaper {
    pub(super) fn new(ms_per_beat: f64, length_ms: f64) -> Self {
        Self {
            ms_per_beat,
            length_ms,
            recent: VecDeque::new(),
            key_starts: [f64::NEG_INFINITY; 128],
        }
    }

    /// The note played for a decoded `note` whose onset `anchor` plays at the answer's start, or
    /// `None` if it is not played (invalid, a drum while the player plays none, out of range,
    /// too near the answer's end once quantized, a repeat of a key at the same time, over the
    /// density cap).
    pub(super) fn shape(
        &mut self,
        params: &GenParams,
        player_drums: bool,
        note: &Note,
        anchor: i64,
    ) -> Option<ShapedNote> {
        let is_drum = note.instrument == 128;
        if !note.is_valid_midi() || (is_drum && !player_drums) {
            return None;
        }
        let pitch = match params.scale.mask(params.scale_root) {
            Some(scale) if !is_drum => scale.snap(note.pitch()),
            _ => note.pitch(),
        };
        let key = fold_pitch(pitch, params.pitch_low, params.pitch_high)?;
        let (ms_per_beat, length_ms) = (self.ms_per_beat, self.length_ms);
        let duration_ms = note.duration as f64 * TICK_MS;
        let mut start_ms = (note.onset - anchor) as f64 * TICK_MS;
        if params.quantize != Quantize::Off {
            start_ms = params
                .quantize
                .snap_ms(start_ms, ms_per_beat, params.swing_percent);
            if start_ms > length_ms - min_note_ms(ms_per_beat) {
                return None;
            }
        }
        let previous_start = &mut self.key_starts[usize::from(key)];
        if (start_ms - *previous_start).abs() < SAME_START_MS {
            return None;
        }
        let window = density_window(params.density_cap_per_beat);
        if let Some((beats, allowed)) = window {
            let window_ms = beats * ms_per_beat;
            while self
                .recent
                .front()
                .is_some_and(|&t| t <= start_ms - window_ms)
            {
                self.recent.pop_front();
            }
            if self.recent.len() >= allowed {
                return None;
            }
        }
        *previous_start = start_ms;
        let end_ms = (start_ms + duration_ms).min(length_ms);
        let scale = if params.velocity_scale.is_finite() {
            params.velocity_scale
        } else {
            1.0
        };
        let velocity = (note.velocity as f32 / 127.0 * scale).clamp(1.0 / 127.0, 1.0);
        if window.is_some() {
            self.recent.push_back(start_ms);
        }
        Some(ShapedNote {
            start_ms,
            end_ms: end_ms.max(start_ms),
            key,
            velocity,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::PITCH_CLASS_NAMES;

    fn grid(quantize: Quantize, swing: u8, n: u64) -> Vec<f64> {
        (0..n)
            .map(|i| quantize.grid_point(i, swing).unwrap())
            .collect()
    }

    #[test]
    fn grid_points_straight_triplet_and_swung() {
        assert_eq!(grid(Quantize::Eighth, 0, 4), [0.0, 0.5, 1.0, 1.5]);
        assert_eq!(grid(Quantize::Sixteenth, 0, 5), [0.0, 0.25, 0.5, 0.75, 1.0]);
        let triplets = grid(Quantize::EighthTriplet, 0, 4);
        for (got, want) in triplets.iter().zip([0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0]) {
            assert!((got - want).abs() < 1e-12, "{triplets:?}");
        }
        // 50 % swing on 1/8: the off-beat moves by a quarter of a step (1/8 beat).
        assert_eq!(grid(Quantize::Eighth, 50, 4), [0.0, 0.625, 1.0, 1.625]);
        // 1/16 at the maximum: off-beats 3/8 of a step (3/32 beat) late.
        assert_eq!(
            grid(Quantize::Sixteenth, 75, 4),
            [0.0, 0.25 + 0.09375, 0.5, 0.75 + 0.09375]
        );
        // More than the maximum is the maximum; triplets never swing.
        assert_eq!(
            grid(Quantize::Sixteenth, 200, 2),
            grid(Quantize::Sixteenth, 75, 2)
        );
        assert_eq!(
            grid(Quantize::EighthTriplet, 75, 4),
            grid(Quantize::EighthTriplet, 0, 4)
        );
        assert_eq!(Quantize::Off.grid_point(3, 0), None);
    }

    #[test]
    fn swing_of_two_thirds_is_the_triplet_shuffle() {
        // 66.7 % puts the swung 1/8 on the second triplet 1/8 (2/3 of the beat); only integer
        // percents exist, so 67 % lands within 1/600 beat of it.
        let swung = Quantize::Eighth.grid_point(1, 67).unwrap();
        assert!((swung - 2.0 / 3.0).abs() < 1.0 / 600.0, "{swung}");
        assert_eq!(Quantize::Eighth.swing_delay_beats(0), 0.0);
        assert_eq!(Quantize::EighthTriplet.swing_delay_beats(50), 0.0);
        assert_eq!(Quantize::Off.swing_delay_beats(50), 0.0);
    }

    #[test]
    fn snapping_goes_to_the_nearest_grid_point() {
        let q = |quantize: Quantize, swing: u8, beats: f64| quantize.snap_beats(beats, swing);
        assert_eq!(q(Quantize::Off, 50, 0.37), 0.37);
        assert_eq!(q(Quantize::Eighth, 0, 0.0), 0.0);
        assert_eq!(q(Quantize::Eighth, 0, 0.2), 0.0);
        assert_eq!(q(Quantize::Eighth, 0, 0.3), 0.5);
        assert_eq!(q(Quantize::Eighth, 0, 0.74), 0.5);
        assert_eq!(q(Quantize::Eighth, 0, 0.76), 1.0);
        assert_eq!(q(Quantize::Sixteenth, 0, 1.13), 1.25);
        assert_eq!(q(Quantize::Sixteenth, 0, 7.99), 8.0);
        // Ties go to the earlier point.
        assert_eq!(q(Quantize::Eighth, 0, 0.25), 0.0);
        assert_eq!(q(Quantize::Sixteenth, 0, 0.375), 0.25);
        // Triplets.
        assert!((q(Quantize::EighthTriplet, 0, 0.3) - 1.0 / 3.0).abs() < 1e-12);
        assert!((q(Quantize::EighthTriplet, 0, 0.6) - 2.0 / 3.0).abs() < 1e-12);
        assert!((q(Quantize::EighthTriplet, 0, 0.9) - 1.0).abs() < 1e-12);
        assert!((q(Quantize::EighthTriplet, 0, 5.0 / 3.0) - 5.0 / 3.0).abs() < 1e-12);
        // Swing moves the off-beats, and what snaps to them: with 50 % the 1/8 off-beat is at
        // 0.625, so 0.6 goes there and 0.3 (nearer 0.0 than 0.625) goes to the downbeat.
        assert_eq!(q(Quantize::Eighth, 50, 0.6), 0.625);
        assert_eq!(q(Quantize::Eighth, 50, 0.3), 0.0);
        assert_eq!(q(Quantize::Eighth, 50, 0.82), 1.0);
        assert_eq!(q(Quantize::Eighth, 50, 2.5), 2.625);
        assert_eq!(q(Quantize::Sixteenth, 50, 0.3), 0.3125);
        // Before the start counts as the start; odd values pass through.
        assert_eq!(q(Quantize::Sixteenth, 0, -0.3), 0.0);
        assert!(q(Quantize::Sixteenth, 0, f64::NAN).is_nan());
        // In milliseconds at 120 BPM (500 ms per beat).
        assert_eq!(Quantize::Sixteenth.snap_ms(130.0, 500.0, 0), 125.0);
        assert_eq!(Quantize::Eighth.snap_ms(260.0, 500.0, 50), 312.5);
        assert_eq!(Quantize::Off.snap_ms(130.0, 500.0, 0), 130.0);
        assert_eq!(Quantize::Eighth.snap_ms(130.0, 0.0, 0), 130.0);
    }

    #[test]
    fn snapping_keeps_the_order_of_notes() {
        for quantize in [
            Quantize::Eighth,
            Quantize::Sixteenth,
            Quantize::EighthTriplet,
        ] {
            for swing in [0, 33, 50, 67, 75] {
                let mut previous = 0.0;
                for i in 0..4000 {
                    let snapped = quantize.snap_beats(f64::from(i) * 0.001, swing);
                    assert!(snapped >= previous, "{quantize:?} {swing} at {i}");
                    // Never further than half the widest gap between grid points.
                    let widest = quantize.step_beats().unwrap() + quantize.swing_delay_beats(swing);
                    assert!((snapped - f64::from(i) * 0.001).abs() <= widest / 2.0 + 1e-12);
                    previous = snapped;
                }
            }
        }
    }

    #[test]
    fn scale_masks_follow_the_root() {
        let names = |mask: PitchClasses| -> Vec<&str> {
            (0..12)
                .filter(|&pc| mask.contains(pc))
                .map(|pc| PITCH_CLASS_NAMES[pc as usize])
                .collect()
        };
        assert_eq!(Scale::Off.mask(0), None);
        assert_eq!(
            names(Scale::Major.mask(0).unwrap()),
            ["C", "D", "E", "F", "G", "A", "B"]
        );
        // A natural minor has the notes of C major.
        assert_eq!(Scale::NaturalMinor.mask(9), Scale::Major.mask(0));
        // D Dorian and G Mixolydian too.
        assert_eq!(Scale::Dorian.mask(2), Scale::Major.mask(0));
        assert_eq!(Scale::Mixolydian.mask(7), Scale::Major.mask(0));
        assert_eq!(
            names(Scale::HarmonicMinor.mask(9).unwrap()),
            ["C", "D", "E", "F", "G#", "A", "B"]
        );
        assert_eq!(
            names(Scale::MajorPentatonic.mask(7).unwrap()),
            ["D", "E", "G", "A", "B"]
        );
        assert_eq!(
            names(Scale::MinorPentatonic.mask(4).unwrap()),
            ["D", "E", "G", "A", "B"]
        );
        assert_eq!(
            names(Scale::Blues.mask(0).unwrap()),
            ["C", "D#", "F", "F#", "G", "A#"]
        );
        // The root is taken modulo 12.
        assert_eq!(Scale::Blues.mask(12), Scale::Blues.mask(0));
        for scale in [
            Scale::Major,
            Scale::NaturalMinor,
            Scale::HarmonicMinor,
            Scale::Dorian,
            Scale::Mixolydian,
            Scale::MajorPentatonic,
            Scale::MinorPentatonic,
            Scale::Blues,
        ] {
            let mask = scale.mask(5).unwrap();
            assert_eq!(mask.0.count_ones() as usize, scale.intervals().len());
            assert!(mask.contains(5), "{scale:?} contains its root");
        }
    }

    #[test]
    fn pitches_snap_to_the_nearest_scale_tone_ties_down() {
        let c_major = Scale::Major.mask(0).unwrap();
        // In the scale: unchanged.
        assert_eq!(c_major.snap(60), 60);
        assert_eq!(c_major.snap(71), 71);
        // C#4 is as near C4 as D4: down. F#4 likewise goes to F4, A#4 to A4.
        assert_eq!(c_major.snap(61), 60);
        assert_eq!(c_major.snap(66), 65);
        assert_eq!(c_major.snap(70), 69);
        // E minor pentatonic (E G A B D): C is nearer B than D, F nearer E than G.
        let e_minor_pent = Scale::MinorPentatonic.mask(4).unwrap();
        assert_eq!(e_minor_pent.snap(60), 59);
        assert_eq!(e_minor_pent.snap(65), 64);
        // F# is one semitone below G and two above E: up to G. G# is a tie between G and A:
        // down to G.
        assert_eq!(e_minor_pent.snap(66), 67);
        assert_eq!(e_minor_pent.snap(68), 67);
        assert_eq!(e_minor_pent.snap(63), 62);
        // Snapping may leave the MIDI range; folding brings it back (see the generator, `super::moonbeam`).
        let b_major = Scale::Major.mask(11).unwrap();
        assert_eq!(b_major.snap(0), -1, "C is between B and C#: down to B");
        assert_eq!(PitchClasses(0).snap(60), 60);
        // Every result is in the scale, and none of these scales has a gap wider than three
        // semitones, so nothing moves by more than one.
        for scale in [
            Scale::Major,
            Scale::HarmonicMinor,
            Scale::Blues,
            Scale::MajorPentatonic,
        ] {
            for root in 0..12 {
                let mask = scale.mask(root).unwrap();
                for pitch in 0..128 {
                    let snapped = mask.snap(pitch);
                    assert!(mask.contains(snapped));
                    assert!((snapped - pitch).abs() <= 1, "{scale:?} {root} {pitch}");
                }
            }
        }
    }

    #[test]
    fn fold_pitch_and_density_window() {
        assert_eq!(fold_pitch(60, 0, 127), Some(60));
        assert_eq!(fold_pitch(40, 48, 72), Some(52));
        assert_eq!(fold_pitch(90, 48, 72), Some(66));
        assert_eq!(fold_pitch(61, 64, 62), None);
        assert_eq!(fold_pitch(75, 62, 64), Some(63));
        assert_eq!(fold_pitch(60, 62, 64), None);
        assert_eq!(fold_pitch(60, 72, 48), Some(60));
        assert_eq!(fold_pitch(-5, 0, 127), Some(7));
        assert_eq!(density_window(8.0), Some((1.0, 8)));
        assert_eq!(density_window(2.5), Some((1.0, 2)));
        assert_eq!(density_window(0.5), Some((2.0, 1)));
        assert_eq!(density_window(f32::NAN), None);
    }
}
