//! `continuo eval`: held-out loss per note and per attribute, statistics of generated
//! continuations against the held-out continuations, and the same for two baselines (a
//! unigram and a first-order Markov model over notes, fitted on a training split), and the
//! coherence of each continuation with the true continuation of its prompt (tempo, register,
//! key, dynamics and rhythm; see [`coherence`]) beside baselines that give each figure a scale.
//!
//! Losses are in nats per note: the sum over the six attributes of the negative log
//! probability of each attribute's value (the model's training loss times six). The
//! baselines factorise a note into its six attributes, each with add-one smoothing over the
//! attribute's vocabulary, so every loss is over the same events.

use candle_core::{Device, Tensor, D};
use serde::Serialize;

use crate::config::{Attribute, Config};
use crate::generate::{continue_notes, GenerateOptions, Sampling};
use crate::lora::Style;
use crate::model::forward::{Mask, Row};
use crate::model::Moonbeam;
use crate::note::Note;
use crate::vocab;

/// Per-attribute values of a note sequence as the model predicts them (timeshift first).
fn attribute_values(notes: &[Note]) -> Vec<[i64; 6]> {
    let mut prev = 0;
    notes
        .iter()
        .map(|n| {
            let ts = n.onset - prev;
            prev = n.onset;
            [
                ts,
                n.duration,
                n.octave,
                n.pitch_class,
                n.instrument,
                n.velocity,
            ]
        })
        .collect()
}

/// Held-out loss, in nats.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Loss {
    pub per_note: f64,
    /// Timeshift, duration, octave, pitch class, instrument, velocity.
    pub per_attribute: [f64; 6],
    pub notes: usize,
}

impl Loss {
    fn from_sums(sums: [f64; 6], notes: usize) -> Self {
        let n = notes.max(1) as f64;
        let per_attribute = sums.map(|s| s / n);
        Loss {
            per_note: per_attribute.iter().sum(),
            per_attribute,
            notes,
        }
    }
}

/// The model's teacher-forced loss over `samples` (each one `[SOS] + notes + [EOS]`);
/// the EOS prediction is counted as a note, as in training.
pub fn model_loss(model: &Moonbeam, style: &Style, samples: &[Vec<Note>]) -> anyhow::Result<Loss> {
    let mut sums = [0f64; 6];
    let mut notes = 0usize;
    for s in samples {
        let rows: Vec<Row> = vocab::input_rows(s, true);
        if rows.len() > model.cfg.max_len {
            anyhow::bail!(
                "a sample of {} rows exceeds the context of {}",
                rows.len(),
                model.cfg.max_len
            );
        }
        let labels = vocab::labels(&model.cfg, &rows)
            .map_err(|(r, why)| anyhow::anyhow!("row {r}: {why}"))?;
        let out = model.forward(&[&rows], Mask::Causal, style, None)?;
        let l = rows.len();
        let inputs: Vec<u32> = labels[1..].iter().flat_map(|r| r[0..6].to_vec()).collect();
        let targets: Vec<u32> = labels[1..].iter().flat_map(|r| r[1..7].to_vec()).collect();
        let inputs = Tensor::from_vec(inputs, (1, l - 1, 6), &Device::Cpu)?;
        let targets = Tensor::from_vec(targets, (1, l - 1, 6, 1), &Device::Cpu)?;
        let logits = model.gru_logits(&out.hidden, &inputs, style)?;
        let nll = candle_nn::ops::log_softmax(&logits, D::Minus1)?
            .gather(&targets, D::Minus1)?
            .neg()?;
        let per_attr = nll
            .squeeze(D::Minus1)?
            .squeeze(0)?
            .sum(0)?
            .to_vec1::<f32>()?;
        for a in 0..6 {
            sums[a] += per_attr[a] as f64;
        }
        notes += l - 1;
    }
    Ok(Loss::from_sums(sums, notes))
}

