//! The training data pipeline: MIDI folder → pieces → (augmented) windows → packed sequences.
//!
//! Everything here is plain data (notes, rows, ids, booleans); tensors are the trainer's
//! business. The stages, in order:
//!
//! 1. [`find_midi_files`]: every `.mid`/`.midi` file under a folder (any case), sorted.
//! 2. [`load_pieces`]: tokenize each file (spec §1.1) and [`preprocess`] it: split wherever the
//!    onset gap (the model's timeshift) exceeds the vocabulary's largest timeshift `V_ts - 3`,
//!    re-zero each chunk so it starts at onset 0 (spec §6.1 `--ts_threshold`), clip durations to
//!    `1..=V_dur - 3`, drop impossible notes, and drop chunks shorter than
//!    [`MIN_CHUNK_NOTES`]. The reference *rejects* a whole file or chunk with one over-long
//!    duration; we clip it to the largest representable duration and count it in the
//!    [`DataReport`] instead, because a fine-tuning set of 15-20 songs cannot spare a song
//!    for one held note.
//! 3. [`split_by_hash`]: a train/validation split by a seeded FNV-1a hash of each file's path
//!    relative to the data folder, stable across runs and machines. All chunks of one file
//!    land on the same side.
//! 4. [`Augment`]: transposition within the piano range (drums never move), tempo stretch and
//!    velocity scaling, all kept inside the vocabulary. The reference has no augmentation
//!    (spec §6.1); with a handful of songs it is what keeps LoRA from memorising them.
//! 5. [`windows`]: cut pieces longer than the context into windows of at most
//!    `context_rows - 2` notes (room for SOS and EOS), each re-zeroed to onset 0. The
//!    reference *truncates* (spec §6.2: the tail of a long piece is dropped); we window so that
//!    every note is trained on. The last window is aligned to the end of the piece (it may
//!    overlap the one before), so no window is a tiny leftover. One deviation follows from
//!    windowing: every window ends with EOS, also those cut in the middle of a piece, where
//!    the reference's truncated samples have no EOS.
//! 6. [`pack`]: greedy packing of `[SOS] + notes + [EOS]` samples into sequences of exactly
//!    `context_rows` rows padded with `[0; 6]` (spec §6.2), with per-row sample ids for the
//!    block-diagonal mask (`Mask::Packed`) and a loss mask for the in-sample transitions.
//!    [`Packed::labels`] gives the flat label ids (spec §1.4) computed per sample.
//! 7. [`build_dataset`] ties it together and [`Dataset::epoch_samples`] regenerates the
//!    augmented training samples per epoch, deterministically from `seed` and the epoch.
//!
//! ## How 15-20 songs become a few hundred samples
//!
//! Each training piece gives its windows (one for a piece of at most `context_rows - 2`
//! notes), and each epoch adds `augment_copies` augmented variants of every piece, each freshly
//! transposed, stretched and re-velocitied and windowed at a random phase (window boundaries
//! move from epoch to epoch), so no two epochs see the same samples. Measured on
//! `shared/midi-samples` with the Small vocabulary, no validation split and the default
//! [`Augment`] with `augment_copies = 4` (the ignored test `print_sample_counts` prints this):
//!
//! | songs | notes | pieces | windows at 1024 rows | samples / epoch at 1024 | at 512 |
//! |---|---|---|---|---|---|
//! | 14 piano performances (`hannds`) | 19,733 | 17 | 25 | 119 (116 packed sequences) | 207 |
//! | 10 rags | 21,443 | 12 | 29 | 130 (128) | 232 |
//! | 20 Bach chorales | 6,449 | 20 | 20 | 100 (39: 2-3 per sequence) | 105 |
//!
//! So 15-20 songs of a few minutes give 100-250 samples per epoch at 512-1024 rows with 4
//! copies, and a few hundred with 6-8 copies. Long pauses split a song into several pieces
//! (17 pieces from 14 files above); short songs are packed several to a sequence.
//!
//! ## Determinism
//!
//! Every random choice comes from a `StdRng` seeded from `(seed, epoch, piece, copy)` through
//! a fixed mixing function, so the samples of one piece do not depend on the others, and
//! the same seed and epoch give the same samples on every machine (with the same `rand`
//! version). No `std` hasher decides any order or membership.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::midi::read_midi_file;
use crate::model::forward::Row;
use crate::note::Note;
use crate::vocab::{input_rows, labels};

/// Chunks with fewer notes than this are dropped by [`load_pieces`].
pub const MIN_CHUNK_NOTES: usize = 8;

/// The lowest and highest key of an 88-key piano (A0, C8): transposition keeps notes inside.
pub const PIANO_RANGE: std::ops::RangeInclusive<i64> = 21..=108;

