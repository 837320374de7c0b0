//! The audio thread: one plugin instance's real-time core, driven block by block by
//! [`Core::process`].
//!
//! **Thread:** the host's audio thread only (and the main thread for [`Core::new`],
//! [`Core::activate`] and [`Core::deactivate`], which the host never runs concurrently with
//! `process()`). **May touch:** its own state, the lock-free queues to and from the generator
//! ([`crate::protocol`]), the atomics of [`SharedStatus`] and the editor's triple buffer. Nothing
//! called from `process()` allocates, locks or blocks.
//!
//! * **Thru** (or bypass) passes every input event on unchanged at its sample: notes, note
//!   expressions, controllers, pitch bend, channel pressure and program changes. Only note-offs
//!   of notes passed on are sent, and hold pedals (sustain, sostenuto, hold 2) passed on as down
//!   are always released (see [`HeldPedals`]), so nothing is left hanging downstream.
//! * **MIDI triggers** (`trgsrc`): a note-on of the trigger note, or the trigger controller (or
//!   the sustain pedal) rising through 64, on any channel, does exactly what the trigger button
//!   does, in every mode, at its own sample: the answer in progress is released and a new one
//!   requested. In call-and-response that answers at once, without waiting for the silence. The
//!   trigger events are consumed: not passed on, not sent to the generator as played notes, not
//!   played by the voice, and not counted as playing (no barge-in, no silence reset). The
//!   trigger note's note-off is dropped because no note-on was recorded for it. While bypassed,
//!   nothing triggers and everything passes through.
//! * **The built-in voice** ignores controllers: the sustain pedal does not hold its notes.
//!
//! It is separate from the nice-plug glue in `lib.rs` so it can be driven by plain unit tests
//! through [`BlockIo`].
//!
//! The phases of a block live in the submodules: [`transport`] (play, stop, jumps),
//! [`answers`] (when an answer is asked for, its length and start, and the notes coming back),
//! [`input`] (thru, triggers and the player's notes), [`output`] (sending and releasing
//! generated notes), [`schedule`] (the generated notes waiting or sounding) and [`voice`] (the
//! built-in piano).

mod answers;
mod input;
mod output;
pub mod schedule;
pub mod transport;
pub mod voice;

#[cfg(test)]
mod roll_tests;
#[cfg(test)]
mod tests;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use nice_plug::midi::NoteEvent;

use crate::params::Settings;
use crate::protocol::{FromEngine, GenParams, Stamp, ToEngine};
use crate::status::{AnswerState, EditorSnapshot, SharedStatus};
use crate::status::{NoteRing, RECENT_NOTES, UPCOMING_NOTES};

pub use answers::TriggerKind;
pub use answers::{answer_lead_ms, ANSWER_LEAD_MARGIN, ANSWER_LEAD_MS, MAX_ANSWER_LEAD_MS};
use schedule::{BlockClock, DueEvent, EventTime, HeldPedals, NoteCounts, Schedule};
use transport::{HostTime, TransportMemory};
pub use transport::{TransportSnapshot, JUMP_TOLERANCE_BEATS};
use voice::{Kernel, PianoVoice};

/// Room for generated notes waiting or sounding.
pub const SCHEDULE_CAPACITY: usize = 1024;

/// The event input and output of one block. The plugin implements it over nice-plug's process
/// context; tests implement it over vectors.
pub trait BlockIo {
    /// The next input event, in time order.
    fn next_event(&mut self) -> Option<NoteEvent<()>>;
    /// Sends an output event. Returns `false` if the host refused it.
    fn send(&mut self, event: NoteEvent<()>) -> bool;
}

/// The audio-thread state of one plugin instance.
pub struct Core {
    sample_rate: f64,
    /// The plugin clock: samples processed since `activate()`.
    clock: i64,
    /// Audio → generator queue; `None` while inactive.
    to_engine: Option<rtrb::Producer<ToEngine>>,
    /// Generator → audio queue; `None` while inactive.
    from_engine: Option<rtrb::Consumer<FromEngine>>,
    status: Arc<SharedStatus>,
    /// Editor snapshots; written once per block.
    snapshot: Option<triple_buffer::Input<EditorSnapshot>>,
    /// The piano roll's most recent notes, as they sounded; copied into every snapshot.
    recent: NoteRing<RECENT_NOTES>,
    /// Generated notes as they were scheduled, for the roll's preview of what is to come.
    upcoming: NoteRing<UPCOMING_NOTES>,

    schedule: Schedule,
    due: Vec<DueEvent>,
    /// Output notes passed through and not yet released.
    thru: NoteCounts,
    /// Keys the player holds (input side, whatever thru says).
    held: NoteCounts,
    /// Hold pedals passed on as down and not yet released.
    pedals: HeldPedals,
    synth: PianoVoice,

