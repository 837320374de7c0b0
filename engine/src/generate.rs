//! Sampling and the prompt-to-continuation loop (spec §5).
//!
//! [`Session`] owns the per-conversation state (KV cache and scratch buffers) so a
//! caller such as the plugin's inference thread can keep a warm cache between answers;
//! [`continue_notes`] is the reference's whole `generate` call on top of it.

use std::ops::{Deref, Range};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use crate::error::ModelError;
use crate::lora::Style;
use crate::model::decode::{DecodeScratch, KvCache};
use crate::model::forward::Row;
use crate::model::gru::{Chooser, GruScratch};
use crate::model::Moonbeam;
use crate::note::Note;
use crate::vocab::SOS_ROW;

/// How each attribute's token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// Argmax inside the attribute's allowed range (the reference's `temperature == 0` branch).
    Greedy,
    /// Temperature and top-p over the full vocabulary, restricted to the allowed range.
    TopP {
        temperature: f32,
        top_p: f32,
        seed: u64,
    },
}

impl Sampling {
    pub fn chooser(&self) -> Box<dyn Chooser + Send> {
        match *self {
            Sampling::Greedy => Box::new(Greedy),
            Sampling::TopP {
                temperature,
                top_p,
                seed,
            } => Box::new(TopP::new(temperature, top_p, seed)),
        }
    }
}

/// Argmax over the allowed slice; the first maximum wins, as `torch.argmax`.
pub struct Greedy;

impl Chooser for Greedy {
    fn full_vocab(&self) -> bool {
        false
    }

    fn choose(&mut self, _attr: usize, _allowed: Range<usize>, logits: &[f32]) -> usize {
        argmax(logits)
    }
}

fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] || (x[best].is_nan() && !v.is_nan()) {
            best = i;
        }
    }
    best
}

/// The closed form of the reference's rejection loop (spec §5.2): sample from
/// `top_p(softmax(logits / T))` over the full vocabulary, restricted to the allowed
/// range and renormalised. When the restriction has no mass, the reference's fallback
/// applies: `top_p(softmax(p restricted to allowed))`.
pub struct TopP {
    temperature: f32,
    top_p: f32,
    rng: rand::rngs::StdRng,
    probs: Vec<f32>,
    order: Vec<u32>,
}

impl TopP {
    pub fn new(temperature: f32, top_p: f32, seed: u64) -> Self {
        TopP {
            temperature: temperature.max(1e-6),
            top_p: top_p.clamp(0.0, 1.0),
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            probs: Vec::new(),
            order: Vec::new(),
        }
    }

    /// Zeroes the tail of `probs` outside the top-p nucleus: a token is kept when the mass
    /// of the tokens ranked before it is at most `top_p` (`(cumsum - p) <= P`). Tokens are
    /// ranked by probability, then index.
    ///
    /// The nucleus is usually a few dozen tokens of a few thousand, so instead of sorting the
    /// whole vocabulary this selects the best `k` (linear time), sorts only those, and grows
    /// `k` until the nucleus ends inside them. The ranks, and so the sums, are the same as a
    /// full sort's.
    fn truncate(probs: &mut [f32], order: &mut Vec<u32>, top_p: f32) {
        let n = probs.len();
        order.clear();
        order.extend(0..n as u32);
        let rank = |a: &u32, b: &u32| {
            probs[*b as usize]
                .total_cmp(&probs[*a as usize])
                .then(a.cmp(b))
        };
        let mut k = n.min(64);
        let kept = loop {
            if k < n {
                order.select_nth_unstable_by(k - 1, rank);
            }
            order[..k].sort_unstable_by(rank);
            let mut before = 0.0f32;
            let cut = order[..k].iter().position(|&i| {
                let outside = before > top_p;
                before += probs[i as usize];
                outside
            });
            match cut {
                Some(cut) => break cut,
                None if k == n => break n,
                None => k = (k * 4).min(n),
            }
        };
        for &i in &order[kept..] {
            probs[i as usize] = 0.0;
        }
    }

    fn sample(&mut self, weights: &[f32]) -> Option<usize> {
        let total: f64 = weights.iter().map(|&w| w as f64).sum();
        // `is_finite` is false for NaN too.
        if !total.is_finite() || total <= 0.0 {
            return None;
        }
        let mut u = self.rng.random::<f64>() * total;
        for (i, &w) in weights.iter().enumerate() {
            u -= w as f64;
            if u < 0.0 && w > 0.0 {
                return Some(i);
            }
        }
        weights.iter().rposition(|&w| w > 0.0)
    }
}