/// The instrument value of drums (MIDI channel 10); drums are never transposed.
pub const DRUMS: i64 = 128;

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// What can stop the data pipeline. Unreadable MIDI files do not: they are skipped and listed
/// in the [`DataReport`].
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot list MIDI files under {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("no .mid or .midi files under {0}")]
    NoFiles(PathBuf),
    #[error("none of the {files} MIDI files under {dir} gave a usable piece: {summary}")]
    NoPieces {
        dir: PathBuf,
        files: usize,
        summary: String,
    },
    #[error("context_rows {0} is too small: a sample needs at least 3 rows (SOS, one note, EOS)")]
    ContextTooSmall(usize),
    #[error(
        "sample {index} needs {rows} rows, more than the context of {context_rows}; \
         cut it with `windows` first"
    )]
    SampleTooLong {
        index: usize,
        rows: usize,
        context_rows: usize,
    },
    #[error("invalid data option: {0}")]
    Invalid(String),
    #[error("label error in packed row {row}: {reason}")]
    Label { row: usize, reason: String },
}

// ---------------------------------------------------------------------------------------------
// 1. Finding files
// ---------------------------------------------------------------------------------------------

fn is_midi_path(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("mid") || e.eq_ignore_ascii_case("midi"))
}

/// Every file under `dir` (recursively) whose extension is `mid` or `midi` in any case,
/// sorted by path. Symbolic links are followed, but each directory is visited once (by its
/// canonical path), so link loops terminate; dangling links are skipped.
pub fn find_midi_files(dir: &Path) -> Result<Vec<PathBuf>, io::Error> {
    let mut out = Vec::new();
    let mut visited = HashSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if !visited.insert(std::fs::canonicalize(&d)?) {
            continue;
        }
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            // `metadata` follows links; a dangling link reports NotFound and is skipped.
            let meta = match std::fs::metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() && is_midi_path(&path) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// 2. Loading and preprocessing
// ---------------------------------------------------------------------------------------------

/// One training unit: a chunk of one file, onsets starting at 0, notes in onset order.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Piece {
    pub source: PathBuf,
    pub notes: Vec<Note>,
}

/// Preprocessing options for [`load_pieces_with`] and [`preprocess`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoadOptions {
    /// Chunks with fewer notes are dropped.
    pub min_notes: usize,
    /// Split where the onset gap exceeds this many ticks. `None` (the default) uses the
    /// largest timeshift the vocabulary holds, `V_ts - 3`; a larger value is capped to it.
    pub max_timeshift: Option<i64>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            min_notes: MIN_CHUNK_NOTES,
            max_timeshift: None,
        }
    }
}

/// What [`preprocess`] did to one note list.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ChunkStats {
    /// Onset gaps larger than the timeshift limit, where the piece was split.
    pub split_gaps: usize,
    /// Durations outside `1..=V_dur - 3` that were clipped into it.
    pub clipped_durations: usize,
    /// Notes dropped because an attribute is outside its vocabulary (octave, pitch class,
    /// instrument, velocity, or a negative onset); the tokenizer never produces these.
    pub dropped_notes: usize,
    /// Chunks dropped for having fewer than `min_notes` notes, and the notes they held.
    pub short_chunks: usize,
    pub short_chunk_notes: usize,
}

/// What happened to one file.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FileReport {
    pub path: PathBuf,
    /// Notes the tokenizer produced.
    pub notes: usize,
    /// Chunks kept (pieces) and the notes in them.
    pub chunks: usize,
    pub kept_notes: usize,
    #[serde(flatten)]
    pub stats: ChunkStats,
    /// Why the file gave no piece: the tokenizer's error text, or "too short: ...".
    pub skipped: Option<String>,
    /// Whether the tokenizer failed on the file (then `skipped` holds its error).
    pub unreadable: bool,
}

/// The per-file account of [`load_pieces`], with totals.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DataReport {
    pub files: Vec<FileReport>,
    /// Files that could not be tokenized.
    pub unreadable: usize,
    /// Files that were read but gave no piece.
    pub too_short: usize,
    pub pieces: usize,
    pub notes_read: usize,
    pub notes_kept: usize,
    pub split_gaps: usize,
    pub clipped_durations: usize,
    pub dropped_notes: usize,
    pub short_chunks: usize,
    /// The limits used: largest timeshift (split threshold) and largest duration, in ticks.
    pub max_timeshift: i64,
    pub max_duration: i64,
}

impl DataReport {
    fn from_files(files: Vec<FileReport>, max_timeshift: i64, max_duration: i64) -> Self {
        let mut r = DataReport {
            max_timeshift,
            max_duration,
            ..Default::default()
        };
        for f in &files {
            if f.chunks == 0 {
                if f.unreadable {
                    r.unreadable += 1;
                } else {
                    r.too_short += 1;
                }
            }
            r.pieces += f.chunks;
            r.notes_read += f.notes;
            r.notes_kept += f.kept_notes;
            r.split_gaps += f.stats.split_gaps;
            r.clipped_durations += f.stats.clipped_durations;
            r.dropped_notes += f.stats.dropped_notes;
            r.short_chunks += f.stats.short_chunks;
        }
        r.files = files;
        r
    }