    previous_settings: Option<Settings>,
    previous_transport: Option<TransportMemory>,
    sent_gen_params: Option<GenParams>,
    /// Release everything at the next block (after `reset()` or reactivation).
    release_requested: bool,

    next_answer_id: u32,
    /// Generated notes of answers before this id are discarded (cancelled answers).
    accept_from_id: u32,
    /// The latest answer requested and not yet finished.
    current_answer: Option<u32>,
    /// The generator has sent all notes of `current_answer`.
    engine_done: bool,
    /// The player played since the last answer was requested.
    phrase_pending: bool,
    /// Plugin clock sample of the first note-on of the pending phrase.
    phrase_started: i64,
    /// How long the latest phrase was (first note-on to last note event), in ms: the length
    /// of an answer "as played", for its lead.
    last_phrase_ms: Option<f64>,
    /// The player played at all since activation (continuous mode needs something to go on).
    has_context: bool,
    /// Plugin clock sample of the player's last note-on or note-off.
    last_player_activity: i64,
    /// Continuous mode: where the stream generated so far ends, in beats.
    continuous_next_beat: Option<f64>,
    /// Where the answer last requested plays, on the plugin clock in samples (start, end), and
    /// its first beat while the transport plays: the editor's planned span and "waiting for
    /// beat N".
    answer_span: Option<(i64, i64)>,
    answer_start_beats: Option<f64>,
    previous_trigger_param: bool,
    /// The controller `trigger_cc_down` follows; when the setting changes it starts over.
    trigger_cc_tracked: Option<u8>,
    /// Per channel, whether the trigger controller was last at 64 or more (rising edges
    /// trigger). Followed in bypass too, so no edge is made up after it.
    trigger_cc_down: [bool; 16],
    /// A MIDI trigger at this sample of the current block, acted on right after its event.
    midi_trigger_at: Option<u32>,
    /// The clock of the block being processed.
    block: BlockClock,
}

impl Core {
    /// Creates the core. Called on the main thread; allocates everything the audio thread needs.
    pub fn new(status: Arc<SharedStatus>, snapshot: triple_buffer::Input<EditorSnapshot>) -> Self {
        let schedule = Schedule::new(SCHEDULE_CAPACITY);
        let due = schedule.new_due_list();
        Self {
            sample_rate: 48_000.0,
            clock: 0,
            to_engine: None,
            from_engine: None,
            status,
            snapshot: Some(snapshot),
            recent: NoteRing::new(),
            upcoming: NoteRing::new(),
            schedule,
            due,
            thru: NoteCounts::default(),
            held: NoteCounts::default(),
            pedals: HeldPedals::default(),
            synth: PianoVoice::new(48_000.0),
            previous_settings: None,
            previous_transport: None,
            sent_gen_params: None,
            release_requested: false,
            next_answer_id: 1,
            accept_from_id: 1,
            current_answer: None,
            engine_done: true,
            phrase_pending: false,
            phrase_started: 0,
            last_phrase_ms: None,
            has_context: false,
            last_player_activity: i64::MIN / 4,
            continuous_next_beat: None,
            answer_span: None,
            answer_start_beats: None,
            previous_trigger_param: false,
            trigger_cc_tracked: None,
            trigger_cc_down: [false; 16],
            midi_trigger_at: None,
            block: BlockClock {
                start_sample: 0,
                len: 0,
                beats: None,
            },
        }
    }

    /// Runs the built-in voice with `kernel` if this CPU can (see [`PianoVoice::set_kernel`]),
    /// to measure it; returns whether it does. Not for the audio thread.
    pub fn set_voice_kernel(&mut self, kernel: Kernel) -> bool {
        self.synth.set_kernel(kernel)
    }

    /// Connects the queues of a freshly started generator. Called on the main thread from
    /// `activate()`. Notes still sounding from a previous activation are released at the first
    /// block.
    pub fn activate(
        &mut self,
        sample_rate: f64,
        to_engine: rtrb::Producer<ToEngine>,
        from_engine: rtrb::Consumer<FromEngine>,
    ) {
        self.sample_rate = sample_rate.max(1.0);
        self.clock = 0;
        self.to_engine = Some(to_engine);
        self.from_engine = Some(from_engine);
        // The clock restarts: the roll's times would no longer mean anything.
        self.recent.clear();
        self.upcoming.clear();
        self.schedule.discard_waiting();
        for slot in 0..self.schedule.capacity() as u16 {
            if let Some(note) = self.schedule.get_mut(slot) {
                note.off = EventTime::IMMEDIATE;
            }
        }
        self.synth.set_sample_rate(sample_rate as f32);
        self.previous_transport = None;
        self.sent_gen_params = None;
        self.release_requested = true;
        self.accept_from_id = self.next_answer_id;
        self.current_answer = None;
        self.engine_done = true;
        self.phrase_pending = false;
        self.last_phrase_ms = None;
        self.has_context = false;
        self.last_player_activity = i64::MIN / 4;
        self.continuous_next_beat = None;
        self.trigger_cc_down = [false; 16];
        self.midi_trigger_at = None;
    }

