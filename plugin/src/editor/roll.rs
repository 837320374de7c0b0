//! The live piano roll's layout: the pure mapping from an editor snapshot (with its
//! [`NoteRing`](crate::status::NoteRing)s of recent and upcoming notes, which the audio thread
//! fills) to the rectangles and grid lines the editor paints.
//!
//! It is a module of its own because it is plain data and arithmetic, with no egui and no host in
//! sight, so it can be unit-tested.
//!
//! Times are on the plugin clock (samples since `activate()`), not the song position: a loop or
//! seek would otherwise fold the past back over itself. While the transport plays, the beat grid
//! is extrapolated backwards from the current song position at the current tempo, so after a
//! tempo change or a jump the grid of the past is approximate; the notes are not.

use crate::status::{EditorSnapshot, NoteSource, RollNote};

/// The fewest keys the roll shows: two octaves, C to C.
pub const MIN_KEY_SPAN: u8 = 24;
/// The most grid lines [`layout`] returns (a guard against absurd windows).
const MAX_GRID_LINES: usize = 256;

/// What part of the time line the roll shows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RollWindow {
    /// Seconds shown while the transport is stopped.
    pub stopped_seconds: f64,
    /// Bars shown while the transport plays.
    pub playing_bars: f64,
    /// Where "now" sits, as a fraction of the width from the left; the part to its right shows
    /// generated notes that are scheduled but have not started.
    pub playhead: f64,
}

impl RollWindow {
    /// The last 6.4 s (or 3.2 bars) and the next 1.6 s (or 0.8 bars).
    pub const DEFAULT: Self = Self {
        stopped_seconds: 8.0,
        playing_bars: 4.0,
        playhead: 0.8,
    };
}

/// A note as a rectangle in unit coordinates: `x` from 0 (left edge) to 1 (right edge), `y` from
/// 0 (top, highest key) to 1 (bottom, lowest key). Clipped to the window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RollRect {
    pub x0: f32,
    pub x1: f32,
    pub y0: f32,
    pub y1: f32,
    pub key: u8,
    pub velocity: u8,
    pub source: NoteSource,
    /// Still sounding: its right edge is the playhead.
    pub sounding: bool,
    /// Scheduled but not started yet (right of the playhead).
    pub upcoming: bool,
}

/// A vertical grid line at a beat, in unit coordinates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GridLine {
    pub x: f32,
    /// The line starts a bar.
    pub is_bar: bool,
}

/// Everything the editor draws for one frame of the roll.
#[derive(Debug, Clone, PartialEq)]
pub struct RollLayout {
    /// Notes, oldest first, upcoming notes last.
    pub rects: Vec<RollRect>,
    /// Beat and bar lines while the transport plays, one line a second while it is stopped,
    /// left to right.
    pub grid: Vec<GridLine>,
    /// The answer in progress: where it plays, `(x0, x1)` clipped to the window; `None` when
    /// there is none or it is out of view.
    pub answer_span: Option<(f32, f32)>,
    /// Where "now" is.
    pub playhead_x: f32,
    /// The lowest key shown (the bottom row).
    pub key_low: u8,
    /// The highest key shown (the top row).
    pub key_high: u8,
}