/// Factorised unigram and first-order Markov models over the six attributes.
#[derive(Debug, Clone)]
pub struct Baselines {
    vocab: [usize; 6],
    unigram: Vec<Vec<f64>>,
    /// `markov[a][prev][value]` counts; the previous value of the same attribute.
    markov: Vec<Vec<Vec<f64>>>,
}

/// Values outside a vocabulary are clamped to its regular range for the baselines.
fn clamp_value(cfg: &Config, a: usize, v: i64) -> usize {
    v.clamp(0, cfg.vocab[a] as i64 - 1) as usize
}

impl Baselines {
    pub fn fit(cfg: &Config, pieces: &[Vec<Note>]) -> Self {
        let vocab = cfg.vocab;
        let mut unigram: Vec<Vec<f64>> = vocab.iter().map(|&v| vec![0.0; v]).collect();
        let mut markov: Vec<Vec<Vec<f64>>> = vocab.iter().map(|&v| vec![vec![0.0; v]; v]).collect();
        for p in pieces {
            let values = attribute_values(p);
            for (i, row) in values.iter().enumerate() {
                for a in 0..6 {
                    let v = clamp_value(cfg, a, row[a]);
                    unigram[a][v] += 1.0;
                    if i > 0 {
                        markov[a][clamp_value(cfg, a, values[i - 1][a])][v] += 1.0;
                    }
                }
            }
        }
        Baselines {
            vocab,
            unigram,
            markov,
        }
    }

    fn unigram_p(&self, a: usize, v: usize) -> f64 {
        let total: f64 = self.unigram[a].iter().sum();
        (self.unigram[a][v] + 1.0) / (total + self.vocab[a] as f64)
    }

    /// Markov transition with add-one smoothing, backed off to the unigram.
    fn markov_p(&self, a: usize, prev: Option<usize>, v: usize) -> f64 {
        match prev {
            None => self.unigram_p(a, v),
            Some(p) => {
                let row = &self.markov[a][p];
                let total: f64 = row.iter().sum();
                // Interpolated: a row seen rarely leans on the unigram.
                let lambda = total / (total + 5.0);
                lambda * (row[v] + 0.1) / (total + 0.1 * self.vocab[a] as f64)
                    + (1.0 - lambda) * self.unigram_p(a, v)
            }
        }
    }

    pub fn loss(&self, cfg: &Config, samples: &[Vec<Note>], markov: bool) -> Loss {
        let mut sums = [0f64; 6];
        let mut notes = 0;
        for s in samples {
            let values = attribute_values(s);
            for (i, row) in values.iter().enumerate() {
                for a in 0..6 {
                    let v = clamp_value(cfg, a, row[a]);
                    let prev = (markov && i > 0).then(|| clamp_value(cfg, a, values[i - 1][a]));
                    sums[a] -= self.markov_p(a, prev, v).ln();
                }
                notes += 1;
            }
        }
        Loss::from_sums(sums, notes)
    }

    /// Samples a continuation of `n` notes after `prompt`.
    pub fn generate(
        &self,
        prompt: &[Note],
        n: usize,
        markov: bool,
        rng: &mut impl rand::Rng,
    ) -> Vec<Note> {
        let mut prev: Option<[usize; 6]> = prompt.last().map(|last| {
            let before = prompt.len().checked_sub(2).map_or(0, |i| prompt[i].onset);
            let v = [
                last.onset - before,
                last.duration,
                last.octave,
                last.pitch_class,
                last.instrument,
                last.velocity,
            ];
            std::array::from_fn(|a| v[a].clamp(0, self.vocab[a] as i64 - 1) as usize)
        });
        let mut onset = prompt.last().map_or(0, |n| n.onset);
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let mut v = [0usize; 6];
            for a in 0..6 {
                let regular = self.vocab[a] - 2; // never sample the SOS/EOS codes
                let p = if markov { prev.map(|p| p[a]) } else { None };
                let weights: Vec<f64> = (0..regular).map(|x| self.markov_p(a, p, x)).collect();
                let total: f64 = weights.iter().sum();
                let mut u = rng.random::<f64>() * total;
                v[a] = regular - 1;
                for (x, w) in weights.iter().enumerate() {
                    u -= w;
                    if u < 0.0 {
                        v[a] = x;
                        break;
                    }
                }
            }
            onset += v[0] as i64;
            out.push(Note {
                onset,
                duration: (v[1] as i64).max(1),
                octave: v[2] as i64,
                pitch_class: v[3] as i64,
                instrument: v[4] as i64,
                velocity: (v[5] as i64).max(1),
            });
            prev = Some(v);
        }
        out
    }
}

