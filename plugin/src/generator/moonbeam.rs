//! The real generator: Moonbeam inference on the generator thread.
//!
//! [`MoonbeamGenerator`] implements [`Generator`]. It runs only on the generator thread:
//!
//! * **Model.** Loaded once in [`Generator::start`] (on the generator thread, never in
//!   `activate()` or on the audio thread) from the place [`locate_model`] names. The loaded
//!   `Arc<Moonbeam>` is kept by the plugin instance ([`ModelCache`]) across activations and shared
//!   between instances that use the same file. If no model can be loaded the status is `Failed`,
//!   the reason is shown in the editor, every trigger is answered at once with an empty answer and
//!   the plugin keeps passing MIDI through.
//! * **Played context.** Played notes go through the engine's [`LiveTokenizer`] (times in ms
//!   from [`crate::protocol::Stamp::clock_ms`]). Notes whose durations are final are moved, in
//!   note-on order, into the context: at most `context_max` notes (320 with the default
//!   limits), trimmed back to the last 256 when it overflows. A note held through more than
//!   [`PENDING_MAX`] later notes is ended in the context there. Silences longer than the model's largest timeshift (about 3 s) are
//!   shortened to it: training split pieces at such gaps, so the model never saw longer ones.
//! * **Warm KV cache.** The session's cache mirrors `[SOS] + context` with onsets re-zeroed so the
//!   first context note is at 0. While no answer is generated, newly final notes are pushed one
//!   single-token step at a time (one per [`Generator::step`] call), so a trigger usually finds a
//!   warm cache and decodes its first note at once. An answer appends rows (held notes with
//!   provisional durations, then the generated notes) that are not part of the played context;
//!   after an answer the session is truncated back to the played context while idle (right
//!   after generation ends, while the answer is still playing): one single-token step
//!   (`Session::truncate`), so the next trigger again finds the cache warm. Trimming the
//!   context (it re-zeroes onsets) needs one batched prefill. See
//!   [`MoonbeamGenerator::truncations`] and [`MoonbeamGenerator::prefills`].
//! * **Answers.** A trigger decodes ONE note per [`Generator::step`] call, so `Cancel`, new
//!   triggers and style changes are handled between decode steps. Each note is sent as soon as
//!   it is decoded (generation runs ahead of playback; the audio thread drops late notes).
//!   The first note sent starts exactly at the request's start; later notes keep their onsets
//!   relative to it (10 ms ticks → ms → beats at the request's tempo). Ends are cut at the answer
//!   length. An answer stops at its length (`length_ms`, which the audio thread resolved), on an
//!   EOS code, after `ANSWER_MAX_NOTES` decoded rows (or when the session is full), or on
//!   `Cancel` or a new trigger; every answer ends with `AnswerEnd`. A request outside the
//!   protocol ([`AnswerRequest::is_valid`]) gets an empty answer.
//! * **What is played.** Rows that are not valid MIDI are not sent (they stay in the model's
//!   context, as in the engine's `continue_notes`). Drum rows (instrument 128) are skipped
//!   unless the player's last note was on the drum channel. Then, in this order:
//!   1. **Scale lock** (`scale` other than Off): a pitch outside the scale on `scale_root` moves
//!      to the nearest scale tone, the lower one at equal distance ([`super::shaper`]). Drum
//!      rows are left alone (their pitch is a drum, not a note).
//!   2. **Range:** pitches outside `pitch_low..=pitch_high` are **folded by octaves** into the
//!      range (keeping the rhythm and the pitch class, so a locked pitch stays in the scale); a
//!      note whose pitch class does not occur in the range (narrower than an octave, or with
//!      no tone of the scale) is skipped.
//!   3. **Quantize** (`quantize` other than Off): the start snaps to the nearest point of the
//!      grid measured from the answer's start (on a host beat while the transport plays, else
//!      the answer's own first beat), with `swing` delaying the off-beats of straight grids.
//!      The duration is kept, so the end moves with the start, and is still cut at the answer
//!      length. A note that snaps to less than a 1/64 note (at least
//!      10 ms) before the answer's end is skipped, so no note is cut to (nearly) nothing.
//!      Snapping is done in beats at the answer's tempo, before the beats/ms mapping, so while
//!      the transport plays the grid is the host's.
//!   4. **Same key, same start:** a note of the key of an earlier note of the answer that starts
//!      at the same time (which quantizing, scale lock and folding can all cause) is skipped.
//!      The earlier note cannot be shortened instead: it was already sent.
//!   5. **Density:** the density cap allows at most `floor(cap)` note-ons in any one-beat
//!      window (for a cap below 1: one note per `1/cap` beats), counted at the (quantized)
//!      start; notes over it are skipped.
//!
//!   Velocities are scaled by `velocity_scale`.
//! * **Sampling.** Temperature 0 (or less) is greedy; otherwise top-p with the temperature, and
//!   the seed `(seed << 32) | answer_id`, so a seed gives reproducible answers and "regenerate"
//!   (a new answer id) a different one.
//! * **Style.** [`StyleSlot`] is the hook for the style menu: whoever holds it sets the ready
//!   styles of slots A and B (made for the loaded base, see [`ModelCache::current`]) and the
//!   thread swaps them in between decode steps (O(1), the base is untouched): A at
//!   `1 - blend`, B at `blend`, both scaled by `style_strength` ([`NamedStyle::blended`]). A
//!   moving `blend` rebuilds that style between two notes, with no reload. The warm cache
//!   holds keys and values computed under the style that was in play, so a change between
//!   answers re-reads the played context under the new style (one prefill, idle work), and a
//!   change during an answer does so after it instead of the truncation: the next answer to a
//!   phrase depends on the style chosen, never on when during the phrase it was chosen.
//! * **Measurements** go to [`SharedStatus`]: decode time per generated note (transformer step +
//!   GRU head, averaged over the answer) and the time from the trigger reaching the generator to
//!   its first note being sent.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use continuo_engine::midi::LiveTokenizer;
use continuo_engine::{Chooser, Moonbeam, Note, Row, Sampling, Style, TICK_MS};

use super::session::{Cached, Engine, Limits, Timeline};
use super::shaper::Shaper;
use super::{Generator, Outbox};
use crate::library::{locate_model, ModelCache, ModelLocation, NamedStyle, StyleSlot};
use crate::protocol::{AnswerRequest, FromEngine, GenParams, GeneratedNote, PlayedNote, ToEngine};
use crate::status::{CapturedAnswer, CapturedNote, EngineStatus, SharedStatus};

/// The most queued played notes taken into the session in one batched step.
const CONTEXT_BATCH: usize = 32;

/// Notes per second of music assumed, before a model's first answer has measured its own speed,
/// to choose how far ahead answers start: about the densest the bundled model plays (its 4-bar
/// answers at 120 BPM have up to about 77 notes in 8 s).
const ASSUMED_NOTES_PER_SECOND: f64 = 10.0;
/// Decoding pauses while the generator → audio queue has fewer free slots than this.
const MIN_FREE_SLOTS: usize = 8;
/// The gap limit used before a model is loaded (the official configs' largest timeshift).
const DEFAULT_MAX_GAP_TICKS: i64 = 297;

// ---------------------------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------------------------

/// An answer being generated.
struct Answer {
    /// What the audio thread asked for; notes starting `request.length_ms` after its start or
    /// later end it.
    request: AnswerRequest,
    chooser: Box<dyn Chooser + Send>,
    /// Whether the prompt (played context and held notes) is in the session.
    prepared: bool,
    /// Session onset of the last row in the context.
    prev_onset: i64,
    /// Session onset of the first note sent, which plays at the request's start.
    anchor: Option<i64>,
    /// The last decoded row, pushed into the context before the next decode.
    pending_row: Option<Row>,
    decoded: usize,
    budget: usize,
    /// What turns its decoded notes into the notes played.
    shaper: Shaper,
    /// When the trigger reached the generator.
    triggered: Instant,
    decode_time: Duration,
    /// The notes sent, for the capture log.
    captured: Vec<CapturedNote>,
}

// ---------------------------------------------------------------------------------------------
// The generator
// ---------------------------------------------------------------------------------------------

/// Where [`MoonbeamGenerator`] gets its model.
#[derive(Debug, Clone)]
enum Source {
    /// [`locate_model`], at start.
    Locate,
    /// A given model (tests, and later a user setting).
    Fixed(ModelLocation),
}

/// The Moonbeam generator; see the module docs.
pub struct MoonbeamGenerator {
    status: Arc<SharedStatus>,
    models: Arc<ModelCache>,
    styles: Arc<StyleSlot>,
    source: Source,
    engine: Option<Engine>,

    tokenizer: LiveTokenizer,
    timeline: Timeline,
    /// Final played notes, in note-on order, on the context time line.
    context: VecDeque<Note>,
    /// Whether the player's latest note was on the drum channel.
    player_drums: bool,

    params: GenParams,
    style_seen: u64,
    style: Option<NamedStyle>,
    /// What the style in use is called (`None`: the plain base), at the current blend.
    style_label: Option<String>,
    /// The session's style must be rebuilt (new style, strength or blend).
    style_dirty: bool,