    /// Disconnects the queues. Called on the main thread from `deactivate()`, after which the
    /// generator thread can be joined.
    pub fn deactivate(&mut self) {
        self.to_engine = None;
        self.from_engine = None;
    }

    /// Asks for everything to be released at the next block. Real-time safe (nice-plug may call
    /// `reset()` on the audio thread).
    pub fn reset(&mut self) {
        self.release_requested = true;
    }

    /// Output notes sounding now (passed through and generated).
    pub fn sounding_output_notes(&self) -> usize {
        self.thru.total() as usize + self.schedule.sounding()
    }

    /// Processes one block of `len` samples. Called on the audio thread.
    ///
    /// The phases run in this order: everything that releases notes (at the block's first
    /// sample, before anything else is sent), the generator's messages, the triggers due at the
    /// block's start, then the input and the due generated notes merged in time order, and last
    /// the editor snapshot.
    pub fn process(
        &mut self,
        io: &mut impl BlockIo,
        len: u32,
        transport: &TransportSnapshot,
        settings: &Settings,
        audio: &mut [&mut [f32]],
    ) {
        for channel in audio.iter_mut() {
            channel.fill(0.0);
        }
        if len == 0 {
            return;
        }
        let time = HostTime::read(transport, self.sample_rate);
        self.block = BlockClock {
            start_sample: self.clock,
            len,
            beats: time
                .now
                .playing
                .then_some((time.now.pos_beats, time.samples_per_beat)),
        };
        self.release_for_changes(io, &time, settings);
        self.receive_from_engine(settings.bypass);
        self.trigger_at_block_start(io, &time, settings);
        self.play_block(io, &time, settings, audio);
        if self.current_answer.is_some() && self.engine_done && self.schedule.is_empty() {
            self.current_answer = None;
        }
        self.previous_settings = Some(*settings);
        self.publish_snapshot(&time, settings);
        self.clock += i64::from(len);
    }

    /// Everything that releases notes or cancels the answer because something changed: a
    /// release request, a transport stop or jump, bypass, a mode change, the voice switched off;
    /// and new generation settings for the generator.
    fn release_for_changes(&mut self, io: &mut impl BlockIo, time: &HostTime, settings: &Settings) {
        let previous = self.previous_settings.unwrap_or(*settings);
        if std::mem::take(&mut self.release_requested) {
            self.release_everything(io, 0);
        }
        if self.follow_transport(time) {
            self.release_everything(io, 0);
        }
        if settings.bypass && !previous.bypass {
            self.release_everything(io, 0);
        }
        if settings.mode != previous.mode {
            self.cancel_answer(io, 0);
        }
        if !settings.voice && previous.voice {
            self.synth.release_all();
        }
        if self.sent_gen_params != Some(settings.gen)
            && self.send_to_engine(ToEngine::Params(settings.gen))
        {
            self.sent_gen_params = Some(settings.gen);
        }
    }

    /// The input events and the generated events due in this block, merged in time order, with
    /// the voice rendered up to each of them.
    fn play_block(
        &mut self,
        io: &mut impl BlockIo,
        time: &HostTime,
        settings: &Settings,
        audio: &mut [&mut [f32]],
    ) {
        let len = self.block.len;
        let mut due = std::mem::take(&mut self.due);
        if settings.bypass {
            due.clear();
        } else {
            let stats = self.schedule.collect_due(&self.block, &mut due);
            if stats.late > 0 {
                self.status
                    .late_notes
                    .fetch_add(u64::from(stats.late), Ordering::Relaxed);
            }
            if stats.overflow > 0 {
                self.status
                    .dropped_output_events
                    .fetch_add(u64::from(stats.overflow), Ordering::Relaxed);
            }
        }
        let mut due_index = 0;
        let mut rendered = 0usize;
        while let Some(event) = io.next_event() {
            let timing = event.timing().min(len - 1);
            let before = due[due_index..]
                .iter()
                .take_while(|d| d.timing < timing)
                .count();
            for &due_event in &due[due_index..due_index + before] {
                rendered = self.render_and_send(io, audio, rendered, due_event, settings);
            }
            due_index += before;
            self.synth.render(audio, rendered, timing as usize);
            rendered = rendered.max(timing as usize);
            if self.handle_input(io, event, timing, settings) {
                // Barge-in released every generated note: nothing more is due in this block.
                due_index = due.len();
            }
            if let Some(at) = self.midi_trigger_at.take() {
                // Exactly what the trigger button does, at the trigger's sample.
                self.cancel_answer(io, at);
                self.start_answer(
                    TriggerKind::Manual,
                    settings,
                    time.now.at(at, time.samples_per_beat),
                    time.bar_start_beats,
                    at,
                );
                // The cancelled answer's notes are gone: nothing more is due in this block.
                due_index = due.len();
            }
        }
        for &due_event in &due[due_index..] {
            rendered = self.render_and_send(io, audio, rendered, due_event, settings);
        }
        self.due = due;
        self.synth.render(audio, rendered, len as usize);
    }