/// The seven statistics compared between generated and held-out continuations.
pub const STATISTICS: [&str; 7] = [
    "pitch_class",
    "interval",
    "inter_onset",
    "duration",
    "velocity",
    "polyphony",
    "notes_per_second",
];

/// Histograms of the seven statistics over a set of continuations.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub histograms: Vec<Vec<f64>>,
}

fn log_bin(ticks: i64, bins: usize) -> usize {
    // 0, 1, 2-3, 4-7, ... (10 ms ticks): bin k holds [2^(k-1), 2^k).
    let t = ticks.max(0) as u64;
    let b = if t == 0 {
        0
    } else {
        64 - t.leading_zeros() as usize
    };
    b.min(bins - 1)
}

impl Stats {
    pub fn of(continuations: &[Vec<Note>]) -> Self {
        let mut h: Vec<Vec<f64>> = vec![
            vec![0.0; 12],
            vec![0.0; 25],
            vec![0.0; 12],
            vec![0.0; 12],
            vec![0.0; 16],
            vec![0.0; 8],
            vec![0.0; 16],
        ];
        for c in continuations {
            let notes: Vec<&Note> = c
                .iter()
                .filter(|n| n.is_valid_midi() && n.instrument != 128)
                .collect();
            for n in &notes {
                h[0][n.pitch_class as usize] += 1.0;
                h[3][log_bin(n.duration, 12)] += 1.0;
                h[4][(n.velocity as usize / 8).min(15)] += 1.0;
                let sounding = notes
                    .iter()
                    .filter(|m| m.onset <= n.onset && m.onset + m.duration > n.onset)
                    .count();
                h[5][sounding.clamp(1, 8) - 1] += 1.0;
            }
            for w in notes.windows(2) {
                h[1][((w[1].pitch() - w[0].pitch()).clamp(-12, 12) + 12) as usize] += 1.0;
                h[2][log_bin(w[1].onset - w[0].onset, 12)] += 1.0;
            }
            if let (Some(first), Some(last)) = (notes.first(), notes.last()) {
                let span = (last.onset + last.duration - first.onset).max(1) as f64 / 100.0;
                h[6][((notes.len() as f64 / span).round() as usize).min(15)] += 1.0;
            }
        }
        Stats { histograms: h }
    }

    /// Total-variation distance (half the L1 distance of the normalised histograms) per statistic.
    pub fn distances(&self, other: &Stats) -> Vec<f64> {
        self.histograms
            .iter()
            .zip(&other.histograms)
            .map(|(a, b)| {
                let (sa, sb) = (
                    a.iter().sum::<f64>().max(1e-12),
                    b.iter().sum::<f64>().max(1e-12),
                );
                0.5 * a
                    .iter()
                    .zip(b)
                    .map(|(x, y)| (x / sa - y / sb).abs())
                    .sum::<f64>()
            })
            .collect()
    }
}

/// The six per-prompt coherence figures: how far a continuation is from the true one.
pub const COHERENCE: [&str; 6] = [
    "notes_per_second",
    "mean_pitch",
    "pitch_range",
    "pitch_class_profile",
    "mean_velocity",
    "inter_onset",
];