/// Maps the notes of `snapshot` onto the roll for `window`. Runs on the GUI thread.
///
/// The key range fits the notes in view, widened to whole octaves from C and to at least
/// [`MIN_KEY_SPAN`] keys, so it moves in octave steps rather than with every note.
pub fn layout(snapshot: &EditorSnapshot, window: &RollWindow) -> RollLayout {
    let sample_rate = if snapshot.sample_rate_hz > 0.0 {
        snapshot.sample_rate_hz
    } else {
        48_000.0
    };
    let tempo_bpm = if snapshot.tempo_bpm > 0.0 {
        snapshot.tempo_bpm
    } else {
        120.0
    };
    let beats_per_bar = if snapshot.beats_per_bar > 0.0 {
        snapshot.beats_per_bar
    } else {
        4.0
    };
    let samples_per_beat = sample_rate * 60.0 / tempo_bpm;
    let playhead = window.playhead.clamp(0.0, 1.0);
    let width_samples = if snapshot.playing {
        window.playing_bars * beats_per_bar * samples_per_beat
    } else {
        window.stopped_seconds * sample_rate
    }
    .max(1.0);
    let now = snapshot.now_samples;
    let left = now as f64 - playhead * width_samples;
    let right = left + width_samples;
    let x_of = |t: i64| ((t as f64 - left) / width_samples) as f32;

    let mut spans: Vec<(RollNote, bool)> = Vec::new();
    for note in snapshot.recent.iter() {
        let end = if note.is_open() { now } else { note.end };
        if (end as f64) < left || note.start as f64 > right {
            continue;
        }
        spans.push((RollNote { end, ..*note }, false));
    }
    for note in snapshot.upcoming.iter() {
        // Cancelled answers and notes that have started (those are in `recent`, or were dropped).
        if note.tag < snapshot.accept_from_answer || note.start <= now || note.start as f64 > right
        {
            continue;
        }
        spans.push((*note, true));
    }

    let (key_low, key_high) = fit_keys(spans.iter().map(|(note, _)| note.key));
    let rows = f32::from(key_high - key_low) + 1.0;
    let rects = spans
        .iter()
        .map(|&(note, upcoming)| {
            let y0 = f32::from(key_high - note.key.clamp(key_low, key_high)) / rows;
            RollRect {
                x0: x_of(note.start).max(0.0),
                x1: x_of(note.end).min(1.0),
                y0,
                y1: y0 + 1.0 / rows,
                key: note.key,
                velocity: note.velocity,
                source: note.source,
                sounding: !upcoming && note.end == now,
                upcoming,
            }
        })
        .collect();

    let mut grid = Vec::new();
    if snapshot.playing {
        let now_beats = snapshot.now_beats;
        let left_beats = now_beats - playhead * width_samples / samples_per_beat;
        let right_beats = left_beats + width_samples / samples_per_beat;
        let mut beat = left_beats.ceil();
        while beat <= right_beats && grid.len() < MAX_GRID_LINES {
            let bars = (beat - snapshot.bar_start_beats) / beats_per_bar;
            grid.push(GridLine {
                x: ((beat - left_beats) / (right_beats - left_beats)) as f32,
                is_bar: (bars - bars.round()).abs() < 1e-6,
            });
            beat += 1.0;
        }
    } else {
        let seconds = |t: f64| t / sample_rate;
        let mut second = seconds(left).ceil();
        while second <= seconds(right) && grid.len() < MAX_GRID_LINES {
            grid.push(GridLine {
                x: ((second * sample_rate - left) / width_samples) as f32,
                is_bar: false,
            });
            second += 1.0;
        }
    }
    let answer_span = snapshot
        .answer_span
        .filter(|&(start, end)| end as f64 > left && (start as f64) < right && end > start)
        .map(|(start, end)| (x_of(start).max(0.0), x_of(end).min(1.0)));

    RollLayout {
        rects,
        grid,
        answer_span,
        playhead_x: playhead as f32,
        key_low,
        key_high,
    }
}