    answer: Option<Answer>,
    /// The [`ModelCache::version`] the engine runs.
    model_version: u64,
    /// Batched prefills done (for tests and diagnostics).
    prefills: u64,
    /// Answers dropped from the session by truncation (for tests and diagnostics).
    truncations: u64,
    /// Played rows taken into the session to sync the context, singly or in batches (not
    /// counting answers).
    context_pushes: u64,
    /// Batched steps among them (several played notes taken at once).
    context_batches: u64,
}

impl MoonbeamGenerator {
    /// A generator that loads the model [`locate_model`] names when its thread starts.
    pub fn new(status: Arc<SharedStatus>, models: Arc<ModelCache>, styles: Arc<StyleSlot>) -> Self {
        Self::with_source(status, models, styles, Source::Locate)
    }

    /// A generator for a given model.
    pub fn with_model(
        status: Arc<SharedStatus>,
        models: Arc<ModelCache>,
        styles: Arc<StyleSlot>,
        location: ModelLocation,
    ) -> Self {
        Self::with_source(status, models, styles, Source::Fixed(location))
    }

    fn with_source(
        status: Arc<SharedStatus>,
        models: Arc<ModelCache>,
        styles: Arc<StyleSlot>,
        source: Source,
    ) -> Self {
        Self {
            status,
            models,
            styles,
            source,
            engine: None,
            tokenizer: LiveTokenizer::new(),
            timeline: Timeline::default(),
            context: VecDeque::with_capacity(Limits::DEFAULT.context_max + 1),
            player_drums: false,
            params: GenParams::default(),
            style_seen: 0,
            style: None,
            style_label: None,
            style_dirty: false,
            answer: None,
            model_version: 0,
            prefills: 0,
            truncations: 0,
            context_pushes: 0,
            context_batches: 0,
        }
    }

    /// Whether a model is loaded.
    pub fn has_model(&self) -> bool {
        self.engine.is_some()
    }

    /// Played notes in the context.
    pub fn context_len(&self) -> usize {
        self.context.len()
    }

    /// Rows in the session (SOS included); 0 without a model.
    pub fn session_rows(&self) -> usize {
        self.engine.as_ref().map_or(0, Engine::rows_len)
    }

    /// Whether the session holds exactly the played context (the warm cache is ready).
    pub fn is_synced(&self) -> bool {
        self.engine
            .as_ref()
            .is_some_and(|e| e.cache == Cached::Context(self.context.len()))
    }

    /// Batched prefills done so far.
    pub fn prefills(&self) -> u64 {
        self.prefills
    }

    /// Answers dropped from the session by truncation so far.
    pub fn truncations(&self) -> u64 {
        self.truncations
    }

    /// Played rows taken into the session so far to keep the played context warm.
    pub fn context_pushes(&self) -> u64 {
        self.context_pushes
    }

    /// Batched steps so far (several queued played notes taken in one pass).
    pub fn context_batches(&self) -> u64 {
        self.context_batches
    }

    /// The name of the style in use, e.g. "Ragtime" or "Ragtime 70 % + Folk 30 %" (`None`: the
    /// plain base, also while the style asked for was made for another base than the one
    /// running).
    pub fn style_name(&self) -> Option<&str> {
        self.style_label.as_deref()
    }

    /// The model running, if any.
    pub fn model(&self) -> Option<&Arc<Moonbeam>> {
        self.engine.as_ref().map(|e| e.session.model())
    }

    fn limits(&self) -> Limits {
        self.engine.as_ref().map_or(Limits::DEFAULT, |e| e.limits)
    }

    fn max_gap(&self) -> i64 {
        self.engine
            .as_ref()
            .map_or(DEFAULT_MAX_GAP_TICKS, |e| e.max_gap)
    }

    /// Records a played note event.
    fn record(&mut self, note: PlayedNote) {
        let ms = note.time.clock_ms;
        if note.is_on {
            let velocity = if note.velocity.is_finite() {
                (note.velocity * 127.0).round().clamp(1.0, 127.0) as u8
            } else {
                64
            };
            self.tokenizer.note_on(ms, note.channel, note.key, velocity);
            self.player_drums = note.channel == 9;
        } else {
            self.tokenizer.note_off(ms, note.channel, note.key);
        }
        if self.tokenizer.len() > self.limits().pending_max {
            // A note held through many others: end it here in the context.
            self.tokenizer.close_all(ms);
        }
        for played in self.tokenizer.drain_finished_prefix() {
            self.commit(played);
        }
    }

    /// Appends a final played note to the context.
    fn commit(&mut self, mut note: Note) {
        note.onset = self.timeline.map(note.onset, self.max_gap());
        self.context.push_back(note);
        let limits = self.limits();
        if self.context.len() > limits.context_max {
            let excess = self.context.len() - limits.context_keep;
            self.context.drain(..excess);
            if let Some(engine) = &mut self.engine {
                engine.cache = Cached::Stale;
            }
        }
    }

    /// Records an error for the editor.
    fn error(&self, message: &str) {
        nice_plug::nice_error!("Continuo generator: {message}");
        self.status.set_last_error(message);
    }

    /// Does one piece of work to bring the session in line with the played context: a prefill
    /// or one pushed note. Returns whether more is left.
    fn sync_step(&mut self) -> bool {
        let Some(engine) = &mut self.engine else {
            return false;
        };
        match engine.cache {
            Cached::AnswerAfter(_) if engine.restyled => {
                // The style changed during the answer: the context's keys and values are the
                // old style's, so it is read again under the new one.
                engine.restyled = false;
                engine.cache = Cached::Stale;
            }
            Cached::AnswerAfter(kept) => {
                // Drop the answer (and held notes) from the session: one step, not a prefill.
                let result = engine.session.truncate(kept + 1);
                self.truncations += 1;
                engine.cache = if result.is_ok() && engine.rows_len() == kept + 1 {
                    Cached::Context(kept)
                } else {
                    Cached::Stale
                };
            }
            Cached::Stale => {
                let origin = self.context.front().map_or(0, |n| n.onset);
                let notes: Vec<Note> = self
                    .context
                    .iter()
                    .map(|n| Note {
                        onset: n.onset - origin,
                        ..*n
                    })
                    .collect();
                let result = engine.session.prefill(&notes);
                self.prefills += 1;
                match result {
                    Ok(()) => {
                        engine.origin = origin;
                        engine.cache = Cached::Context(notes.len());
                        engine.restyled = false;
                    }
                    Err(e) => {
                        let had_context = !self.context.is_empty();
                        // The context cannot be read: forget it and start from SOS.
                        self.context.clear();
                        if had_context {
                            self.status
                                .set_last_error(&format!("played context dropped: {e}"));
                        } else {
                            // Even SOS alone fails: the model is unusable.
                            self.engine = None;
                            self.error(&format!("the model cannot run: {e}"));
                            self.status.set_engine_status(EngineStatus::Failed);
                            return false;
                        }
                    }
                }
            }
            Cached::Context(n) if n < self.context.len() => {
                // Every note that queued up, in one batched step (the weights are read once
                // for all of them), at most CONTEXT_BATCH at a time so cancels still land soon.
                let end = self.context.len().min(n + CONTEXT_BATCH);
                let rows: Vec<Row> = self
                    .context
                    .range(n..end)
                    .map(|note| {
                        Note {
                            onset: note.onset - engine.origin,
                            ..*note
                        }
                        .to_row()
                    })
                    .collect();
                let result = engine.session.extend(&rows);
                self.context_pushes += rows.len() as u64;
                self.context_batches += u64::from(rows.len() > 1);
                match result {
                    Ok(()) => engine.cache = Cached::Context(end),
                    Err(e) => {
                        engine.cache = Cached::Stale;
                        self.status
                            .set_last_error(&format!("could not extend the context: {e}"));
                    }
                }
            }
            Cached::Context(_) => {}
        }
        self.engine
            .as_ref()
            .is_some_and(|e| e.cache != Cached::Context(self.context.len()))
    }

    /// Makes `model` the one answers use: warms it up, and starts the speed estimate behind the
    /// audio thread's answer lead afresh from that (the previous model's no longer applies).
    fn install_engine(&mut self, model: Arc<Moonbeam>) {
        let mut engine = Engine::new(model);
        let ratio = match engine.warm_up() {
            Ok(per_note) => per_note.as_secs_f64() * ASSUMED_NOTES_PER_SECOND,
            Err(e) => {
                self.error(&e);
                0.0
            }
        };
        self.status.seed_generation_ratio(ratio);
        self.engine = Some(engine);
    }