/// What a continuation sounds like, in the terms [`coherence`] compares. Drum notes
/// (instrument 128) and unplayable rows are left out.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// Notes after the first per second of the span from the first onset to the last
    /// (a continuation whose notes share one onset gets a span of one 10 ms tick).
    pub notes_per_second: f64,
    /// Mean MIDI key number.
    pub mean_pitch: f64,
    /// Semitones between the 10th and the 90th percentile key (robust to a stray note).
    pub pitch_range: f64,
    /// Share of the notes in each pitch class.
    pub pitch_classes: [f64; 12],
    pub mean_velocity: f64,
    /// Share of the onset-to-onset intervals in each doubling bin of 10 ms ticks (0, 1,
    /// 2-3, 4-7, ...), so chords (interval 0), runs and rests are told apart.
    pub inter_onset: [f64; 12],
}

impl Profile {
    /// `None` for fewer than two playable pitched notes, which have no tempo.
    pub fn of(notes: &[Note]) -> Option<Profile> {
        let mut notes: Vec<&Note> = notes
            .iter()
            .filter(|n| n.is_valid_midi() && n.instrument != 128)
            .collect();
        if notes.len() < 2 {
            return None;
        }
        notes.sort_by_key(|n| n.onset);
        let n = notes.len() as f64;
        let span = (notes[notes.len() - 1].onset - notes[0].onset).max(1) as f64 / 100.0;
        let mut pitches: Vec<i64> = notes.iter().map(|n| n.pitch()).collect();
        pitches.sort_unstable();
        let rank = |q: f64| pitches[((q * (pitches.len() - 1) as f64).round()) as usize];
        let mut pitch_classes = [0.0; 12];
        for x in &notes {
            pitch_classes[x.pitch_class as usize] += 1.0 / n;
        }
        let mut inter_onset = [0.0; 12];
        for w in notes.windows(2) {
            inter_onset[log_bin(w[1].onset - w[0].onset, 12)] += 1.0 / (n - 1.0);
        }
        Some(Profile {
            notes_per_second: (n - 1.0) / span,
            mean_pitch: pitches.iter().sum::<i64>() as f64 / n,
            pitch_range: (rank(0.9) - rank(0.1)) as f64,
            pitch_classes,
            mean_velocity: notes.iter().map(|x| x.velocity).sum::<i64>() as f64 / n,
            inter_onset,
        })
    }
}

fn total_variation(a: &[f64], b: &[f64]) -> f64 {
    0.5 * a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f64>()
}

/// The [`COHERENCE`] figures of a continuation against the true one, each 0 when they
/// agree: |ln| of the notes-per-second ratio; the absolute differences of mean pitch
/// (semitones), pitch range (semitones) and mean velocity; the total-variation distances
/// (0 to 1) of the pitch-class profiles and of the inter-onset-interval distributions.
pub fn coherence(generated: &Profile, truth: &Profile) -> [f64; 6] {
    [
        (generated.notes_per_second / truth.notes_per_second)
            .ln()
            .abs(),
        (generated.mean_pitch - truth.mean_pitch).abs(),
        (generated.pitch_range - truth.pitch_range).abs(),
        total_variation(&generated.pitch_classes, &truth.pitch_classes),
        (generated.mean_velocity - truth.mean_velocity).abs(),
        total_variation(&generated.inter_onset, &truth.inter_onset),
    ]
}

/// The median of each coherence figure over prompts.
#[derive(Debug, Clone, Serialize)]
pub struct CoherenceReport {
    pub name: String,
    /// In [`COHERENCE`] order; `NaN` (JSON `null`) when no prompt could be scored.
    pub medians: Vec<f64>,
    /// Prompts whose continuation had at least two playable notes, and so was scored.
    pub scored: usize,
    /// Prompts whose continuation had fewer (counted against the system, not hidden).
    pub unscored: usize,
    /// Share of all continuation notes that repeat an earlier note's key at the same onset
    /// (a piano cannot play them; greedy decoding collapses into them).
    pub stacked: f64,
}

/// Notes of `notes` that repeat an earlier note's key at the same onset.
pub fn stacked_notes(notes: &[Note]) -> usize {
    let mut seen = std::collections::HashSet::new();
    notes
        .iter()
        .filter(|n| !seen.insert((n.onset, n.pitch())))
        .count()
}