    /// The files that gave no piece, with the reason.
    pub fn skipped(&self) -> impl Iterator<Item = (&Path, &str)> {
        self.files
            .iter()
            .filter_map(|f| f.skipped.as_deref().map(|s| (f.path.as_path(), s)))
    }
}

impl fmt::Display for DataReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} files: {} pieces, {} of {} notes kept; {} unreadable, {} too short; \
             {} splits at gaps > {} ticks, {} durations clipped to 1..={}, {} notes dropped, \
             {} short chunks dropped",
            self.files.len(),
            self.pieces,
            self.notes_kept,
            self.notes_read,
            self.unreadable,
            self.too_short,
            self.split_gaps,
            self.max_timeshift,
            self.clipped_durations,
            self.max_duration,
            self.dropped_notes,
            self.short_chunks,
        )
    }
}

/// The vocabulary limits the pipeline keeps every note inside (spec §1.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Limits {
    max_timeshift: i64,
    max_duration: i64,
    max_octave: i64,
    max_pitch_class: i64,
    max_instrument: i64,
    max_velocity: i64,
}

impl Limits {
    fn new(cfg: &Config) -> Self {
        let top = |i: usize| cfg.vocab[i] as i64 - 3;
        Limits {
            max_timeshift: top(0),
            max_duration: top(1),
            max_octave: top(2),
            max_pitch_class: top(3),
            max_instrument: top(4),
            max_velocity: top(5),
        }
    }

    fn note_ok(&self, n: &Note) -> bool {
        n.onset >= 0
            && (0..=self.max_octave).contains(&n.octave)
            && (0..=self.max_pitch_class.min(11)).contains(&n.pitch_class)
            && (0..=self.max_instrument).contains(&n.instrument)
            && (1..=self.max_velocity.min(127)).contains(&n.velocity)
            && (0..=127).contains(&n.pitch())
    }
}

/// Subtracts the smallest onset, so the notes start at onset 0.
fn rezero(notes: &mut [Note]) {
    if let Some(first) = notes.iter().map(|n| n.onset).min() {
        for n in notes.iter_mut() {
            n.onset -= first;
        }
    }
}

/// Cleans one tokenized note list into chunks that fit the vocabulary: sorts by onset (stable;
/// tokenizer output is already sorted), drops impossible notes, clips durations into
/// `1..=V_dur - 3`, splits wherever the onset gap exceeds the timeshift limit, re-zeroes each
/// chunk to onset 0 and drops chunks shorter than `opts.min_notes`.
pub fn preprocess(
    notes: &[Note],
    cfg: &Config,
    opts: &LoadOptions,
) -> (Vec<Vec<Note>>, ChunkStats) {
    let limits = Limits::new(cfg);
    let max_ts = opts
        .max_timeshift
        .map_or(limits.max_timeshift, |t| t.clamp(0, limits.max_timeshift));
    let mut stats = ChunkStats::default();
    let mut sorted: Vec<Note> = notes.to_vec();
    sorted.sort_by_key(|n| n.onset);

    let mut chunks: Vec<Vec<Note>> = Vec::new();
    let mut current: Vec<Note> = Vec::new();
    let mut prev_onset: Option<i64> = None;
    for mut n in sorted {
        if !limits.note_ok(&n) {
            stats.dropped_notes += 1;
            continue;
        }
        if !(1..=limits.max_duration).contains(&n.duration) {
            n.duration = n.duration.clamp(1, limits.max_duration);
            stats.clipped_durations += 1;
        }
        if let Some(p) = prev_onset {
            if n.onset - p > max_ts {
                stats.split_gaps += 1;
                chunks.push(std::mem::take(&mut current));
            }
        }
        prev_onset = Some(n.onset);
        current.push(n);
    }
    chunks.push(current);

    let mut kept = Vec::new();
    for mut chunk in chunks {
        if chunk.is_empty() {
            continue;
        }
        if chunk.len() < opts.min_notes {
            stats.short_chunks += 1;
            stats.short_chunk_notes += chunk.len();
            continue;
        }
        rezero(&mut chunk);
        kept.push(chunk);
    }
    (kept, stats)
}

/// [`load_pieces_with`] with the default [`LoadOptions`].
pub fn load_pieces(files: &[PathBuf], cfg: &Config) -> (Vec<Piece>, DataReport) {
    load_pieces_with(files, cfg, &LoadOptions::default())
}