    /// Switches to the model the loader installed in [`ModelCache`], if there is a new one.
    /// Called between answers; the played context is kept and prefilled into the new model
    /// while idle. Returns whether it switched.
    fn switch_model(&mut self) -> bool {
        let version = self.models.version();
        if version == self.model_version || self.engine.is_none() {
            return false;
        }
        self.model_version = version;
        let Some(model) = self.models.current() else {
            return false;
        };
        if self
            .engine
            .as_ref()
            .is_some_and(|e| Arc::ptr_eq(e.session.model(), &model))
        {
            return false;
        }
        let started = Instant::now();
        let params = model.cfg.n_params();
        let format = weight_format(&model);
        self.install_engine(model);
        if let Some(engine) = &self.engine {
            if self.context.len() > engine.limits.context_max {
                let excess = self.context.len() - engine.limits.context_keep;
                self.context.drain(..excess);
            }
        }
        self.style_dirty = true;
        let label = self
            .models
            .current_location()
            .map_or_else(String::new, |l| l.label());
        self.status.set_model_label(&format!(
            "{label} · {:.1} M parameters, {format} · switched in {:.0} ms",
            params as f64 / 1e6,
            started.elapsed().as_secs_f64() * 1000.0
        ));
        true
    }

    /// Applies a new style or strength to the session. Called between decode steps.
    fn apply_style(&mut self) {
        if let Some(change) = self.styles.take_change(&mut self.style_seen) {
            self.style = change;
            self.style_dirty = true;
        }
        if !self.style_dirty {
            return;
        }
        let Some(engine) = &mut self.engine else {
            return;
        };
        let strength = if self.params.style_strength.is_finite() {
            self.params.style_strength.max(0.0)
        } else {
            1.0
        };
        let model = engine.session.model();
        let blend = self.params.blend;
        let (style, label) = match self.style.as_ref().filter(|named| named.fits(model)) {
            Some(named) => (named.blended(blend, strength), named.label(blend)),
            None => (Style::base(), None),
        };
        engine.session.set_style(style);
        // The cached played context was read under the previous style. Between answers it is
        // read again under this one (idle work, like any rebuild), so an answer depends on the
        // style in play and not on when during the phrase it was chosen. In the middle of an
        // answer the swap lands between two notes and the context is re-read after it.
        match engine.cache {
            Cached::Context(_) => engine.cache = Cached::Stale,
            Cached::AnswerAfter(_) => engine.restyled = true,
            Cached::Stale => {}
        }
        self.style_dirty = false;
        self.status
            .set_style_label(label.as_deref().unwrap_or_default());
        self.style_label = label;
    }

    /// Starts an answer (ending the one in progress, if any).
    fn trigger(&mut self, request: AnswerRequest, out: &mut Outbox<'_>) {
        self.end_answer(out);
        let triggered = Instant::now();
        if self.engine.is_none() || !request.is_valid() {
            // No model (or a request outside the protocol): an empty answer, so the shell does
            // not wait for one.
            if !request.is_valid() {
                self.error(&format!("ignored an invalid answer request: {request:?}"));
            }
            out.send(FromEngine::AnswerEnd {
                answer_id: request.answer_id,
            });
            return;
        }
        let (temperature, top_p) = (self.params.temperature, self.params.top_p);
        let sampling = if temperature.is_finite() && temperature > 0.0 {
            Sampling::TopP {
                temperature,
                top_p: if top_p.is_finite() {
                    top_p.clamp(0.0, 1.0)
                } else {
                    1.0
                },
                seed: (u64::from(self.params.seed) << 32) | u64::from(request.answer_id),
            }
        } else {
            Sampling::Greedy
        };
        out.set_status(EngineStatus::Generating);
        self.answer = Some(Answer {
            request,
            chooser: sampling.chooser(),
            prepared: false,
            prev_onset: 0,
            anchor: None,
            pending_row: None,
            decoded: 0,
            budget: 0,
            shaper: Shaper::new(request.ms_per_beat(), request.length_ms),
            triggered,
            decode_time: Duration::ZERO,
            captured: Vec::new(),
        });
    }

    /// Ends the answer in progress, if any: `AnswerEnd`, back to idle, timings published.
    fn end_answer(&mut self, out: &mut Outbox<'_>) {
        let Some(answer) = self.answer.take() else {
            return;
        };
        out.send(FromEngine::AnswerEnd {
            answer_id: answer.request.answer_id,
        });
        if answer.decoded > 0 {
            let us = answer.decode_time.as_micros() as u64 / answer.decoded as u64;
            self.status.us_per_note.store(us.max(1), Ordering::Relaxed);
        }
        // How long this answer took per time of music it covers, for the audio thread's lead.
        // Answers cut short by the model after under half a second say too little.
        if let Some(anchor) = answer.anchor {
            let covered_ms =
                ((answer.prev_onset - anchor) as f64 * TICK_MS).min(answer.request.length_ms);
            if covered_ms >= 500.0 {
                let elapsed_ms = answer.triggered.elapsed().as_secs_f64() * 1000.0;
                self.status.record_generation_ratio(elapsed_ms / covered_ms);
            }
        }
        self.status.captures.file(CapturedAnswer {
            number: 0,
            style: self
                .style_name()
                .map_or_else(|| "base model".to_string(), str::to_string),
            tempo_bpm: answer.request.tempo_bpm,
            channel: 0,
            notes: answer.captured,
        });
        if self.engine.is_some() {
            out.set_status(EngineStatus::Idle);
        }
    }

    /// Puts the prompt into the session: the played context (warm: usually nothing left to do),
    /// then the notes not final yet, with durations up to the answer's start.
    fn prepare(&mut self) -> Result<(), String> {
        while self.sync_step() {}
        let max_gap = self.max_gap();
        let Some(engine) = &mut self.engine else {
            return Err("the model is gone".into());
        };
        let Some(answer) = &mut self.answer else {
            return Ok(());
        };
        let mut timeline = self.timeline;
        let held = self.tokenizer.snapshot(answer.request.start.clock_ms);
        let room_for_answer = engine.limits.answer_max.min(engine.limits.capacity / 2);
        // From here on the session holds more than the played context.
        engine.cache = match engine.cache {
            Cached::Context(n) => Cached::AnswerAfter(n),
            _ => Cached::Stale,
        };
        for live in held {
            if engine.rows_len() + room_for_answer >= engine.limits.capacity {
                break;
            }
            let note = Note {
                onset: timeline.map(live.note.onset, max_gap) - engine.origin,
                ..live.note
            };
            if note.onset < 0 {
                continue;
            }
            engine
                .session
                .push(note.to_row())
                .map_err(|e| format!("could not add the held notes: {e}"))?;
        }
        answer.prev_onset = engine.last_onset();
        answer.budget = engine
            .limits
            .answer_max
            .min(engine.limits.capacity.saturating_sub(engine.rows_len()) + 1);
        answer.prepared = true;
        Ok(())
    }

    /// One step of the answer in progress: prepare, or decode one note (and send it if it is
    /// played). Ends the answer when it is done.
    fn answer_step(&mut self, out: &mut Outbox<'_>) {
        let Some(answer) = &self.answer else { return };
        if !answer.prepared {
            if let Err(e) = self.prepare() {
                self.error(&e);
                self.end_answer(out);
                return;
            }
        }
        match self.decode_one(out) {
            Ok(true) => {}
            Ok(false) => self.end_answer(out),
            Err(e) => {
                self.error(&e);
                self.end_answer(out);
            }
        }
    }

    /// Decodes one row. Returns whether the answer goes on.
    fn decode_one(&mut self, out: &mut Outbox<'_>) -> Result<bool, String> {
        let (Some(engine), Some(answer)) = (&mut self.engine, &mut self.answer) else {
            return Ok(false);
        };
        if answer.decoded >= answer.budget {
            return Ok(false);
        }
        let started = Instant::now();
        let chooser = &mut answer.chooser;
        let pending = answer.pending_row.take();
        let session = &mut engine.session;
        let values = pending
            .map_or(Ok(()), |row| session.push(row))
            .and_then(|()| session.next_values_endless(chooser.as_mut()))
            .map_err(|e| format!("generation stopped: {e}"))?;
        answer.decode_time += started.elapsed();
        answer.decoded += 1;
        let cfg = &engine.session.model().cfg;
        // The endless guard never decodes EOS; a stop all the same, should a model's
        // vocabulary hold nothing else.
        if cfg.is_eos(&values) {
            return Ok(false);
        }
        let note = Note::from_decoded(answer.prev_onset, values);
        answer.prev_onset = note.onset;
        answer.pending_row = Some(note.to_row());
        if let Some(anchor) = answer.anchor {
            if (note.onset - anchor) as f64 * TICK_MS >= answer.request.length_ms {
                return Ok(false);
            }
        }
        if let Some(generated) = Self::playable(&self.params, self.player_drums, answer, &note) {
            if answer.anchor.is_none() {
                self.status.first_note_us.store(
                    (answer.triggered.elapsed().as_micros() as u64).max(1),
                    Ordering::Relaxed,
                );
            }
            answer.anchor.get_or_insert(note.onset);
            out.send(FromEngine::Note(generated));
            answer.captured.push(Self::captured(answer, &generated));
        }
        Ok(answer.decoded < answer.budget)
    }

    /// A sent note with its times in beats after the answer's start.
    fn captured(answer: &Answer, note: &GeneratedNote) -> CapturedNote {
        CapturedNote {
            start_beats: answer.request.beats_after_start(note.start),
            end_beats: answer.request.beats_after_start(note.end),
            key: note.key,
            velocity: note.velocity,
        }
    }