fn median(mut xs: Vec<f64>) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(f64::total_cmp);
    let m = xs.len() / 2;
    if xs.len() % 2 == 1 {
        xs[m]
    } else {
        0.5 * (xs[m - 1] + xs[m])
    }
}

impl CoherenceReport {
    /// Medians over prompts of `continuations[i]` against `truths[i]`. A prompt whose true
    /// continuation has no profile is skipped for every system alike.
    pub fn of(name: &str, continuations: &[Vec<Note>], truths: &[Option<Profile>]) -> Self {
        let mut per_figure: Vec<Vec<f64>> = vec![Vec::new(); 6];
        let (mut scored, mut unscored) = (0, 0);
        for (c, truth) in continuations.iter().zip(truths) {
            let Some(truth) = truth else { continue };
            match Profile::of(c) {
                Some(p) => {
                    scored += 1;
                    for (v, x) in per_figure.iter_mut().zip(coherence(&p, truth)) {
                        v.push(x);
                    }
                }
                None => unscored += 1,
            }
        }
        let total: usize = continuations.iter().map(Vec::len).sum();
        let stacked: usize = continuations.iter().map(|c| stacked_notes(c)).sum();
        CoherenceReport {
            name: name.into(),
            medians: per_figure.into_iter().map(median).collect(),
            scored,
            unscored,
            stacked: stacked as f64 / total.max(1) as f64,
        }
    }

    /// On how many figures this system's median is strictly below `other`'s.
    pub fn wins_over(&self, other: &CoherenceReport) -> usize {
        self.medians
            .iter()
            .zip(&other.medians)
            .filter(|(a, b)| a < b)
            .count()
    }
}

/// The "repeat the prompt's last bar" baseline: the prompt's notes whose onsets fall in its
/// last `bar_ticks` (up to and including the last onset), played again and again, one bar
/// later each time, until there are `n` notes.
pub fn repeat_last_bar(prompt: &[Note], n: usize, bar_ticks: i64) -> Vec<Note> {
    let bar_ticks = bar_ticks.max(1);
    let Some(last) = prompt.iter().map(|x| x.onset).max() else {
        return Vec::new();
    };
    let mut bar: Vec<Note> = prompt
        .iter()
        .filter(|x| x.onset > last - bar_ticks)
        .copied()
        .collect();
    bar.sort_by_key(|x| x.onset);
    let mut out = Vec::with_capacity(n);
    for k in 1.. {
        for x in &bar {
            if out.len() == n {
                return out;
            }
            out.push(Note {
                onset: x.onset + k * bar_ticks,
                ..*x
            });
        }
    }
    out
}

/// The bar of [`repeat_last_bar`] in `continuo eval`: two seconds, a 4/4 bar at 120 BPM
/// (the tokens carry no metre).
pub const BASELINE_BAR_TICKS: i64 = 200;

/// The result for one system (the model, or a baseline).
#[derive(Debug, Clone, Serialize)]
pub struct SystemReport {
    pub name: String,
    pub loss: Loss,
    /// Distance per statistic (in [`STATISTICS`] order) between its continuations and the held-out ones.
    pub distances: Vec<f64>,
    pub generated_notes: usize,
    pub valid_notes: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub statistics: Vec<&'static str>,
    pub systems: Vec<SystemReport>,
    pub coherence_figures: Vec<&'static str>,
    /// The model and the baselines against each prompt's true continuation: the model,
    /// `markov`, `unigram`, `repeat_last_bar` and `other_continuation` (the true
    /// continuation of the next prompt, which sets the scale of "unrelated music").
    pub coherence: Vec<CoherenceReport>,
    pub prompts: usize,
    pub prompt_notes: usize,
    pub continuation_notes: usize,
    pub ms_per_generated_note: f64,
}