impl Chooser for TopP {
    fn full_vocab(&self) -> bool {
        true
    }

    fn choose(&mut self, _attr: usize, allowed: Range<usize>, logits: &[f32]) -> usize {
        self.probs.clear();
        self.probs
            .extend(logits.iter().map(|&l| l / self.temperature));
        crate::kernels::softmax_in_place(&mut self.probs);
        let mut probs = std::mem::take(&mut self.probs);
        let mut order = std::mem::take(&mut self.order);
        Self::truncate(&mut probs, &mut order, self.top_p);
        let pick = match self.sample(&probs[allowed.clone()]) {
            Some(i) => i,
            None => {
                // Fallback: softmax of the probabilities themselves over the allowed range.
                let mut q: Vec<f32> = logits[allowed.clone()]
                    .iter()
                    .map(|&l| l / self.temperature)
                    .collect();
                crate::kernels::softmax_in_place(&mut q);
                let mut full_q = q.clone();
                crate::kernels::softmax_in_place(&mut full_q);
                Self::truncate(&mut full_q, &mut order, self.top_p);
                self.sample(&full_q).unwrap_or_else(|| argmax(&q))
            }
        };
        self.probs = probs;
        self.order = order;
        pick
    }
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The model produced an EOS code in some attribute.
    Eos,
    /// The requested number of notes was generated.
    MaxNotes,
    /// The next note would start after the requested duration.
    MaxDuration,
    /// The model's context (`max_len`, SOS included) is full.
    ContextFull,
}

/// Time spent on one generated note.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoteTiming {
    /// The transformer step that fed the previous note (zero for the first note, which follows the prefill).
    pub transformer: Duration,
    /// The GRU head's six steps.
    pub head: Duration,
}

/// One conversation with the model: a warm KV cache and its scratch buffers.
///
/// `M` is how the session holds its model: `&Moonbeam` for a session that lives inside one
/// call, `Arc<Moonbeam>` (the default) for one that is kept, as the plugin keeps its warm
/// session next to the model it runs.
pub struct Session<M: Deref<Target = Moonbeam> = Arc<Moonbeam>> {
    model: M,
    cache: KvCache,
    scratch: DecodeScratch,
    gru: GruScratch,
    rows: Vec<Row>,
    style: Style,
    /// Scratch of [`Session::next_values_unstacked`]: the keys at the last onset, and logits.
    struck: Vec<i64>,
    masked: Vec<f32>,
}

impl<M: Deref<Target = Moonbeam>> Session<M> {
    /// A session whose context holds at most `capacity` rows (SOS included).
    pub fn new(model: M, capacity: usize) -> Self {
        let capacity = capacity.max(2);
        Session {
            cache: KvCache::new(&model, capacity),
            scratch: DecodeScratch::new(&model, capacity),
            gru: GruScratch::new(&model),
            rows: Vec::with_capacity(capacity),
            style: Style::base(),
            // Every row of the context could share one onset: no reallocation while decoding.
            struck: Vec::with_capacity(capacity),
            masked: Vec::with_capacity(model.cfg.decode_vocab_size),
            model,
        }
    }

    /// The model, as the session holds it (e.g. the `Arc` it shares).
    pub fn model(&self) -> &M {
        &self.model
    }

    /// The rows in the context, SOS first.
    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    pub fn capacity(&self) -> usize {
        self.cache.capacity()
    }

    /// Swaps the active style. O(1): the base weights are untouched. The cached keys and
    /// values of the context were computed under the previous style and are kept, so
    /// the new style shapes what comes next without re-reading the context.
    pub fn set_style(&mut self, style: Style) -> Style {
        std::mem::replace(&mut self.style, style)
    }

    pub fn style(&self) -> &Style {
        &self.style
    }

    /// Replaces the context by `[SOS] + notes` with one batched pass.
    pub fn prefill(&mut self, notes: &[Note]) -> Result<(), ModelError> {
        let mut rows = Vec::with_capacity(notes.len() + 1);
        rows.push(SOS_ROW);
        rows.extend(notes.iter().map(|n| n.to_row()));
        self.model
            .prefill(&rows, &mut self.cache, &mut self.scratch, &self.style)?;
        self.rows = rows;
        Ok(())
    }

    /// Appends one row to the context (a single-token step).
    pub fn push(&mut self, row: Row) -> Result<(), ModelError> {
        if self.rows.is_empty() && row != SOS_ROW {
            self.model
                .step(&SOS_ROW, &mut self.cache, &mut self.scratch, &self.style)?;
            self.rows.push(SOS_ROW);
        }
        self.model
            .step(&row, &mut self.cache, &mut self.scratch, &self.style)?;
        self.rows.push(row);
        Ok(())
    }