/// The key range `(low, high)` for notes with these keys: from a C up to a C, at least
/// [`MIN_KEY_SPAN`] keys apart, widened downwards and upwards in turn; C3 to C5 when there are
/// none. Stays within `0..=127`.
pub fn fit_keys(keys: impl IntoIterator<Item = u8>) -> (u8, u8) {
    let (mut min, mut max) = (u8::MAX, 0u8);
    for key in keys {
        min = min.min(key & 127);
        max = max.max(key & 127);
    }
    if min > max {
        return (48, 72);
    }
    let mut low = i32::from(min) / 12 * 12;
    let mut high = (i32::from(max) + 11) / 12 * 12;
    let mut widen_down = true;
    while high.min(127) - low < i32::from(MIN_KEY_SPAN) {
        if (widen_down && low > 0) || high >= 127 {
            low -= 12;
        } else {
            high += 12;
        }
        widen_down = !widen_down;
    }
    (low.max(0) as u8, high.min(127) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn played(key: u8, start: i64) -> RollNote {
        RollNote::started(NoteSource::Played, 0, key, 0.5, start, 0)
    }

    #[test]
    fn key_range_fits_whole_octaves_and_at_least_two() {
        assert_eq!(fit_keys([]), (48, 72));
        assert_eq!(fit_keys([60, 64]), (48, 72));
        assert_eq!(fit_keys([60, 84]), (60, 84));
        assert_eq!(fit_keys([61, 85]), (60, 96));
        assert_eq!(fit_keys([30, 90]), (24, 96));
        assert_eq!(fit_keys([2]), (0, 24));
        assert_eq!(fit_keys([125]), (96, 127));
        let (low, high) = fit_keys([0, 127]);
        assert_eq!((low, high), (0, 127));
    }

    /// A snapshot at 48 kHz, "now" at 10 s, transport stopped.
    fn snapshot() -> EditorSnapshot {
        EditorSnapshot {
            sample_rate_hz: 48_000.0,
            tempo_bpm: 120.0,
            beats_per_bar: 4.0,
            now_samples: 480_000,
            ..EditorSnapshot::default()
        }
    }

    #[test]
    fn stopped_notes_map_to_the_last_seconds_with_the_playhead_at_80_percent() {
        let mut snap = snapshot();
        // 8 s window, 6.4 s left of "now": the left edge is at 3.6 s = 172,800 samples.
        snap.recent.push(RollNote {
            end: 240_000, // 5 s
            ..played(60, 0)
        });
        snap.recent.push(RollNote {
            end: 441_600,                                                       // 9.2 s
            ..RollNote::started(NoteSource::Generated, 0, 72, 1.0, 364_800, 1)  // 7.6 s
        });
        snap.recent.push(played(67, 460_800)); // 9.6 s, still held
        snap.recent.push(RollNote {
            end: 100_000,
            ..played(40, 50_000)
        }); // before the window
        let layout = layout(&snap, &RollWindow::DEFAULT);
        assert_eq!(layout.playhead_x, 0.8);
        // One line a second: 4 s to 11 s of the 3.6 s to 11.6 s window.
        let seconds: Vec<f32> = layout.grid.iter().map(|g| 3.6 + 8.0 * g.x).collect();
        assert_eq!(seconds.len(), 8, "{seconds:?}");
        for (i, s) in seconds.iter().enumerate() {
            assert!((s - (4.0 + i as f32)).abs() < 1e-4, "{seconds:?}");
        }
        assert_eq!(layout.answer_span, None);
        assert_eq!((layout.key_low, layout.key_high), (48, 72));
        let got: Vec<(f32, f32, f32, NoteSource, bool)> = layout
            .rects
            .iter()
            .map(|r| (r.x0, r.x1, r.y0, r.source, r.sounding))
            .collect();
        let rows = 25.0;
        let expected = [
            (0.0, 1.4 / 8.0, 12.0 / rows, NoteSource::Played, false),
            (4.0 / 8.0, 5.6 / 8.0, 0.0, NoteSource::Generated, false),
            (6.0 / 8.0, 0.8, 5.0 / rows, NoteSource::Played, true),
        ];
        assert_eq!(got.len(), expected.len(), "{got:?}");
        for (g, e) in got.iter().zip(&expected) {
            assert!((g.0 - e.0).abs() < 1e-6, "{g:?} vs {e:?}");
            assert!((g.1 - e.1).abs() < 1e-6, "{g:?} vs {e:?}");
            assert!((g.2 - e.2).abs() < 1e-6, "{g:?} vs {e:?}");
            assert_eq!((g.3, g.4), (e.3, e.4));
        }
        assert!(layout
            .rects
            .iter()
            .all(|r| (r.y1 - r.y0 - 1.0 / rows).abs() < 1e-6));
    }

    /// The answer's planned span is drawn where it plays, clipped to the window.
    #[test]
    fn the_answer_span_shows_where_the_answer_plays() {
        let mut snap = snapshot();
        // From 10.5 s to 14 s: from x = (10.5 - 3.6) / 8 to the right edge.
        snap.answer_span = Some((504_000, 672_000));
        let (x0, x1) = layout(&snap, &RollWindow::DEFAULT).answer_span.unwrap();
        assert!((x0 - 6.9 / 8.0).abs() < 1e-6 && x1 == 1.0, "{x0} {x1}");
        snap.answer_span = Some((0, 100_000));
        assert_eq!(layout(&snap, &RollWindow::DEFAULT).answer_span, None);
    }

    #[test]
    fn upcoming_notes_show_right_of_the_playhead_unless_cancelled() {
        let mut snap = snapshot();
        snap.accept_from_answer = 5;
        let upcoming = |answer_id, start, end| RollNote {
            end,
            ..RollNote::started(NoteSource::Generated, 0, 64, 0.5, start, answer_id)
        };
        snap.upcoming.push(upcoming(5, 489_600, 600_000)); // 10.2 s to past the right edge
        snap.upcoming.push(upcoming(4, 489_600, 499_200)); // a cancelled answer
        snap.upcoming.push(upcoming(5, 470_400, 499_200)); // already started
        snap.upcoming.push(upcoming(6, 600_000, 610_000)); // beyond the window
        let layout = layout(&snap, &RollWindow::DEFAULT);
        assert_eq!(layout.rects.len(), 1, "{:?}", layout.rects);
        let rect = layout.rects[0];
        assert!(rect.upcoming && !rect.sounding);
        assert!((rect.x0 - (0.8 + 0.2 / 8.0)).abs() < 1e-6, "{rect:?}");
        assert_eq!(rect.x1, 1.0);
    }

    #[test]
    fn playing_shows_bars_with_a_beat_grid() {
        let mut snap = snapshot();
        snap.playing = true;
        // 120 BPM: 24,000 samples per beat; 4 bars of 4/4 = 16 beats = 384,000 samples.
        snap.now_beats = 10.0;
        snap.bar_start_beats = 8.0;
        snap.recent.push(RollNote {
            end: 480_000 - 24_000,
            ..played(60, 480_000 - 48_000)
        }); // beats 8 to 9
        let layout = layout(&snap, &RollWindow::DEFAULT);
        // The window spans beats 10 - 12.8 = -2.8 to 10 + 3.2 = 13.2.
        let beats: Vec<f32> = layout.grid.iter().map(|g| g.x * 16.0 - 2.8).collect();
        assert_eq!(layout.grid.len(), 16);
        assert!((beats[0] - -2.0).abs() < 1e-4 && (beats[15] - 13.0).abs() < 1e-4);
        let bars: Vec<f32> = layout
            .grid
            .iter()
            .zip(&beats)
            .filter(|(g, _)| g.is_bar)
            .map(|(_, b)| b.round())
            .collect();
        assert_eq!(bars, [0.0, 4.0, 8.0, 12.0]);
        let rect = layout.rects[0];
        assert!((rect.x0 - 10.8 / 16.0).abs() < 1e-6, "{rect:?}");
        assert!((rect.x1 - 11.8 / 16.0).abs() < 1e-6, "{rect:?}");
    }
}