/// Options of [`evaluate`].
#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub prompt_notes: usize,
    pub continuation_notes: usize,
    pub sampling: Sampling,
    /// See [`GenerateOptions::allow_stacked`].
    pub allow_stacked: bool,
    /// See [`GenerateOptions::endless`].
    pub endless: bool,
    /// At most this many prompts: see [`prompt_windows`].
    pub max_prompts: usize,
    pub seed: u64,
}

/// Up to `max` windows of `need` notes for prompts and their continuations: the first window
/// of every piece long enough, then the second window of each, and so on (windows of a
/// piece do not overlap), so a held-out set of few long pieces still gives `max` prompts
/// while a set of many pieces gives one per piece.
pub fn prompt_windows(pieces: &[Vec<Note>], need: usize, max: usize) -> Vec<&[Note]> {
    let mut windows = Vec::new();
    if need == 0 {
        return windows;
    }
    let longest = pieces.iter().map(Vec::len).max().unwrap_or(0);
    for w in 0..longest / need {
        for piece in pieces {
            if windows.len() >= max {
                return windows;
            }
            if piece.len() >= (w + 1) * need {
                windows.push(&piece[w * need..(w + 1) * need]);
            }
        }
    }
    windows
}

/// Evaluates `model` (with `style`) on held-out `samples` (windows for the loss) and `pieces`
/// (whole pieces for continuations), against baselines fitted on `train`.
pub fn evaluate(
    model: &Moonbeam,
    style: &Style,
    samples: &[Vec<Note>],
    pieces: &[Vec<Note>],
    train: &[Vec<Note>],
    opts: &EvalOptions,
) -> anyhow::Result<EvalReport> {
    use rand::SeedableRng;
    let cfg = &model.cfg;
    let baselines = Baselines::fit(cfg, train);
    let need = opts.prompt_notes + opts.continuation_notes;
    let mut prompts = Vec::new();
    let mut references = Vec::new();
    for window in prompt_windows(pieces, need, opts.max_prompts) {
        let start = window[0].onset;
        let rezeroed: Vec<Note> = window
            .iter()
            .map(|n| Note {
                onset: n.onset - start,
                ..*n
            })
            .collect();
        prompts.push(rezeroed[..opts.prompt_notes].to_vec());
        references.push(rezeroed[opts.prompt_notes..].to_vec());
    }
    if prompts.is_empty() {
        anyhow::bail!("no held-out piece has {need} notes for a prompt and its continuation");
    }
    let reference = Stats::of(&references);
    let mut systems = Vec::new();
    let gen_opts = GenerateOptions {
        max_notes: opts.continuation_notes,
        max_duration_ticks: None,
        sampling: opts.sampling,
        allow_stacked: opts.allow_stacked,
        endless: opts.endless,
    };
    let mut generated = Vec::new();
    let (mut total, mut valid) = (0, 0);
    let t = std::time::Instant::now();
    // Drawn on a terminal only (indicatif hides it otherwise).
    let bar = indicatif::ProgressBar::new(prompts.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("continuations [{bar:30}] {pos}/{len} ETA {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    for (i, prompt) in prompts.iter().enumerate() {
        let mut o = gen_opts.clone();
        if let Sampling::TopP {
            temperature,
            top_p,
            seed,
        } = o.sampling
        {
            o.sampling = Sampling::TopP {
                temperature,
                top_p,
                seed: seed.wrapping_add(i as u64),
            };
        }
        let g = continue_notes(model, style, prompt, &o, |_, _| {})?;
        total += g.rows.len();
        valid += g.rows.len() - g.invalid.len();
        generated.push(g.valid_notes());
        bar.inc(1);
    }
    bar.finish_and_clear();
    let ms_per_note = t.elapsed().as_secs_f64() * 1e3 / total.max(1) as f64;
    let truths: Vec<Option<Profile>> = references.iter().map(|r| Profile::of(r)).collect();
    let mut coherence = vec![CoherenceReport::of("model", &generated, &truths)];
    systems.push(SystemReport {
        name: "model".into(),
        loss: model_loss(model, style, samples)?,
        distances: Stats::of(&generated).distances(&reference),
        generated_notes: total,
        valid_notes: valid,
    });
    for (name, markov) in [("markov", true), ("unigram", false)] {
        let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed);
        let conts: Vec<Vec<Note>> = prompts
            .iter()
            .map(|p| baselines.generate(p, opts.continuation_notes, markov, &mut rng))
            .collect();
        let n: usize = conts.iter().map(Vec::len).sum();
        let v: usize = conts.iter().flatten().filter(|x| x.is_valid_midi()).count();
        coherence.push(CoherenceReport::of(name, &conts, &truths));
        systems.push(SystemReport {
            name: name.into(),
            loss: baselines.loss(cfg, samples, markov),
            distances: Stats::of(&conts).distances(&reference),
            generated_notes: n,
            valid_notes: v,
        });
    }
    let repeats: Vec<Vec<Note>> = prompts
        .iter()
        .map(|p| repeat_last_bar(p, opts.continuation_notes, BASELINE_BAR_TICKS))
        .collect();
    coherence.push(CoherenceReport::of("repeat_last_bar", &repeats, &truths));
    let others: Vec<Vec<Note>> = (0..references.len())
        .map(|i| references[(i + 1) % references.len()].clone())
        .collect();
    coherence.push(CoherenceReport::of("other_continuation", &others, &truths));
    Ok(EvalReport {
        statistics: STATISTICS.to_vec(),
        systems,
        coherence_figures: COHERENCE.to_vec(),
        coherence,
        prompts: prompts.len(),
        prompt_notes: opts.prompt_notes,
        continuation_notes: opts.continuation_notes,
        ms_per_generated_note: ms_per_note,
    })
}