    /// Appends several rows to the context in one batched pass ([`Moonbeam::extend`]): the
    /// same state as [`Session::push`] on each in turn, with every weight read once.
    pub fn extend(&mut self, rows: &[Row]) -> Result<(), ModelError> {
        let mut batch = Vec::with_capacity(rows.len() + 1);
        if self.rows.is_empty() && rows.first().is_some_and(|r| *r != SOS_ROW) {
            batch.push(SOS_ROW);
        }
        batch.extend_from_slice(rows);
        self.model
            .extend(&batch, &mut self.cache, &mut self.scratch, &self.style)?;
        self.rows.extend(batch);
        Ok(())
    }

    /// Keeps only the first `len` rows of the context (SOS included), e.g. to drop an answer
    /// and go back to the played notes without a new prefill. The cached keys and values of
    /// the rows kept are still valid (attention is causal); the last kept row is stepped
    /// once more to restore its hidden state, so this costs one single-token step.
    /// `len == 0` empties the session.
    pub fn truncate(&mut self, len: usize) -> Result<(), ModelError> {
        if len >= self.rows.len() {
            return Ok(());
        }
        if len == 0 {
            self.cache.clear();
            self.rows.clear();
            return Ok(());
        }
        let last = self.rows[len - 1];
        self.cache.truncate(len - 1);
        self.rows.truncate(len - 1);
        match self
            .model
            .step(&last, &mut self.cache, &mut self.scratch, &self.style)
        {
            Ok(()) => {
                self.rows.push(last);
                Ok(())
            }
            Err(e) => {
                // Keep the session consistent: the rows before the failed one are cached.
                Err(e)
            }
        }
    }

    /// Decodes the six attribute values that follow the context.
    pub fn next_values(&mut self, chooser: &mut dyn Chooser) -> Result<[i64; 6], ModelError> {
        if self.rows.is_empty() {
            return Err(ModelError::EmptyPrompt);
        }
        Ok(self
            .model
            .decode_note(&self.scratch.hidden, &mut self.gru, chooser, &self.style)?)
    }

    /// [`Session::next_values`] for a note that cannot strike a key already struck at its onset:
    /// when the note lands on the last row's onset (timeshift 0), the pitch classes that would
    /// repeat a key of a row at that onset (any instrument) are taken out of the choice, unless
    /// that leaves none; and once [`MAX_STRUCK_AT_ONCE`] rows start at that onset, a timeshift
    /// of 0 is taken out too. A piano key cannot be struck twice at one instant, and a model that
    /// decodes greedily would otherwise repeat one row again and again (greedy collapse).
    /// Whenever the unguarded choice stacks nothing, the result is the same as
    /// [`Session::next_values`]'s, random draws included.
    pub fn next_values_unstacked(
        &mut self,
        chooser: &mut dyn Chooser,
    ) -> Result<[i64; 6], ModelError> {
        self.next_values_guarded(chooser, false)
    }

    /// [`Session::next_values_unstacked`] for an answer whose length the caller sets, such as
    /// the plugin's answer of so many bars: the piece never ends there. The end-of-piece (EOS)
    /// and start (SOS) codes are taken out of every attribute's choice, so the note is always
    /// a note. (A style trained on short tunes learns to end early, and would otherwise answer
    /// a player with silence.)
    pub fn next_values_endless(
        &mut self,
        chooser: &mut dyn Chooser,
    ) -> Result<[i64; 6], ModelError> {
        self.next_values_guarded(chooser, true)
    }

    fn next_values_guarded(
        &mut self,
        chooser: &mut dyn Chooser,
        endless: bool,
    ) -> Result<[i64; 6], ModelError> {
        if self.rows.is_empty() {
            return Err(ModelError::EmptyPrompt);
        }
        self.struck.clear();
        let last_onset = self.rows[self.rows.len() - 1][0];
        for row in self.rows.iter().rev() {
            if *row == SOS_ROW || row[0] != last_onset {
                break;
            }
            self.struck.push(row[2] * 12 + row[3]);
        }
        let mut guarded = Unstacked {
            inner: chooser,
            struck: &self.struck,
            masked: &mut self.masked,
            endless,
            timeshift: 0,
            octave: 0,
        };
        Ok(self.model.decode_note(
            &self.scratch.hidden,
            &mut self.gru,
            &mut guarded,
            &self.style,
        )?)
    }

    /// Final normed hidden state of the last row in the context.
    pub fn last_hidden(&self) -> &[f32] {
        &self.scratch.hidden
    }
}