/// Tokenizes and [`preprocess`]es every file (in parallel; the output keeps the order of
/// `files`). Unreadable files are skipped and reported, never fatal.
pub fn load_pieces_with(
    files: &[PathBuf],
    cfg: &Config,
    opts: &LoadOptions,
) -> (Vec<Piece>, DataReport) {
    let limits = Limits::new(cfg);
    let results: Vec<(Vec<Piece>, FileReport)> = files
        .par_iter()
        .map(|path| match read_midi_file(path) {
            Err(e) => (
                Vec::new(),
                FileReport {
                    path: path.clone(),
                    notes: 0,
                    chunks: 0,
                    kept_notes: 0,
                    stats: ChunkStats::default(),
                    skipped: Some(e.to_string()),
                    unreadable: true,
                },
            ),
            Ok(notes) => {
                let (chunks, stats) = preprocess(&notes, cfg, opts);
                let kept_notes = chunks.iter().map(Vec::len).sum();
                let skipped = chunks.is_empty().then(|| {
                    format!(
                        "too short: {} notes{}, no chunk of at least {} usable notes",
                        notes.len(),
                        if stats.split_gaps > 0 {
                            format!(" in {} chunks", stats.split_gaps + 1)
                        } else {
                            String::new()
                        },
                        opts.min_notes
                    )
                });
                let report = FileReport {
                    path: path.clone(),
                    notes: notes.len(),
                    chunks: chunks.len(),
                    kept_notes,
                    stats,
                    skipped,
                    unreadable: false,
                };
                let pieces = chunks
                    .into_iter()
                    .map(|notes| Piece {
                        source: path.clone(),
                        notes,
                    })
                    .collect();
                (pieces, report)
            }
        })
        .collect();
    let mut pieces = Vec::new();
    let mut reports = Vec::with_capacity(results.len());
    for (p, r) in results {
        pieces.extend(p);
        reports.push(r);
    }
    let max_ts = opts
        .max_timeshift
        .map_or(limits.max_timeshift, |t| t.clamp(0, limits.max_timeshift));
    (
        pieces,
        DataReport::from_files(reports, max_ts, limits.max_duration),
    )
}

// ---------------------------------------------------------------------------------------------
// 3. Train/validation split
// ---------------------------------------------------------------------------------------------