impl EvalReport {
    /// A plain-text table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        s += &format!("{:<10} {:>10}", "system", "loss/note");
        for a in Attribute::ALL {
            s += &format!(" {:>11}", a.name());
        }
        s += "\n";
        for sys in &self.systems {
            s += &format!("{:<10} {:>10.4}", sys.name, sys.loss.per_note);
            for v in sys.loss.per_attribute {
                s += &format!(" {v:>11.4}");
            }
            s += "\n";
        }
        s += &format!("\ndistance to the held-out continuations (total variation, lower is closer; {} prompts)\n", self.prompts);
        s += &format!("{:<10}", "system");
        for st in STATISTICS {
            s += &format!(" {st:>16}");
        }
        s += &format!(" {:>8}\n", "valid");
        for sys in &self.systems {
            s += &format!("{:<10}", sys.name);
            for d in &sys.distances {
                s += &format!(" {d:>16.4}");
            }
            s += &format!(
                " {:>7.1}%\n",
                100.0 * sys.valid_notes as f64 / sys.generated_notes.max(1) as f64
            );
        }
        s += "\ncoherence with each prompt's true continuation (median over prompts, lower is closer)\n";
        s += &format!(
            "{:<18} {:>9} {:>10} {:>11} {:>11} {:>13} {:>11} {:>7} {:>8}\n",
            "system",
            "|ln nps|",
            "mean pitch",
            "pitch range",
            "pitch class",
            "mean velocity",
            "inter-onset",
            "scored",
            "stacked"
        );
        for c in &self.coherence {
            s += &format!("{:<18}", c.name);
            for (m, w) in c.medians.iter().zip([9, 10, 11, 11, 13, 11]) {
                s += &format!(" {m:>w$.3}");
            }
            s += &format!(
                " {:>3}/{:<3} {:>7.1}%\n",
                c.scored,
                c.scored + c.unscored,
                100.0 * c.stacked
            );
        }
        if let (Some(model), Some(markov)) = (
            self.coherence.iter().find(|c| c.name == "model"),
            self.coherence.iter().find(|c| c.name == "markov"),
        ) {
            s += &format!(
                "the model is closer than the Markov chain on {} of 6 figures\n",
                model.wins_over(markov)
            );
        }
        s
    }
}