    /// The note to send for a decoded row, or `None` if it is not played (invalid, a drum, out
    /// of range, too near the answer's end once quantized, a repeat of a key at the same time,
    /// over the density cap). See the module docs for the order of the steps.
    fn playable(
        params: &GenParams,
        player_drums: bool,
        answer: &mut Answer,
        note: &Note,
    ) -> Option<GeneratedNote> {
        let anchor = answer.anchor.unwrap_or(note.onset);
        let shaped = answer.shaper.shape(params, player_drums, note, anchor)?;
        let request = &answer.request;
        Some(GeneratedNote {
            answer_id: request.answer_id,
            start: request.time_at(shaped.start_ms),
            end: request.time_at(shaped.end_ms),
            key: shaped.key,
            velocity: shaped.velocity,
        })
    }
}

impl Generator for MoonbeamGenerator {
    fn start(&mut self, out: &mut Outbox<'_>) {
        let location = match &self.source {
            Source::Locate => self.models.start_location(),
            Source::Fixed(location) => Ok(location.clone()),
        };
        let label = location.as_ref().map(ModelLocation::label).ok();
        if let Some(label) = &label {
            self.status.set_model_label(&format!("loading {label}…"));
        }
        let started = Instant::now();
        let mut loaded = location.and_then(|location| self.models.get_or_load(&location));
        if let (Err(e), Source::Locate) = (&loaded, &self.source) {
            // A chosen model that cannot be loaded (e.g. a file gone since the project was
            // saved): say so and fall back to the default.
            if let Ok(default) = locate_model() {
                if Some(&default) != self.models.current_location().as_ref() {
                    self.error(&format!("{e}; using the default model"));
                    loaded = self.models.load_default();
                }
            }
        }
        match loaded {
            Ok(model) => {
                let params = model.cfg.n_params();
                let format = weight_format(&model);
                self.model_version = self.models.version();
                self.install_engine(model);
                self.style_dirty = true;
                self.apply_style();
                self.status.set_model_label(&format!(
                    "{} · {:.1} M parameters, {} · ready in {:.0} ms",
                    label.unwrap_or_default(),
                    params as f64 / 1e6,
                    format,
                    started.elapsed().as_secs_f64() * 1000.0
                ));
                if self.models.start_location().ok() == self.models.current_location() {
                    self.status.set_last_error("");
                }
                out.set_status(EngineStatus::Idle);
            }
            Err(e) => {
                self.status
                    .set_model_label("no model: MIDI passes through, nothing is generated");
                self.error(&e);
                out.set_status(EngineStatus::Failed);
            }
        }
    }

    fn handle(&mut self, message: ToEngine, out: &mut Outbox<'_>) {
        match message {
            ToEngine::Note(note) => self.record(note),
            ToEngine::Params(params) => {
                if params.style_strength != self.params.style_strength
                    || params.blend != self.params.blend
                {
                    self.style_dirty = true;
                }
                self.params = params;
            }
            ToEngine::Trigger(request) => self.trigger(request, out),
            ToEngine::Cancel { answer_id } => {
                if self
                    .answer
                    .as_ref()
                    .is_some_and(|a| a.request.answer_id == answer_id)
                {
                    self.end_answer(out);
                }
            }
        }
    }

    fn step(&mut self, out: &mut Outbox<'_>) -> bool {
        if self.answer.is_none() && self.switch_model() {
            return true;
        }
        self.apply_style();
        if self.answer.is_some() {
            if self.params.density_cap_per_beat <= 0.0 {
                // Nothing may be played.
                self.end_answer(out);
                return true;
            }
            if out.free_slots() < MIN_FREE_SLOTS {
                // The audio thread is behind; wait rather than drop notes.
                return false;
            }
            self.answer_step(out);
            return true;
        }
        self.sync_step()
    }
}