/// At most this many notes start at one onset in a note decoded by
/// [`Session::next_values_unstacked`]: two hands' worth.
pub const MAX_STRUCK_AT_ONCE: usize = 10;

/// The chooser of [`Session::next_values_unstacked`]: it remembers the timeshift and octave
/// chosen for this note and masks the pitch classes of `struck` keys when the timeshift is 0;
/// `endless`, it also masks every attribute's SOS and EOS codes (its last two ids).
struct Unstacked<'a> {
    inner: &'a mut dyn Chooser,
    struck: &'a [i64],
    masked: &'a mut Vec<f32>,
    endless: bool,
    timeshift: usize,
    octave: usize,
}

impl Chooser for Unstacked<'_> {
    fn full_vocab(&self) -> bool {
        self.inner.full_vocab()
    }

    fn choose(&mut self, attr: usize, allowed: Range<usize>, logits: &[f32]) -> usize {
        // The SOS and EOS codes are the last two of every attribute (V - 2, V - 1).
        let n = allowed.len();
        let end = if self.endless && n > 2 {
            n - 2..n
        } else {
            n..n
        };
        // Attributes in decoding order: timeshift, duration, octave, pitch class, ...
        if attr == 0 && self.struck.len() >= MAX_STRUCK_AT_ONCE && n - end.len() > 1 {
            // Ten notes already start at this onset: this one starts later.
            let choice = self.choose_without(attr, allowed, logits, end.chain([0]));
            self.timeshift = choice;
            return choice;
        }
        if attr == 3 && self.timeshift == 0 && !self.struck.is_empty() {
            // Counted, then masked, without allocating: this runs for every decoded note.
            let (struck, octave) = (self.struck, self.octave as i64);
            let blocked = move |pc: &usize| struck.contains(&(octave * 12 + *pc as i64));
            let pitch_classes = 0..12.min(n - end.len());
            let n_blocked = pitch_classes.clone().filter(blocked).count();
            if n_blocked > 0 && n_blocked < 12 {
                let blocked = pitch_classes.filter(blocked).chain(end);
                return self.choose_without(attr, allowed, logits, blocked);
            }
        }
        let choice = if end.is_empty() {
            self.inner.choose(attr, allowed, logits)
        } else {
            self.choose_without(attr, allowed, logits, end)
        };
        match attr {
            0 => self.timeshift = choice,
            2 => self.octave = choice,
            _ => {}
        }
        choice
    }
}

impl Unstacked<'_> {
    /// The inner chooser's pick with the ids `blocked` (relative to `allowed.start`) ruled out.
    fn choose_without(
        &mut self,
        attr: usize,
        allowed: Range<usize>,
        logits: &[f32],
        blocked: impl IntoIterator<Item = usize>,
    ) -> usize {
        // The logits are the whole vocabulary or only the allowed slice (`Chooser::choose`).
        let base = if self.inner.full_vocab() {
            allowed.start
        } else {
            0
        };
        self.masked.clear();
        self.masked.extend_from_slice(logits);
        for id in blocked {
            self.masked[base + id] = f32::NEG_INFINITY;
        }
        self.inner.choose(attr, allowed, self.masked)
    }
}

/// Options for [`continue_notes`].
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_notes: usize,
    /// Stop before a note whose onset is more than this many 10 ms ticks after the last prompt onset.
    pub max_duration_ticks: Option<i64>,
    pub sampling: Sampling,
    /// Let a note strike a key already struck at its onset, as the reference does. Off, every
    /// note is decoded by [`Session::next_values_unstacked`].
    pub allow_stacked: bool,
    /// Never end the piece: every note is decoded by [`Session::next_values_endless`] (which
    /// implies the stacked-note guard), so only `max_notes`, `max_duration_ticks` or the
    /// context end the continuation.
    pub endless: bool,
}

/// A continuation.
#[derive(Debug, Clone)]
pub struct Generation {
    /// Every generated row in model order, including rows that are not playable MIDI.
    pub rows: Vec<Note>,
    /// Indices into `rows` of rows that are not valid MIDI (kept in the model's context,
    /// never written to MIDI).
    pub invalid: Vec<usize>,
    pub stop: StopReason,
    pub prefill: Duration,
    pub timings: Vec<NoteTiming>,
}

impl Generation {
    /// The playable notes: generated rows that are valid MIDI.
    pub fn valid_notes(&self) -> Vec<Note> {
        self.rows
            .iter()
            .copied()
            .filter(Note::is_valid_midi)
            .collect()
    }
}