    /// Renders the voice from `rendered` up to a due generated event, sends the event and
    /// returns how far the voice is rendered now.
    fn render_and_send(
        &mut self,
        io: &mut impl BlockIo,
        audio: &mut [&mut [f32]],
        rendered: usize,
        due_event: DueEvent,
        settings: &Settings,
    ) -> usize {
        self.synth
            .render(audio, rendered, due_event.timing as usize);
        self.send_due(io, due_event, settings);
        rendered.max(due_event.timing as usize)
    }

    /// Publishes the editor snapshot for the block just processed (before the clock moves on).
    fn publish_snapshot(&mut self, time: &HostTime, settings: &Settings) {
        let len = self.block.len;
        let HostTime {
            now,
            samples_per_beat,
            bar_start_beats,
        } = *time;
        let silence_beats = (self.clock.saturating_sub(self.last_player_activity) as f64
            / samples_per_beat)
            .min(1.0e6);
        let sounding_output_notes = self.sounding_output_notes() as u32;
        let answer_state = if settings.bypass {
            AnswerState::Bypassed
        } else if self.current_answer.is_some() {
            AnswerState::Answering
        } else {
            AnswerState::Listening
        };
        let answering = answer_state == AnswerState::Answering;
        let now_samples = self.clock + i64::from(len);
        let Some(input) = &mut self.snapshot else {
            return;
        };
        // Written straight into the triple buffer's back buffer: the note rings (most of the
        // snapshot's 4 KB) are copied once, and nothing is allocated.
        *input.input_buffer_mut() = EditorSnapshot {
            playing: now.playing,
            tempo_bpm: now.tempo_bpm,
            pos_beats: if now.playing { now.pos_beats } else { 0.0 },
            answer_state,
            silence_beats,
            held_player_notes: self.held.total(),
            sounding_output_notes,
            scheduled_notes: self.schedule.len() as u32,
            active_voices: self.synth.active_voices() as u32,
            now_samples,
            now_beats: if now.playing {
                now.pos_beats + f64::from(len) / samples_per_beat
            } else {
                0.0
            },
            bar_start_beats: bar_start_beats.filter(|b| b.is_finite()).unwrap_or(0.0),
            beats_per_bar: now.beats_per_bar,
            sample_rate_hz: self.sample_rate,
            recent: self.recent,
            upcoming: self.upcoming,
            accept_from_answer: self.accept_from_id,
            answer_span: self.answer_span.filter(|_| answering),
            answer_start_beats: self.answer_start_beats.filter(|_| answering && now.playing),
        };
        input.publish();
    }

    /// The time at sample `offset` of the current block.
    fn stamp(&self, offset: u32, beats: Option<f64>) -> Stamp {
        Stamp {
            clock_ms: (self.clock + i64::from(offset)) as f64 * 1000.0 / self.sample_rate,
            beats,
        }
    }

    /// Pushes a message to the generator; a full queue drops and counts it.
    fn send_to_engine(&mut self, message: ToEngine) -> bool {
        let Some(producer) = &mut self.to_engine else {
            return false;
        };
        if producer.push(message).is_err() {
            SharedStatus::count(&self.status.dropped_to_engine);
            return false;
        }
        true
    }

    /// Song position at sample `offset` of the current block, while the transport plays.
    fn beats_at(&self, offset: u32) -> Option<f64> {
        self.block
            .beats
            .map(|(pos, samples_per_beat)| pos + f64::from(offset) / samples_per_beat)
    }
}

/// The musical "now" at the start of a block.
#[derive(Debug, Clone, Copy)]
pub(super) struct Moment {
    pos_beats: f64,
    playing: bool,
    tempo_bpm: f64,
    beats_per_bar: f64,
}

impl Moment {
    /// The moment `offset` samples later.
    fn at(self, offset: u32, samples_per_beat: f64) -> Self {
        Self {
            pos_beats: if self.playing {
                self.pos_beats + f64::from(offset) / samples_per_beat
            } else {
                self.pos_beats
            },
            ..self
        }
    }
}