/// How the model's weights are stored, for the editor: `f32`, `q8` or `q4`.
fn weight_format(model: &Moonbeam) -> &'static str {
    model
        .quantization
        .as_ref()
        .map_or("f32", |q| q.format.name())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    use super::super::session::{ANSWER_MAX_NOTES, CONTEXT_KEEP, CONTEXT_SLACK, PENDING_MAX};
    use crate::generator::GeneratorThread;
    use crate::library::{ConfigSpec, ModelOrigin, SlotStyle};
    use crate::protocol::{NoteTime, Stamp, MAX_ANSWER_MS, TEMPO_RANGE_BPM};
    use crate::protocol::{Quantize, Scale};
    use crate::testing::{golden, tiny_test_model};

    /// A generator on the tiny golden model, with its queue.
    struct Rig {
        generator: MoonbeamGenerator,
        status: Arc<SharedStatus>,
        producer: rtrb::Producer<FromEngine>,
        consumer: rtrb::Consumer<FromEngine>,
        /// Everything the generator sent.
        sent: Vec<FromEngine>,
    }

    impl Rig {
        fn with_location(location: ModelLocation) -> Self {
            let status = Arc::new(SharedStatus::default());
            let (producer, consumer) = rtrb::RingBuffer::new(4096);
            let generator = MoonbeamGenerator::with_model(
                status.clone(),
                Arc::new(ModelCache::default()),
                Arc::new(StyleSlot::default()),
                location,
            );
            let mut rig = Self {
                generator,
                status,
                producer,
                consumer,
                sent: Vec::new(),
            };
            rig.generator
                .start(&mut Outbox::new(&mut rig.producer, &rig.status));
            rig.drain();
            rig
        }

        fn new() -> Self {
            let rig = Self::with_location(tiny_test_model());
            assert!(
                rig.generator.has_model(),
                "{:?}",
                rig.status.try_engine_info()
            );
            rig
        }

        fn drain(&mut self) {
            while let Ok(message) = self.consumer.pop() {
                self.sent.push(message);
            }
        }

        fn handle(&mut self, message: ToEngine) {
            self.generator
                .handle(message, &mut Outbox::new(&mut self.producer, &self.status));
            self.drain();
        }

        /// One step; returns whether there is more work.
        fn step(&mut self) -> bool {
            let more = self
                .generator
                .step(&mut Outbox::new(&mut self.producer, &self.status));
            self.drain();
            more
        }

        /// Steps until idle (bounded).
        fn settle(&mut self) {
            for _ in 0..10_000 {
                if !self.step() {
                    return;
                }
            }
            panic!("the generator never went idle");
        }

        fn params(&mut self, params: GenParams) {
            self.handle(ToEngine::Params(params));
        }

        /// Plays a phrase: notes of `(start ms, length ms, key)`.
        fn play(&mut self, notes: &[(f64, f64, u8)]) {
            let mut events: Vec<(f64, bool, u8)> = notes
                .iter()
                .flat_map(|&(start, len, key)| [(start, true, key), (start + len, false, key)])
                .collect();
            events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            for (ms, is_on, key) in events {
                self.handle(played(ms, key, is_on));
                self.step();
            }
        }

        fn notes(&self, answer_id: u32) -> Vec<GeneratedNote> {
            self.sent
                .iter()
                .filter_map(|m| match m {
                    FromEngine::Note(n) if n.answer_id == answer_id => Some(*n),
                    _ => None,
                })
                .collect()
        }

        fn ended(&self, answer_id: u32) -> usize {
            self.sent
                .iter()
                .filter(|m| **m == FromEngine::AnswerEnd { answer_id })
                .count()
        }
    }

    fn played(clock_ms: f64, key: u8, is_on: bool) -> ToEngine {
        crate::protocol::played(clock_ms, key, is_on, 0.7)
    }

    /// A request at 120 BPM for `length_beats` (500 ms each).
    fn request(
        answer_id: u32,
        clock_ms: f64,
        beats: Option<f64>,
        length_beats: f64,
    ) -> AnswerRequest {
        AnswerRequest {
            answer_id,
            start: Stamp { clock_ms, beats },
            length_ms: length_beats * 500.0,
            tempo_bpm: 120.0,
        }
    }

    /// A C major phrase of `n` notes, 250 ms apart, each 200 ms long.
    fn phrase(n: usize, from_ms: f64) -> Vec<(f64, f64, u8)> {
        const SCALE: [u8; 7] = [60, 62, 64, 65, 67, 69, 71];
        (0..n)
            .map(|i| (from_ms + 250.0 * i as f64, 200.0, SCALE[i % 7]))
            .collect()
    }

    fn time_ms(t: NoteTime) -> f64 {
        match t {
            NoteTime::Millis(ms) => ms,
            NoteTime::Beats(b) => b * 500.0,
        }
    }

    fn check_answer(notes: &[GeneratedNote], start: NoteTime, params: &GenParams, length_ms: f64) {
        assert!(!notes.is_empty());
        assert_eq!(
            notes[0].start, start,
            "the first note starts exactly at the request's start"
        );
        let base = time_ms(start);
        for pair in notes.windows(2) {
            assert!(
                time_ms(pair[0].start) <= time_ms(pair[1].start),
                "{notes:?}"
            );
        }
        for n in notes {
            assert_eq!(
                std::mem::discriminant(&n.start),
                std::mem::discriminant(&start)
            );
            assert!(
                (params.pitch_low..=params.pitch_high).contains(&n.key),
                "{n:?}"
            );
            assert!(time_ms(n.end) >= time_ms(n.start), "{n:?}");
            assert!(time_ms(n.start) - base < length_ms + 1e-6, "{n:?}");
            assert!(time_ms(n.end) - base <= length_ms + 1e-6, "{n:?}");
            assert!(n.velocity > 0.0 && n.velocity <= 1.0);
        }
    }

    /// An answer as `trigger` makes it, at 120 BPM, for calling `playable` directly.
    fn bare_answer(start: Stamp, length_ms: f64) -> Answer {
        Answer {
            request: AnswerRequest {
                start,
                ..request(1, start.clock_ms, start.beats, length_ms / 500.0)
            },
            chooser: Sampling::Greedy.chooser(),
            prepared: true,
            prev_onset: 0,
            anchor: None,
            pending_row: None,
            decoded: 0,
            budget: ANSWER_MAX_NOTES,
            shaper: Shaper::new(500.0, length_ms),
            triggered: Instant::now(),
            decode_time: Duration::ZERO,
            captured: Vec::new(),
        }
    }

    /// Runs decoded notes `(onset ms, duration ms, pitch)` through `playable` the way
    /// `decode_one` does, and returns `(start, end, key)` of those played, in ms after the
    /// answer's start (or in beats, for an answer timed in beats).
    fn shape(
        params: &GenParams,
        start: Stamp,
        length_ms: f64,
        notes: &[(i64, i64, u8)],
    ) -> Vec<(f64, f64, u8)> {
        let mut answer = bare_answer(start, length_ms);
        let relative = |t: NoteTime| match t {
            NoteTime::Millis(ms) => ms - start.clock_ms,
            NoteTime::Beats(beats) => beats - start.beats.unwrap(),
        };
        notes
            .iter()
            .filter_map(|&(onset_ms, duration_ms, pitch)| {
                let note = Note::from_pitch(onset_ms / 10, duration_ms / 10, pitch, 0, 100);
                let played = MoonbeamGenerator::playable(params, false, &mut answer, &note)?;
                answer.anchor.get_or_insert(note.onset);
                Some((relative(played.start), relative(played.end), played.key))
            })
            .collect()
    }

    const WALL: Stamp = Stamp {
        clock_ms: 1000.0,
        beats: None,
    };

    #[test]
    fn quantized_starts_keep_their_durations_and_the_answer_length() {
        let sixteenths = GenParams {
            quantize: Quantize::Sixteenth,
            ..GenParams::default()
        };
        // 120 BPM: a 1/16 is 125 ms. The answer is 4 beats (2000 ms) long.
        let notes = [
            (5000, 200, 60), // the first note: the answer's start
            (5130, 200, 62), // 130 ms → 125
            (5190, 200, 64), // 190 ms → 250 (60 ms away, 125 is 65)
            (5930, 200, 65), // 930 ms → 875
            (6930, 300, 67), // 1930 ms → 1875, cut at 2000
            (6990, 200, 69), // 1990 ms → 2000: at the answer's end, skipped
        ];
        assert_eq!(
            shape(&sixteenths, WALL, 2000.0, &notes),
            [
                (0.0, 200.0, 60),
                (125.0, 325.0, 62),
                (250.0, 450.0, 64),
                (875.0, 1075.0, 65),
                (1875.0, 2000.0, 67),
            ]
        );
        // Unquantized, the same notes keep their times (and the last one plays, cut short).
        let off = shape(&GenParams::default(), WALL, 2000.0, &notes);
        assert_eq!(off[1], (130.0, 330.0, 62));
        assert_eq!(off[5], (1990.0, 2000.0, 69));
        // A note that lands less than a 1/64 note (31.25 ms) before the end is skipped; one that
        // leaves that much is played.
        let late = |ms: i64| shape(&sixteenths, WALL, 1900.0, &[(0, 100, 60), (ms, 100, 62)]);
        assert_eq!(late(1870).len(), 1, "1870 → 1875: 25 ms left");
        assert_eq!(late(1740), [(0.0, 100.0, 60), (1750.0, 1850.0, 62)]);
    }

    #[test]
    fn swing_and_triplets_move_the_grid() {
        let params = |quantize, swing_percent| GenParams {
            quantize,
            swing_percent,
            ..GenParams::default()
        };
        let second_start = |params: GenParams, ms: i64| {
            shape(&params, WALL, 4000.0, &[(0, 100, 60), (ms, 100, 62)])[1].0
        };
        // 1/8 with 50 % swing: the off-beat 1/8 moves from 250 to 312.5 ms.
        assert_eq!(second_start(params(Quantize::Eighth, 50), 300), 312.5);
        assert_eq!(second_start(params(Quantize::Eighth, 0), 300), 250.0);
        // The downbeats stay put.
        assert_eq!(second_start(params(Quantize::Eighth, 50), 480), 500.0);
        // 1/16 with 50 % swing: the second 1/16 moves from 125 to 156.25 ms.
        assert_eq!(second_start(params(Quantize::Sixteenth, 50), 150), 156.25);
        // 1/8 triplets are 166.7 ms apart and ignore swing.
        let triplet = second_start(params(Quantize::EighthTriplet, 75), 180);
        assert!((triplet - 500.0 / 3.0).abs() < 1e-9, "{triplet}");
        // While the transport plays, the grid is in beats from the answer's beat.
        let beats = Stamp {
            clock_ms: 1000.0,
            beats: Some(8.0),
        };
        let notes = shape(
            &params(Quantize::Sixteenth, 0),
            beats,
            2000.0,
            &[(0, 250, 60), (130, 250, 62), (380, 250, 64)],
        );
        assert_eq!(notes, [(0.0, 0.5, 60), (0.25, 0.75, 62), (0.75, 1.25, 64)]);
    }

    #[test]
    fn the_same_key_never_starts_twice_at_once() {
        let eighths = GenParams {
            quantize: Quantize::Eighth,
            ..GenParams::default()
        };
        // Two Es snapping to the same 1/8: the later one is skipped; the G at the same time
        // plays, and so does the next E on the next 1/8.
        let notes = [
            (0, 400, 60),
            (230, 400, 64),
            (260, 400, 64),
            (270, 400, 67),
            (480, 100, 64),
        ];
        assert_eq!(
            shape(&eighths, WALL, 4000.0, &notes),
            [
                (0.0, 400.0, 60),
                (250.0, 650.0, 64),
                (250.0, 650.0, 67),
                (500.0, 600.0, 64),
            ]
        );
        // The scale lock can do the same: C# snaps to C, which is already playing from there.
        let locked = GenParams {
            scale: Scale::Major,
            ..GenParams::default()
        };
        assert_eq!(
            shape(
                &locked,
                WALL,
                4000.0,
                &[(0, 400, 60), (0, 400, 61), (0, 400, 64)]
            ),
            [(0.0, 400.0, 60), (0.0, 400.0, 64)]
        );
        // A skipped note does not count against the density cap.
        let capped = GenParams {
            quantize: Quantize::Eighth,
            density_cap_per_beat: 2.0,
            ..GenParams::default()
        };
        assert_eq!(
            shape(
                &capped,
                WALL,
                4000.0,
                &[(0, 100, 60), (10, 100, 60), (240, 100, 62)]
            ),
            [(0.0, 100.0, 60), (250.0, 350.0, 62)]
        );
    }

    #[test]
    fn scale_lock_then_octave_folding() {
        let lock = |scale, scale_root, pitch_low, pitch_high| GenParams {
            scale,
            scale_root,
            pitch_low,
            pitch_high,
            ..GenParams::default()
        };
        let key = |params: &GenParams, pitch: u8| {
            shape(params, WALL, 4000.0, &[(0, 100, pitch)])
                .first()
                .map(|n| n.2)
        };
        let c_major = lock(Scale::Major, 0, 48, 72);
        assert_eq!(key(&c_major, 60), Some(60));
        assert_eq!(key(&c_major, 61), Some(60), "ties go down");
        assert_eq!(key(&c_major, 63), Some(62));
        // F#6 locks to F6, then folds down two octaves.
        assert_eq!(key(&c_major, 90), Some(65));
        // Off leaves pitches alone.
        assert_eq!(key(&lock(Scale::Off, 0, 48, 72), 61), Some(61));
        // A range holding no tone of the scale plays nothing.
        assert_eq!(key(&lock(Scale::Major, 0, 66, 66), 66), None);
        assert_eq!(key(&lock(Scale::Off, 0, 66, 66), 66), Some(66));
        // Every pitch comes out in the scale and in the range, or not at all, and not at all
        // only when the range lacks the locked pitch class.
        for (scale, root) in [
            (Scale::Blues, 9),
            (Scale::HarmonicMinor, 2),
            (Scale::MajorPentatonic, 6),
        ] {
            let mask = scale.mask(root).unwrap();
            for (low, high) in [(0, 127), (40, 47), (60, 62), (70, 70)] {
                let params = lock(scale, root, low, high);
                for pitch in 0..128 {
                    match key(&params, pitch) {
                        Some(k) => {
                            assert!(mask.contains(i64::from(k)), "{scale:?} {pitch} → {k}");
                            assert!((low..=high).contains(&k));
                            assert_eq!(
                                i64::from(k).rem_euclid(12),
                                mask.snap(i64::from(pitch)).rem_euclid(12)
                            );
                        }
                        None => {
                            let class = mask.snap(i64::from(pitch)).rem_euclid(12);
                            assert!(!(low..=high).any(|k| i64::from(k) % 12 == class));
                        }
                    }
                }
            }
        }
        // Drums keep their pitch: it names a drum, not a note.
        let mut answer = bare_answer(WALL, 4000.0);
        let snare = Note::from_pitch(0, 10, 38, 128, 100);
        let d_blues = lock(Scale::Blues, 2, 0, 127);
        assert_eq!(
            MoonbeamGenerator::playable(&d_blues, true, &mut answer, &snare).map(|n| n.key),
            Some(38)
        );
    }

    #[test]
    fn quantized_locked_answers_from_the_model() {
        let mut rig = Rig::new();
        let params = GenParams {
            quantize: Quantize::Sixteenth,
            swing_percent: 50,
            scale: Scale::MinorPentatonic,
            scale_root: 4,
            pitch_low: 40,
            pitch_high: 88,
            density_cap_per_beat: 16.0,
            ..GenParams::default()
        };
        rig.params(params);
        rig.play(&phrase(12, 1000.0));
        rig.settle();
        let mask = Scale::MinorPentatonic.mask(4).unwrap();
        for (id, beats) in [(1, None), (2, Some(32.0))] {
            rig.handle(ToEngine::Trigger(request(id, 6000.0, beats, 8.0)));
            rig.settle();
            let notes = rig.notes(id);
            let start = match beats {
                Some(b) => NoteTime::Beats(b),
                None => NoteTime::Millis(6000.0),
            };
            check_answer(&notes, start, &params, 4000.0);
            let mut seen = std::collections::HashSet::new();
            for n in &notes {
                assert!(mask.contains(i64::from(n.key)), "{n:?}");
                let rel_beats = (time_ms(n.start) - time_ms(start)) / 500.0;
                let snapped = Quantize::Sixteenth.snap_beats(rel_beats, 50);
                assert!((snapped - rel_beats).abs() < 1e-9, "off the grid: {n:?}");
                assert!(time_ms(n.end) > time_ms(n.start), "{n:?}");
                let at = (rel_beats * 1e6).round() as i64;
                assert!(seen.insert((n.key, at)), "same key twice at once: {n:?}");
            }
        }
    }

    #[test]
    fn answers_after_played_notes_in_wall_time_and_in_beats() {
        let mut rig = Rig::new();
        let params = GenParams {
            pitch_low: 48,
            pitch_high: 72,
            ..GenParams::default()
        };
        rig.params(params);
        // Installing the model warmed it up and seeded the speed estimate.
        assert!(rig.status.generation_ratio().is_some());
        rig.play(&phrase(12, 1000.0));
        rig.settle();
        assert!(rig.generator.is_synced());
        assert_eq!(rig.generator.context_len(), 12);

        // Wall time: 8 beats at 120 BPM.
        rig.handle(ToEngine::Trigger(request(1, 5000.0, None, 8.0)));
        rig.settle();
        let notes = rig.notes(1);
        check_answer(&notes, NoteTime::Millis(5000.0), &params, 4000.0);
        assert_eq!(rig.ended(1), 1);
        assert_eq!(
            rig.sent.last(),
            Some(&FromEngine::AnswerEnd { answer_id: 1 })
        );
        assert_eq!(rig.status.engine_status(), EngineStatus::Idle);
        let (ms_per_note, first_note) = rig.status.timings_ms();
        assert!(ms_per_note.is_some() && first_note.is_some());
        // The answer covered its 4 s, so its generation speed is measured for the lead.
        let ratio = rig.status.generation_ratio().expect("measured");
        assert!(
            ratio > 0.0 && ratio < 1.0,
            "generation time per time of music {ratio}"
        );

        // Beats, after more playing.
        rig.play(&phrase(5, 9000.0));
        rig.settle();
        assert!(rig.generator.is_synced());
        rig.handle(ToEngine::Trigger(request(2, 12_000.0, Some(24.0), 4.0)));
        rig.settle();
        let notes = rig.notes(2);
        check_answer(&notes, NoteTime::Beats(24.0), &params, 2000.0);
        assert_eq!(rig.ended(2), 1);
    }

    #[test]
    fn a_trigger_finds_the_cache_warm() {
        let mut rig = Rig::new();
        rig.play(&phrase(20, 0.0));
        rig.settle();
        let prefills = rig.generator.prefills();
        assert_eq!(rig.generator.session_rows(), 21);
        rig.handle(ToEngine::Trigger(request(1, 6000.0, None, 4.0)));
        rig.step();
        // The first decode step needed no prefill: the played notes were already pushed.
        assert_eq!(rig.generator.prefills(), prefills);
        rig.settle();
        // After the answer the session goes back to the played context by truncation (one
        // step), not by a new prefill, while idle.
        assert_eq!(rig.generator.prefills(), prefills);
        assert_eq!(rig.generator.truncations(), 1);
        assert!(rig.generator.is_synced());
        assert_eq!(rig.generator.session_rows(), 21);
        // New notes are taken into the session as they become final.
        let pushes = rig.generator.context_pushes();
        rig.play(&phrase(3, 10_000.0));
        rig.settle();
        assert_eq!(rig.generator.context_pushes(), pushes + 3);
        assert_eq!(rig.generator.prefills(), prefills);
        assert_eq!(rig.generator.session_rows(), 24);
        // The next answer finds the cache warm too, and so on.
        rig.handle(ToEngine::Trigger(request(2, 16_000.0, None, 4.0)));
        rig.settle();
        assert_eq!(rig.ended(2), 1);
        assert_eq!(rig.generator.prefills(), prefills);
        assert_eq!(rig.generator.truncations(), 2);
        assert_eq!(rig.generator.session_rows(), 24);
    }

    #[test]
    fn greedy_is_deterministic_and_seeds_reproduce() {
        let answer = |temperature: f32, seed: u32| {
            let mut rig = Rig::new();
            rig.params(GenParams {
                temperature,
                seed,
                ..GenParams::default()
            });
            rig.play(&phrase(10, 0.0));
            rig.handle(ToEngine::Trigger(request(3, 4000.0, None, 16.0)));
            rig.settle();
            rig.notes(3)
        };
        assert_eq!(answer(0.0, 0), answer(0.0, 9));
        assert_eq!(answer(1.0, 5), answer(1.0, 5));
    }

    #[test]
    fn cancel_stops_the_answer() {
        let mut rig = Rig::new();
        rig.params(GenParams {
            density_cap_per_beat: 16.0,
            ..GenParams::default()
        });
        rig.play(&phrase(10, 0.0));
        rig.handle(ToEngine::Trigger(request(4, 4000.0, None, 64.0)));
        rig.step();
        rig.step();
        let before = rig.notes(4).len();
        assert!(before <= 2);
        // A cancel for another answer changes nothing.
        rig.handle(ToEngine::Cancel { answer_id: 3 });
        assert_eq!(rig.ended(4), 0);
        rig.handle(ToEngine::Cancel { answer_id: 4 });
        assert_eq!(rig.ended(4), 1);
        rig.settle();
        assert_eq!(rig.notes(4).len(), before);
        assert_eq!(rig.ended(4), 1);
        assert_eq!(rig.status.engine_status(), EngineStatus::Idle);
        // A new trigger ends the one in progress.
        rig.handle(ToEngine::Trigger(request(5, 9000.0, None, 64.0)));
        rig.step();
        rig.handle(ToEngine::Trigger(request(6, 9500.0, None, 1.0)));
        assert_eq!(rig.ended(5), 1);
        rig.settle();
        assert_eq!(rig.ended(6), 1);
    }

    #[test]
    fn the_context_stays_bounded() {
        let mut rig = Rig::new();
        for i in 0..(CONTEXT_KEEP + CONTEXT_SLACK + 40) {
            let ms = i as f64 * 100.0;
            rig.handle(played(ms, 60 + (i % 12) as u8, true));
            rig.handle(played(ms + 50.0, 60 + (i % 12) as u8, false));
            rig.step();
        }
        rig.settle();
        let len = rig.generator.context_len();
        assert!(
            (CONTEXT_KEEP..=CONTEXT_KEEP + CONTEXT_SLACK).contains(&len),
            "{len}"
        );
        assert_eq!(rig.generator.session_rows(), len + 1);
        // A long-held note does not let the pending notes grow without bound.
        rig.handle(played(100_000.0, 30, true));
        for i in 0..(2 * PENDING_MAX) {
            let ms = 100_100.0 + i as f64 * 100.0;
            rig.handle(played(ms, 80, true));
            rig.handle(played(ms + 50.0, 80, false));
        }
        assert!(rig.generator.tokenizer.len() <= PENDING_MAX + 1);
        rig.handle(ToEngine::Trigger(request(1, 200_000.0, None, 8.0)));
        rig.settle();
        assert_eq!(rig.ended(1), 1);
    }

    #[test]
    fn weird_input_does_not_panic() {
        let mut rig = Rig::new();
        // A trigger with nothing played: the model starts from SOS.
        rig.handle(ToEngine::Trigger(request(1, 100.0, None, 4.0)));
        rig.settle();
        assert_eq!(rig.ended(1), 1);
        let notes = rig.notes(1);
        if let Some(first) = notes.first() {
            assert_eq!(first.start, NoteTime::Millis(100.0));
        }
        // Requests outside the protocol (the audio thread never sends them) end at once, empty.
        rig.play(&phrase(4, 1000.0));
        for (id, tempo, length_ms, beats) in [
            (2, 120.0, 0.0, None),
            (3, 1e12, 2000.0, Some(1e9)),
            (31, 0.0, f64::INFINITY, None),
            (32, f64::NAN, -1.0, Some(f64::NAN)),
            (33, 120.0, MAX_ANSWER_MS * 2.0, Some(-3.0)),
            (34, 120.0, 2000.0, Some(f64::INFINITY)),
        ] {
            rig.handle(ToEngine::Trigger(AnswerRequest {
                tempo_bpm: tempo,
                length_ms,
                ..request(id, 3000.0, beats, 0.0)
            }));
            rig.settle();
            assert_eq!(rig.ended(id), 1);
            assert!(rig.notes(id).is_empty());
        }
        // Absurd tempos, lengths, times and parameters.
        rig.params(GenParams {
            temperature: f32::NAN,
            top_p: -3.0,
            velocity_scale: f32::INFINITY,
            pitch_low: 90,
            pitch_high: 80,
            density_cap_per_beat: 0.5,
            style_strength: f32::NAN,
            ..GenParams::default()
        });
        // Extreme requests within the protocol.
        for (id, tempo, length_ms, beats) in [
            (4, TEMPO_RANGE_BPM.1, 2000.0, Some(1e9)),
            (5, TEMPO_RANGE_BPM.0, MAX_ANSWER_MS, None),
            (6, 120.0, 1e-12, Some(-3.0)),
            (7, TEMPO_RANGE_BPM.0, 1e-9, None),
        ] {
            rig.handle(ToEngine::Trigger(AnswerRequest {
                tempo_bpm: tempo,
                length_ms,
                ..request(id, 5000.0, beats, 0.0)
            }));
            rig.settle();
            assert_eq!(rig.ended(id), 1);
            for n in rig.notes(id) {
                assert!((80..=90).contains(&n.key));
                assert!(time_ms(n.start).is_finite() && time_ms(n.end).is_finite());
            }
        }
        // Played notes with odd values.
        for (ms, channel, key) in [(f64::NAN, 0, 60), (-1e9, 99, 200), (f64::INFINITY, 9, 36)] {
            rig.handle(ToEngine::Note(PlayedNote {
                time: Stamp {
                    clock_ms: ms,
                    beats: None,
                },
                channel,
                key,
                velocity: f32::NAN,
                is_on: true,
            }));
        }
        rig.handle(ToEngine::Trigger(request(9, 6000.0, None, 2.0)));
        rig.settle();
        assert_eq!(rig.ended(9), 1);
        // A cap of zero plays nothing.
        rig.params(GenParams {
            density_cap_per_beat: 0.0,
            ..GenParams::default()
        });
        rig.handle(ToEngine::Trigger(request(10, 7000.0, None, 2.0)));
        rig.settle();
        assert_eq!(rig.ended(10), 1);
        assert!(rig.notes(10).is_empty());
    }

    #[test]
    fn queued_played_notes_are_taken_in_one_batched_step() {
        let mut rig = Rig::new();
        rig.settle();
        let (pushes, batches) = (
            rig.generator.context_pushes(),
            rig.generator.context_batches(),
        );
        // Twelve notes arrive before the generator gets to run (it was busy, say).
        let mut events: Vec<(f64, bool, u8)> = phrase(12, 0.0)
            .iter()
            .flat_map(|&(start, len, key)| [(start, true, key), (start + len, false, key)])
            .collect();
        events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        for (ms, is_on, key) in events {
            rig.handle(played(ms, key, is_on));
        }
        rig.settle();
        assert_eq!(rig.generator.context_pushes(), pushes + 12);
        assert_eq!(rig.generator.context_batches(), batches + 1);
        assert_eq!(rig.generator.session_rows(), 13);
        assert!(rig.generator.is_synced());
        rig.handle(ToEngine::Trigger(request(1, 6000.0, None, 4.0)));
        rig.settle();
        assert_eq!(rig.ended(1), 1);
        assert!(!rig.notes(1).is_empty());
    }

    #[test]
    fn a_quantized_model_answers_and_names_its_format() {
        let tiny = crate::testing::tiny_test_model();
        let cfg = continuo_engine::Config::from_file(&golden().join("tiny_config.json")).unwrap();
        let mut model =
            Moonbeam::load(&cfg, &tiny.weights, continuo_engine::Precision::F32).unwrap();
        model.quantize(continuo_engine::quant::QFormat::Q4).unwrap();
        let path = crate::testing::temp_dir("quantized-model").join("tiny_q4.safetensors");
        continuo_engine::model::weights::save_weights(&model, &path, &serde_json::json!({}))
            .unwrap();
        let mut rig = Rig::with_location(ModelLocation {
            origin: ModelOrigin::User,
            config: tiny.config,
            weights: path,
            quantize: None,
        });
        assert!(rig.generator.has_model());
        let info = rig.status.try_engine_info().unwrap();
        assert!(info.model.contains("q4"), "{info:?}");
        rig.play(&phrase(4, 0.0));
        rig.handle(ToEngine::Trigger(request(1, 3000.0, None, 4.0)));
        rig.settle();
        assert_eq!(rig.ended(1), 1);
        assert!(!rig.notes(1).is_empty());
    }

    #[test]
    fn a_missing_model_fails_visibly_and_answers_nothing() {
        let mut rig = Rig::with_location(ModelLocation {
            origin: ModelOrigin::Environment,
            config: ConfigSpec::Small,
            weights: PathBuf::from("/nonexistent/model.safetensors"),
            quantize: None,
        });
        assert!(!rig.generator.has_model());
        assert_eq!(rig.status.engine_status(), EngineStatus::Failed);
        let info = rig.status.try_engine_info().unwrap();
        assert!(
            info.last_error.contains("/nonexistent/model.safetensors"),
            "{info:?}"
        );
        assert!(info.model.contains("no model"), "{info:?}");
        rig.play(&phrase(3, 0.0));
        rig.handle(ToEngine::Trigger(request(1, 2000.0, None, 4.0)));
        assert_eq!(rig.ended(1), 1);
        assert!(!rig.step());
        assert!(rig.notes(1).is_empty());
        assert_eq!(rig.status.engine_status(), EngineStatus::Failed);
    }

    #[test]
    fn styles_swap_between_decode_steps() {
        let mut rig = Rig::new();
        let model = rig.generator.models.current().unwrap();
        let dir = golden().join("lora_adapter");
        let adapter = continuo_engine::Adapter::from_peft_dir(&dir, &model.cfg).unwrap();
        let style = Style::single(Arc::new(adapter), 1.0);
        rig.params(GenParams {
            temperature: 0.0,
            ..GenParams::default()
        });
        rig.play(&phrase(10, 0.0));
        rig.handle(ToEngine::Trigger(request(1, 4000.0, None, 16.0)));
        rig.settle();
        let base = rig.notes(1);

        rig.handle(ToEngine::Trigger(request(2, 8000.0, None, 64.0)));
        rig.step();
        rig.generator.styles.set("golden", style.clone());
        rig.step();
        assert_eq!(rig.generator.style_name(), Some("golden"));
        rig.settle();
        assert_eq!(rig.ended(2), 1);

        // With the style from the start the greedy answer to the same prompt differs from the
        // base's.
        let mut styled_rig = Rig::new();
        styled_rig.generator.styles.set("golden", style.clone());
        styled_rig.params(GenParams {
            temperature: 0.0,
            ..GenParams::default()
        });
        styled_rig.play(&phrase(10, 0.0));
        styled_rig.handle(ToEngine::Trigger(request(1, 4000.0, None, 16.0)));
        styled_rig.settle();
        assert_eq!(styled_rig.generator.style_name(), Some("golden"));
        let styled: Vec<(f64, u8)> = styled_rig
            .notes(1)
            .iter()
            .map(|n| (time_ms(n.start) - 4000.0, n.key))
            .collect();
        let base: Vec<(f64, u8)> = base
            .iter()
            .map(|n| (time_ms(n.start) - 4000.0, n.key))
            .collect();
        assert_ne!(styled, base);
        rig.generator.styles.clear();
        rig.step();
        assert_eq!(rig.generator.style_name(), None);
    }

    /// The context is re-read under a newly chosen style: a style chosen after the phrase
    /// (between answers, or during an answer to it) gives the same next answer as one chosen
    /// before the phrase was played, with one prefill for the re-read.
    #[test]
    fn a_style_chosen_after_the_phrase_answers_as_one_chosen_before_it() {
        let model = Rig::new().generator.models.current().unwrap();
        let dir = golden().join("lora_adapter");
        let mut adapter = continuo_engine::Adapter::from_peft_dir(&dir, &model.cfg).unwrap();
        adapter.alpha *= 4.0;
        let style = Style::single(Arc::new(adapter), 1.0);
        let greedy = GenParams {
            temperature: 0.0,
            ..GenParams::default()
        };
        let keys = |rig: &Rig, id: u32, from: f64| -> Vec<(f64, u8)> {
            rig.notes(id)
                .iter()
                .map(|n| (time_ms(n.start) - from, n.key))
                .collect()
        };
        let mut before = Rig::new();
        before.generator.styles.set("s", style.clone());
        before.params(greedy);
        before.play(&phrase(12, 0.0));
        before.handle(ToEngine::Trigger(request(1, 4000.0, None, 16.0)));
        before.settle();
        let styled = keys(&before, 1, 4000.0);

        let mut after = Rig::new();
        after.params(greedy);
        after.play(&phrase(12, 0.0));
        after.settle();
        let prefills = after.generator.prefills();
        after.handle(ToEngine::Trigger(request(1, 4000.0, None, 16.0)));
        after.settle();
        let base = keys(&after, 1, 4000.0);
        assert_ne!(base, styled, "the test style must change the answer");
        assert_eq!(
            after.generator.prefills(),
            prefills,
            "no style change, no re-read"
        );
        // Chosen between answers: re-read once, and the answer is the style's.
        after.generator.styles.set("s", style.clone());
        after.settle();
        assert_eq!(after.generator.prefills(), prefills + 1);
        assert!(after.generator.is_synced());
        after.handle(ToEngine::Trigger(request(2, 8000.0, None, 16.0)));
        after.settle();
        assert_eq!(keys(&after, 2, 8000.0), styled);

        // Chosen during an answer: after it, a re-read instead of the truncation.
        let mut during = Rig::new();
        during.params(greedy);
        during.play(&phrase(12, 0.0));
        during.settle();
        let (prefills, truncations) = (during.generator.prefills(), during.generator.truncations());
        during.handle(ToEngine::Trigger(request(1, 4000.0, None, 16.0)));
        during.step();
        during.step();
        during.generator.styles.set("s", style.clone());
        during.settle();
        assert_eq!(during.ended(1), 1);
        assert_eq!(during.generator.prefills(), prefills + 1);
        assert_eq!(during.generator.truncations(), truncations);
        during.handle(ToEngine::Trigger(request(2, 8000.0, None, 16.0)));
        during.settle();
        assert_eq!(keys(&during, 2, 8000.0), styled);
    }

    /// The blend of slots A and B: at 0 the answer is A's alone and at 1 B's alone (the same
    /// notes as with only that style chosen); moved in the middle of an answer it lands
    /// between two notes (the notes before it are A's) and changes the notes after it.
    #[test]
    fn the_blend_lands_between_notes_and_plays_each_slot_at_its_share() {
        let model = Rig::new().generator.models.current().unwrap();
        let adapter = |alpha_factor: f64| {
            let dir = golden().join("lora_adapter");
            let mut adapter = continuo_engine::Adapter::from_peft_dir(&dir, &model.cfg).unwrap();
            adapter.alpha *= alpha_factor;
            SlotStyle {
                name: format!("x{alpha_factor}"),
                style: Style::single(Arc::new(adapter), 1.0),
            }
        };
        let (a, b) = (adapter(1.0), adapter(-4.0));
        // Greedy answers to one phrase; `mid`: the blend moves to 1 after that many notes.
        let answer =
            |slots: (Option<SlotStyle>, Option<SlotStyle>), blend: f32, mid: Option<usize>| {
                let mut rig = Rig::new();
                let model = rig.generator.models.current().unwrap();
                rig.generator.styles.set_pair_for(&model, slots.0, slots.1);
                let params = GenParams {
                    temperature: 0.0,
                    blend,
                    ..GenParams::default()
                };
                rig.params(params);
                rig.play(&phrase(10, 0.0));
                rig.handle(ToEngine::Trigger(request(1, 4000.0, None, 64.0)));
                if let Some(mid) = mid {
                    while rig.notes(1).len() < mid {
                        assert!(rig.step(), "the answer ended before note {mid}");
                    }
                    rig.params(GenParams {
                        blend: 1.0,
                        ..params
                    });
                    rig.step();
                    assert_eq!(rig.generator.style_name(), Some("x-4"));
                }
                rig.settle();
                assert_eq!(rig.ended(1), 1);
                let label = rig.generator.style_name().map(str::to_string);
                let notes: Vec<(f64, u8)> = rig
                    .notes(1)
                    .iter()
                    .map(|n| (time_ms(n.start), n.key))
                    .collect();
                (notes, label)
            };
        let (only_a, _) = answer((Some(a.clone()), None), 0.0, None);
        let (only_b, _) = answer((Some(b.clone()), None), 0.0, None);
        assert_ne!(
            only_a, only_b,
            "the two test styles must answer differently"
        );
        let pair = || (Some(a.clone()), Some(b.clone()));
        assert_eq!(
            answer(pair(), 0.0, None),
            (only_a.clone(), Some("x1".into()))
        );
        assert_eq!(
            answer(pair(), 1.0, None),
            (only_b.clone(), Some("x-4".into()))
        );
        let (half, label) = answer(pair(), 0.5, None);
        assert_eq!(label.as_deref(), Some("x1 50 % + x-4 50 %"));
        assert!(half != only_a && half != only_b);
        // Moved after the third note: those three are A's, what follows is not.
        let (moved, _) = answer(pair(), 0.0, Some(3));
        assert!(only_a.len() > 4 && moved.len() > 3, "{only_a:?} {moved:?}");
        assert_eq!(moved[..3], only_a[..3]);
        assert_ne!(moved[3..], only_a[3..]);
    }

    /// A model the loader installs is taken between answers (never in the middle of one); the
    /// played context carries over, and a style made for the previous model is not used with
    /// the new one.
    #[test]
    fn a_new_model_is_taken_between_answers() {
        let mut rig = Rig::new();
        let old = rig.generator.models.current().unwrap();
        let golden = golden();
        let adapter =
            continuo_engine::Adapter::from_peft_dir(&golden.join("lora_adapter"), &old.cfg)
                .unwrap();
        rig.generator
            .styles
            .set_for(&old, "golden", Style::single(Arc::new(adapter), 1.0));
        rig.play(&phrase(10, 0.0));
        rig.settle();
        assert_eq!(rig.generator.style_name(), Some("golden"));
        rig.handle(ToEngine::Trigger(request(1, 4000.0, None, 16.0)));
        rig.step();
        let other = ModelLocation {
            origin: ModelOrigin::User,
            config: ConfigSpec::File(golden.join("tiny_config.json")),
            weights: golden.join("tiny_model_release_format_bf16.pt"),
            quantize: None,
        };
        let new = rig.generator.models.load(&other).unwrap();
        assert!(!Arc::ptr_eq(&old, &new));
        rig.step();
        assert!(Arc::ptr_eq(rig.generator.model().unwrap(), &old));
        rig.settle();
        assert_eq!(rig.ended(1), 1);
        assert!(Arc::ptr_eq(rig.generator.model().unwrap(), &new));
        assert_eq!(rig.generator.style_name(), None);
        assert_eq!(rig.generator.context_len(), 10);
        assert!(rig.generator.is_synced());
        rig.handle(ToEngine::Trigger(request(2, 8000.0, None, 16.0)));
        rig.settle();
        assert_eq!(rig.ended(2), 1);
        assert!(!rig.notes(2).is_empty());
        // The answers were filed for export.
        let kept = rig.status.captures.try_list().unwrap();
        assert_eq!(kept.last().unwrap().notes.len(), rig.notes(2).len());
        assert_eq!(kept.last().unwrap().style, "base model");
    }

    #[test]
    fn runs_on_the_generator_thread() {
        let status = Arc::new(SharedStatus::default());
        let models = Arc::new(ModelCache::default());
        let (mut to_producer, to_consumer) = rtrb::RingBuffer::new(64);
        let (from_producer, mut from_consumer) = rtrb::RingBuffer::new(4096);
        let mut thread = GeneratorThread::spawn(
            Box::new(MoonbeamGenerator::with_model(
                status.clone(),
                models.clone(),
                Arc::new(StyleSlot::default()),
                tiny_test_model(),
            )),
            to_consumer,
            from_producer,
            status.clone(),
        )
        .unwrap();
        for (ms, len, key) in phrase(6, 0.0) {
            to_producer.push(played(ms, key, true)).unwrap();
            to_producer.push(played(ms + len, key, false)).unwrap();
        }
        to_producer
            .push(ToEngine::Trigger(request(7, 3000.0, None, 4.0)))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut got = Vec::new();
        while Instant::now() < deadline {
            match from_consumer.pop() {
                Ok(FromEngine::AnswerEnd { answer_id: 7 }) => break,
                Ok(FromEngine::Note(n)) => got.push(n),
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
        assert!(!got.is_empty());
        assert_eq!(got[0].start, NoteTime::Millis(3000.0));
        thread.stop();
        assert_eq!(status.engine_status(), EngineStatus::Stopped);
        // The model stays with the instance for the next activation.
        assert!(models.current().is_some());
    }
}