/// 64-bit FNV-1a.
fn fnv1a(bytes: &[u8], mut h: u64) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The SplitMix64 finaliser, to spread FNV's bits.
fn finalize(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The split hash of a key: FNV-1a over the seed's little-endian bytes and the key's UTF-8.
pub fn split_hash(key: &str, seed: u64) -> u64 {
    finalize(fnv1a(
        key.as_bytes(),
        fnv1a(&seed.to_le_bytes(), 0xcbf2_9ce4_8422_2325),
    ))
}

/// `path` relative to `root` with `/` separators (the whole path if it is not under `root`):
/// the machine-independent key for [`split_by_hash`].
pub fn relative_key(path: &Path, root: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

/// Splits items into `(train, validation)` by key (a file's [`relative_key`]). Items with the
/// same key go to the same side. The distinct keys are ranked by [`split_hash`]`(key, seed)`
/// and the first `round(val_fraction × keys)` go to validation, at least one when
/// `val_fraction > 0` and there are at least 2 keys, and never all of them when
/// `val_fraction < 1` (so a single file always trains). The order of items inside each side is kept. A key's side depends only
/// on the key, the seed and the set of keys, never on the machine or the order of `items`.
pub fn split_by_hash<T>(
    items: Vec<T>,
    key: impl Fn(&T) -> String,
    val_fraction: f64,
    seed: u64,
) -> (Vec<T>, Vec<T>) {
    let keys: Vec<String> = items.iter().map(&key).collect();
    let mut distinct: Vec<(u64, &str)> = {
        let set: BTreeMap<&str, ()> = keys.iter().map(|k| (k.as_str(), ())).collect();
        set.into_keys().map(|k| (split_hash(k, seed), k)).collect()
    };
    distinct.sort();
    let n = distinct.len();
    let frac = if val_fraction.is_finite() {
        val_fraction.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let mut n_val = (frac * n as f64).round() as usize;
    if frac > 0.0 && n >= 2 {
        n_val = n_val.max(1);
    }
    if frac < 1.0 {
        n_val = n_val.min(n.saturating_sub(1));
    }
    let val_keys: HashSet<String> = distinct[..n_val.min(n)]
        .iter()
        .map(|(_, k)| (*k).to_owned())
        .collect();
    let mut train = Vec::new();
    let mut val = Vec::new();
    for (item, k) in items.into_iter().zip(keys) {
        if val_keys.contains(&k) {
            val.push(item);
        } else {
            train.push(item);
        }
    }
    (train, val)
}

// ---------------------------------------------------------------------------------------------
// 4. Augmentation
// ---------------------------------------------------------------------------------------------

/// Random transformations applied to a training piece (not in the reference, spec §6.1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Augment {
    /// Largest transposition in semitones, either way; the shift is drawn uniformly from the
    /// shifts in `-transpose..=transpose` that keep every non-drum note in 21..=108.
    pub transpose: i8,
    /// Tempo stretch factor range (onsets and durations are multiplied; > 1 is slower),
    /// drawn log-uniformly so that ×0.5 and ×2 are equally likely.
    pub tempo: (f64, f64),
    /// Velocity scale range, drawn log-uniformly.
    pub velocity: (f64, f64),
    /// Largest velocity offset, either way, added after scaling (drawn uniformly).
    #[serde(default)]
    pub velocity_shift: i64,
}

impl Default for Augment {
    /// The mild augmentation of style training: a style's corpus is small and its register,
    /// tempo and dynamics are part of the style.
    fn default() -> Self {
        Augment {
            transpose: 5,
            tempo: (0.9, 1.1),
            velocity: (0.85, 1.15),
            velocity_shift: 0,
        }
    }
}

impl Augment {
    /// The wide augmentation of base training (issue #15): a piece may be played at half or
    /// double speed and anywhere on the keyboard, so the only way to predict its tempo and
    /// register is to read them from the context. Dynamics are left as played: the ablation
    /// of 2026-12-04 (assets/MODEL_CARD.md, "Augmentation ablation") found that scaling and
    /// shifting velocities (v3's × 0.6-1.5, ± 20) made the validation loss worse and the
    /// answers follow the prompt's loudness less well; `--velocity-range` and
    /// `--velocity-shift` bring it back.
    pub fn wide() -> Self {
        Augment {
            transpose: 87,
            tempo: (0.5, 2.0),
            velocity: (1.0, 1.0),
            velocity_shift: 0,
        }
    }

    /// Checks the ranges: finite, positive, low ≤ high, transpose and velocity shift ≥ 0.
    pub fn validate(&self) -> Result<(), DataError> {
        if self.transpose < 0 {
            return Err(DataError::Invalid(format!(
                "augment transpose {} is negative",
                self.transpose
            )));
        }
        if !(0..=126).contains(&self.velocity_shift) {
            return Err(DataError::Invalid(format!(
                "augment velocity shift {} must be between 0 and 126",
                self.velocity_shift
            )));
        }
        for (name, (lo, hi)) in [("tempo", self.tempo), ("velocity", self.velocity)] {
            if !(lo.is_finite() && hi.is_finite() && lo > 0.0 && lo <= hi) {
                return Err(DataError::Invalid(format!(
                    "augment {name} range ({lo}, {hi}) must be finite, positive and ordered"
                )));
            }
        }
        Ok(())
    }

    /// One augmented copy of `notes` (onset-sorted, as pieces are). Draws, in this order, the
    /// transposition, the tempo factor, the velocity factor and the velocity shift from `rng`.
    ///
    /// - Transposition: uniform over the shifts in `-transpose..=transpose` that keep every
    ///   non-drum pitch in 21..=108 (0 if none does); drums (instrument 128) never move.
    /// - Tempo: onsets and durations are multiplied and rounded half to even; durations are
    ///   kept in `1..=V_dur - 3` and onset gaps at most `V_ts - 3` (a stretched gap over the
    ///   limit is shortened, moving all later notes earlier).
    /// - Velocity: multiplied, rounded half to even, shifted and clamped to 1..=127.
    ///
    /// Octave and pitch class are recomputed from the pitch. Panics if [`Augment::validate`]
    /// fails.
    pub fn apply<R: Rng + ?Sized>(&self, notes: &[Note], cfg: &Config, rng: &mut R) -> Vec<Note> {
        if let Err(e) = self.validate() {
            panic!("{e}");
        }
        let limits = Limits::new(cfg);
        let shift = self.pick_transposition(notes, rng);
        let tempo = log_uniform(self.tempo, rng);
        let vel = log_uniform(self.velocity, rng);
        let vel_shift = rng.random_range(-self.velocity_shift..=self.velocity_shift);

        let mut out = Vec::with_capacity(notes.len());
        // (stretched onset, placed onset) of the previous note.
        let mut prev: Option<(i64, i64)> = None;
        for n in notes {
            let pitch = if n.instrument == DRUMS {
                n.pitch()
            } else {
                n.pitch() + shift
            };
            let stretched = (n.onset as f64 * tempo).round_ties_even() as i64;
            let onset = match prev {
                // The first note keeps its stretched onset (0 for a re-zeroed piece).
                None => stretched,
                // The stretched gap, capped: a shortened gap moves every later note earlier.
                Some((prev_stretched, prev_placed)) => {
                    prev_placed + (stretched - prev_stretched).clamp(0, limits.max_timeshift)
                }
            };
            prev = Some((stretched, onset));
            let duration = ((n.duration as f64 * tempo).round_ties_even() as i64)
                .clamp(1, limits.max_duration);
            let velocity =
                ((n.velocity as f64 * vel).round_ties_even() as i64 + vel_shift).clamp(1, 127);
            out.push(Note {
                onset,
                duration,
                octave: pitch.div_euclid(12),
                pitch_class: pitch.rem_euclid(12),
                instrument: n.instrument,
                velocity,
            });
        }
        out
    }

    fn pick_transposition<R: Rng + ?Sized>(&self, notes: &[Note], rng: &mut R) -> i64 {
        let t = i64::from(self.transpose);
        let pitches = notes
            .iter()
            .filter(|n| n.instrument != DRUMS)
            .map(Note::pitch);
        let (lo, hi) = pitches.fold((i64::MAX, i64::MIN), |(lo, hi), p| (lo.min(p), hi.max(p)));
        // Always draw, so the rng stream does not depend on whether the piece has melody.
        let (a, b) = if lo > hi {
            (0, 0)
        } else {
            (
                (PIANO_RANGE.start() - lo).max(-t),
                (PIANO_RANGE.end() - hi).min(t),
            )
        };
        if a > b {
            rng.random_range(0..=0)
        } else {
            rng.random_range(a..=b)
        }
    }
}

/// A factor drawn log-uniformly from `lo..=hi` (exactly `lo` when the range is one value).
fn log_uniform<R: Rng + ?Sized>((lo, hi): (f64, f64), rng: &mut R) -> f64 {
    if lo == hi {
        return lo;
    }
    rng.random_range(lo.ln()..=hi.ln()).exp()
}

// ---------------------------------------------------------------------------------------------
// 5. Windows
// ---------------------------------------------------------------------------------------------

/// The most notes one sample may hold in a context of `context_rows` rows (SOS and EOS
/// take the other two).
pub fn window_notes(context_rows: usize) -> usize {
    context_rows.saturating_sub(2)
}

/// Non-overlapping windows of at most `context_rows - 2` notes covering every note; see
/// [`windows_with`].
pub fn windows(notes: &[Note], context_rows: usize) -> Vec<Vec<Note>> {
    windows_with(notes, context_rows, window_notes(context_rows), 0)
}

/// Windows of `w = context_rows - 2` notes starting every `stride` notes (`stride < w`
/// overlaps), covering every note; see [`windows_with`].
pub fn windows_with_stride(notes: &[Note], context_rows: usize, stride: usize) -> Vec<Vec<Note>> {
    windows_with(notes, context_rows, stride, 0)
}

/// Cuts `notes` into windows of `w = context_rows - 2` notes, each re-zeroed to onset 0.
///
/// A piece of at most `w` notes is one window (empty input gives none). Otherwise windows
/// start at `phase, phase + stride, phase + 2·stride, …` while they end before the last note,
/// and a final window holds the last `w` notes (aligned to the end, so it may overlap the one
/// before it but is never a short leftover). `stride` is clamped to `1..=w`; with `phase = 0`
/// every note is in at least one window. A `phase > 0` leaves out the first `phase` notes (the
/// epoch's un-augmented copy covers them); [`Dataset::epoch_samples`] uses it to move the
/// window boundaries of augmented copies.
///
/// Panics if `context_rows < 3`.
pub fn windows_with(
    notes: &[Note],
    context_rows: usize,
    stride: usize,
    phase: usize,
) -> Vec<Vec<Note>> {
    assert!(
        context_rows >= 3,
        "context_rows {context_rows} cannot hold SOS, a note and EOS"
    );
    let w = window_notes(context_rows);
    let n = notes.len();
    if n == 0 {
        return Vec::new();
    }
    if n <= w {
        let mut one = notes.to_vec();
        rezero(&mut one);
        return vec![one];
    }
    let stride = stride.clamp(1, w);
    let mut starts = Vec::new();
    let mut s = phase;
    while s + w < n {
        starts.push(s);
        s += stride;
    }
    starts.push(n - w);
    starts
        .into_iter()
        .map(|s| {
            let mut win = notes[s..s + w].to_vec();
            rezero(&mut win);
            win
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 6. Packing
// ---------------------------------------------------------------------------------------------

/// One packed training sequence of exactly `context_rows` rows (spec §6.2).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Packed {
    /// `[SOS] + notes + [EOS]` of each sample, back to back, then `[0; 6]` padding rows.
    pub rows: Vec<Row>,
    /// The sample id of each row (0, 1, … in order); padding rows get `n_samples`, an id no
    /// sample has. Feed as `Mask::Packed` for block-diagonal causal attention.
    pub segments: Vec<u32>,
    /// `rows.len() - 1` entries: `loss_mask[t]` is true iff rows `t` and `t + 1` belong to the
    /// same sample, i.e. the prediction at position `t` (of row `t + 1`) is a real target.
    pub loss_mask: Vec<bool>,
    /// Samples in this sequence.
    pub n_samples: usize,
}

impl Packed {
    /// The padding rows' segment id.
    pub fn pad_id(&self) -> u32 {
        self.n_samples as u32
    }

    /// The row range of each sample, in order.
    pub fn sample_ranges(&self) -> Vec<std::ops::Range<usize>> {
        let mut out: Vec<std::ops::Range<usize>> = Vec::with_capacity(self.n_samples);
        for (i, &s) in self.segments.iter().enumerate() {
            if s == self.pad_id() {
                break;
            }
            if s as usize + 1 == out.len() {
                if let Some(r) = out.last_mut() {
                    r.end = i + 1;
                }
            } else {
                out.push(i..i + 1);
            }
        }
        out
    }

    /// The flat label ids (spec §1.4) of every row, computed per sample so that each sample's
    /// first timeshift is against onset 0; padding rows get `[0; 7]`. The target of the
    /// prediction at position `t` is `labels[t + 1]`, used where `loss_mask[t]`.
    pub fn labels(&self, cfg: &Config) -> Result<Vec<[u32; 7]>, DataError> {
        let mut out = vec![[0u32; 7]; self.rows.len()];
        for r in self.sample_ranges() {
            let l = labels(cfg, &self.rows[r.clone()]).map_err(|(i, reason)| DataError::Label {
                row: r.start + i,
                reason,
            })?;
            out[r].copy_from_slice(&l);
        }
        Ok(out)
    }
}

/// Packs samples into sequences of exactly `context_rows` rows. Each non-empty sample
/// becomes `[SOS] + notes + [EOS]`; samples are taken in order (shuffled first when
/// `shuffle_seed` is given) and added to the current sequence until the next one would
/// overflow it, which is then padded with `[0; 6]` rows and closed (the reference's greedy
/// `ConcatDataset_hybrid_padding_concatenating`). Empty samples are skipped. A sample longer
/// than `context_rows - 2` notes is an error: cut it with [`windows`] first.
pub fn pack(
    samples: &[Vec<Note>],
    context_rows: usize,
    shuffle_seed: Option<u64>,
) -> Result<Vec<Packed>, DataError> {
    if context_rows < 3 {
        return Err(DataError::ContextTooSmall(context_rows));
    }
    let mut order: Vec<usize> = (0..samples.len())
        .filter(|&i| !samples[i].is_empty())
        .collect();
    if let Some(&index) = order.iter().find(|&&i| samples[i].len() + 2 > context_rows) {
        return Err(DataError::SampleTooLong {
            index,
            rows: samples[index].len() + 2,
            context_rows,
        });
    }
    if let Some(seed) = shuffle_seed {
        order.shuffle(&mut StdRng::seed_from_u64(seed));
    }

    let mut out = Vec::new();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut used = 0;
    for i in order {
        let len = samples[i].len() + 2;
        if groups.is_empty() || used + len > context_rows {
            groups.push(Vec::new());
            used = 0;
        }
        groups.last_mut().expect("just pushed").push(i);
        used += len;
    }
    for group in groups {
        let mut rows = Vec::with_capacity(context_rows);
        let mut segments = Vec::with_capacity(context_rows);
        for (id, &i) in group.iter().enumerate() {
            let r = input_rows(&samples[i], true);
            segments.extend(std::iter::repeat_n(id as u32, r.len()));
            rows.extend(r);
        }
        let pad = group.len() as u32;
        segments.resize(context_rows, pad);
        rows.resize(context_rows, [0; 6]);
        let loss_mask = (0..context_rows - 1)
            .map(|t| segments[t] == segments[t + 1] && segments[t] != pad)
            .collect();
        out.push(Packed {
            rows,
            segments,
            loss_mask,
            n_samples: group.len(),
        });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// 7. The dataset
// ---------------------------------------------------------------------------------------------

/// Options of [`build_dataset`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DatasetOptions {
    /// Rows per packed sequence, SOS and EOS included (the training context length).
    pub context_rows: usize,
    /// Share of files held out for validation (by [`split_by_hash`]).
    pub val_fraction: f64,
    /// Seeds the split, the augmentation and the packing order.
    pub seed: u64,
    /// `None` trains on the original pieces only (`augment_copies` is then ignored).
    pub augment: Option<Augment>,
    /// Augmented variants of each training piece per epoch, besides the original.
    pub augment_copies: usize,
    /// Play every pitched note with this instrument (General MIDI program, drums untouched),
    /// e.g. `Some(0)` so a piano style does not learn the programs its files happen to carry.
    #[serde(default)]
    pub instrument: Option<i64>,
}

impl Default for DatasetOptions {
    fn default() -> Self {
        DatasetOptions {
            context_rows: 1024,
            val_fraction: 0.1,
            seed: 42,
            augment: Some(Augment::default()),
            augment_copies: 4,
            instrument: None,
        }
    }
}

/// How the files were split and how many samples that gives.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SplitReport {
    pub train_files: Vec<String>,
    pub val_files: Vec<String>,
    pub train_pieces: usize,
    pub val_pieces: usize,
    /// Windows of the original training pieces (one epoch's un-augmented samples).
    pub train_windows: usize,
    /// Training samples in epoch 0, augmented copies included.
    pub train_samples_per_epoch: usize,
    pub val_samples: usize,
}

/// Training and validation data, ready to be packed.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub train: Vec<Piece>,
    pub val: Vec<Piece>,
    /// The windows of the validation pieces: never augmented, the same every epoch.
    pub val_samples: Vec<Vec<Note>>,
    pub report: DataReport,
    pub split: SplitReport,
    pub options: DatasetOptions,
    cfg: Config,
}

/// Mixes values into one seed (SplitMix64 steps), for independent per-piece rngs.
fn mix(parts: &[u64]) -> u64 {
    parts.iter().fold(0x9e37_79b9_7f4a_7c15, |h, &p| {
        finalize(h ^ finalize(p.wrapping_add(0x9e37_79b9_7f4a_7c15)))
    })
}

const TAG_AUGMENT: u64 = 1;
const TAG_PACK: u64 = 2;

impl Dataset {
    /// The training samples of one epoch: for every training piece, its windows, then for each
    /// of the `augment_copies` copies an augmented variant windowed at a random phase. The
    /// result depends only on the data, the options (seed included) and `epoch`.
    pub fn epoch_samples(&self, epoch: u64) -> Vec<Vec<Note>> {
        let ctx = self.options.context_rows;
        let w = window_notes(ctx);
        let copies = if self.options.augment.is_some() {
            self.options.augment_copies
        } else {
            0
        };
        let mut out = Vec::new();
        for (p, piece) in self.train.iter().enumerate() {
            out.extend(windows(&piece.notes, ctx));
            if let Some(aug) = &self.options.augment {
                for c in 0..copies {
                    let mut rng = StdRng::seed_from_u64(mix(&[
                        self.options.seed,
                        TAG_AUGMENT,
                        epoch,
                        p as u64,
                        c as u64,
                    ]));
                    let notes = aug.apply(&piece.notes, &self.cfg, &mut rng);
                    let phase = rng.random_range(0..w);
                    out.extend(windows_with(&notes, ctx, w, phase));
                }
            }
        }
        out
    }

    /// [`Dataset::epoch_samples`] packed, in an order shuffled by seed and epoch.
    pub fn train_packs(&self, epoch: u64) -> Vec<Packed> {
        let seed = mix(&[self.options.seed, TAG_PACK, epoch]);
        pack(
            &self.epoch_samples(epoch),
            self.options.context_rows,
            Some(seed),
        )
        .expect("windows always fit the context")
    }

    /// The validation samples packed, in a fixed order.
    pub fn val_packs(&self) -> Vec<Packed> {
        pack(&self.val_samples, self.options.context_rows, None)
            .expect("windows always fit the context")
    }

    /// The config whose vocabulary limits the data respects.
    pub fn config(&self) -> &Config {
        &self.cfg
    }
}

/// Finds, loads, splits and windows the MIDI files under `dir` (see the module docs).
/// Fails when there is no MIDI file, no file gives a usable piece, or an option is invalid;
/// individual unreadable or too-short files are only reported.
pub fn build_dataset(
    dir: &Path,
    cfg: &Config,
    options: DatasetOptions,
) -> Result<Dataset, DataError> {
    if options.context_rows < 3 {
        return Err(DataError::ContextTooSmall(options.context_rows));
    }
    if !(0.0..=1.0).contains(&options.val_fraction) {
        return Err(DataError::Invalid(format!(
            "val_fraction {} is not in 0..=1",
            options.val_fraction
        )));
    }
    if let Some(a) = &options.augment {
        a.validate()?;
    }
    let files = find_midi_files(dir).map_err(|source| DataError::Io {
        path: dir.to_owned(),
        source,
    })?;
    if files.is_empty() {
        return Err(DataError::NoFiles(dir.to_owned()));
    }
    let (mut pieces, report) = load_pieces(&files, cfg);
    if let Some(program) = options.instrument {
        if !(0..128).contains(&program) {
            return Err(DataError::Invalid(format!(
                "instrument {program} is not a General MIDI program (0..=127)"
            )));
        }
        for note in pieces.iter_mut().flat_map(|p| p.notes.iter_mut()) {
            if note.instrument != 128 {
                note.instrument = program;
            }
        }
    }
    if pieces.is_empty() {
        return Err(DataError::NoPieces {
            dir: dir.to_owned(),
            files: files.len(),
            summary: report.to_string(),
        });
    }
    let (train, val) = split_by_hash(
        pieces,
        |p| relative_key(&p.source, dir),
        options.val_fraction,
        options.seed,
    );
    let file_list = |ps: &[Piece]| {
        let mut v: Vec<String> = ps.iter().map(|p| relative_key(&p.source, dir)).collect();
        v.dedup();
        v
    };
    let ctx = options.context_rows;
    let val_samples: Vec<Vec<Note>> = val.iter().flat_map(|p| windows(&p.notes, ctx)).collect();
    let split = SplitReport {
        train_files: file_list(&train),
        val_files: file_list(&val),
        train_pieces: train.len(),
        val_pieces: val.len(),
        train_windows: train.iter().map(|p| windows(&p.notes, ctx).len()).sum(),
        train_samples_per_epoch: 0,
        val_samples: val_samples.len(),
    };
    let mut ds = Dataset {
        train,
        val,
        val_samples,
        report,
        split,
        options,
        cfg: cfg.clone(),
    };
    ds.split.train_samples_per_epoch = ds.epoch_samples(0).len();
    Ok(ds)
}