/// Continues `prompt` (absolute onsets, in order) as the reference's `MusicLlama.generate` does
/// for one sample, calling `on_note` as each row is produced.
///
/// Differences from the reference, all on paths where it crashes or produces unplayable output:
/// - an EOS code in any attribute ends the piece and that row is not returned;
/// - rows holding SOS codes or pitches above 127 stay in the model's context (so greedy
///   sequences match the reference) but are listed in [`Generation::invalid`];
/// - with an empty prompt the first onset is the timeshift itself (the reference computes `-1 + ts`).
pub fn continue_notes(
    model: &Moonbeam,
    style: &Style,
    prompt: &[Note],
    opts: &GenerateOptions,
    mut on_note: impl FnMut(&Note, bool),
) -> Result<Generation, ModelError> {
    let cfg = &model.cfg;
    let prompt_rows = prompt.len() + 1;
    if prompt_rows >= cfg.max_len {
        return Err(ModelError::TooLong {
            len: prompt_rows + 1,
            max: cfg.max_len,
        });
    }
    let max_new = opts.max_notes.min(cfg.max_len - prompt_rows);
    let mut session = Session::new(model, prompt_rows + max_new);
    session.set_style(style.clone());
    let start = Instant::now();
    session.prefill(prompt)?;
    let prefill = start.elapsed();
    let mut chooser = opts.sampling.chooser();
    let last_prompt_onset = prompt.last().map_or(0, |n| n.onset);
    let mut prev_onset = last_prompt_onset;
    let stop = if max_new < opts.max_notes {
        StopReason::ContextFull
    } else {
        StopReason::MaxNotes
    };
    let mut out = Generation {
        rows: Vec::new(),
        invalid: Vec::new(),
        stop,
        prefill,
        timings: Vec::new(),
    };
    for i in 0..max_new {
        let mut transformer = Duration::ZERO;
        if i > 0 {
            let t = Instant::now();
            session.push(out.rows[i - 1].to_row())?;
            transformer = t.elapsed();
        }
        let t = Instant::now();
        let values = if opts.endless {
            session.next_values_endless(chooser.as_mut())?
        } else if opts.allow_stacked {
            session.next_values(chooser.as_mut())?
        } else {
            session.next_values_unstacked(chooser.as_mut())?
        };
        out.timings.push(NoteTiming {
            transformer,
            head: t.elapsed(),
        });
        if cfg.is_eos(&values) {
            out.stop = StopReason::Eos;
            break;
        }
        let note = Note::from_decoded(prev_onset, values);
        let onset = note.onset;
        if let Some(max) = opts.max_duration_ticks {
            if onset - last_prompt_onset > max {
                out.stop = StopReason::MaxDuration;
                break;
            }
        }
        let valid = note.is_valid_midi();
        if !valid {
            out.invalid.push(out.rows.len());
        }
        on_note(&note, valid);
        out.rows.push(note);
        prev_onset = onset;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The nucleus by a full sort, as the reference computes it.
    fn truncate_by_full_sort(probs: &mut [f32], top_p: f32) {
        let mut order: Vec<u32> = (0..probs.len() as u32).collect();
        order.sort_by(|&a, &b| {
            probs[b as usize]
                .total_cmp(&probs[a as usize])
                .then(a.cmp(&b))
        });
        let mut before = 0.0f32;
        for &i in &order {
            let p = probs[i as usize];
            if before > top_p {
                probs[i as usize] = 0.0;
            }
            before += p;
        }
    }

    /// Selecting the nucleus gives exactly the full sort's result, for peaked and flat
    /// distributions, ties, tiny and vocabulary-sized inputs, and every `top_p` edge.
    #[test]
    fn selected_nucleus_equals_the_full_sort() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut order = Vec::new();
        for trial in 0..400 {
            let n = [1, 2, 5, 63, 64, 65, 300, 2341][trial % 8];
            let sharpness = [0.1f32, 1.0, 4.0, 12.0][trial / 8 % 4];
            let mut logits: Vec<f32> = (0..n).map(|_| rng.random::<f32>() * sharpness).collect();
            if trial % 3 == 0 {
                // Many exact ties.
                logits.iter_mut().for_each(|l| *l = l.round());
            }
            crate::kernels::softmax_in_place(&mut logits);
            for top_p in [0.0, 0.3, 0.9, 0.95, 0.999, 1.0] {
                let mut expected = logits.clone();
                truncate_by_full_sort(&mut expected, top_p);
                let mut got = logits.clone();
                TopP::truncate(&mut got, &mut order, top_p);
                assert_eq!(got, expected, "n {n}, sharpness {sharpness}, top_p {top_p}");
            }
        }
    }
}
