//! The audio-thread core: thru, scheduling of generated notes, call-and-response, MIDI
//! triggers, note release and the built-in voice, for one block at a time.
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
//! through [`BlockIo`]. Everything called from [`Core::process`] is real-time safe: no
//! allocation, no locks, no blocking; the only ways out are the lock-free queues, atomics and
//! the triple buffer.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use nice_plug::midi::{Channel, Key, NoteEvent, VoiceID};

use crate::params::{Mode, Settings};
use crate::protocol::{
    AnswerRequest, FromEngine, GenParams, PlayedNote, Stamp, ToEngine, TransportInfo, TriggerKind,
};
use crate::roll::{NoteRing, NoteSource, RollNote, RECENT_NOTES, UPCOMING_NOTES};
use crate::schedule::{
    controller_is_down, BlockClock, DueEvent, EventTime, HeldPedals, NoteCounts, NoteState,
    Schedule, ScheduledNote,
};
use crate::status::{AnswerState, EditorSnapshot, SharedStatus};
use crate::voice::{Kernel, PianoVoice, VoiceSource};

/// Room for generated notes waiting or sounding.
pub const SCHEDULE_CAPACITY: usize = 1024;
/// Tempo assumed when the host gives none.
pub const DEFAULT_TEMPO_BPM: f64 = 120.0;
/// How far ahead of "now" an answer starts at the earliest, so the generator has time to produce
/// its first notes. While the transport plays, the answer then starts on the next beat. Once the
/// generator's speed is measured, the lead also covers generating the whole answer: see
/// [`answer_lead_ms`].
pub const ANSWER_LEAD_MS: f64 = 100.0;
/// The measured time to generate an answer is stretched by this much for its lead.
pub const ANSWER_LEAD_MARGIN: f64 = 1.25;
/// The longest lead: past this (a model slower than about a quarter of real time), answers
/// stream, and notes not ready in time are dropped and counted.
pub const MAX_ANSWER_LEAD_MS: f64 = 2_000.0;
/// How far ahead of the trigger an answer of `answer_ms` of music starts at the earliest: enough
/// for the generator to produce all of it first, at the measured `generation_ratio` (generation
/// time per time of music; `None` before any answer) with [`ANSWER_LEAD_MARGIN`], but at least
/// [`ANSWER_LEAD_MS`] and at most [`MAX_ANSWER_LEAD_MS`].
pub fn answer_lead_ms(generation_ratio: Option<f64>, answer_ms: f64) -> f64 {
    let whole = generation_ratio.unwrap_or(0.0) * answer_ms.max(0.0) * ANSWER_LEAD_MARGIN;
    if whole.is_finite() {
        whole.clamp(ANSWER_LEAD_MS, MAX_ANSWER_LEAD_MS)
    } else {
        MAX_ANSWER_LEAD_MS
    }
}

/// The bars an answer of `kind` lasts (0: as long as the phrase played); a continuous answer is
/// at least a bar. The continuous mode's look-ahead and the request use this one rule.
fn answer_bars(kind: TriggerKind, settings: &Settings) -> u32 {
    if kind == TriggerKind::Continuous {
        settings.answer_bars.max(1)
    } else {
        settings.answer_bars
    }
}

/// A song position this far (in beats) from where the previous block said it would be counts as
/// a jump (seek or loop).
pub const JUMP_TOLERANCE_BEATS: f64 = 0.01;

/// The event input and output of one block. The plugin implements it over nice-plug's process
/// context; tests implement it over vectors.
pub trait BlockIo {
    /// The next input event, in time order.
    fn next_event(&mut self) -> Option<NoteEvent<()>>;
    /// Sends an output event. Returns `false` if the host refused it.
    fn send(&mut self, event: NoteEvent<()>) -> bool;
}

/// The host transport for one block.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TransportSnapshot {
    pub playing: bool,
    pub tempo_bpm: Option<f64>,
    /// Song position in quarter notes at the block's first sample.
    pub pos_beats: Option<f64>,
    /// Start of the current bar in quarter notes.
    pub bar_start_beats: Option<f64>,
    pub time_sig: Option<(i32, i32)>,
}

/// What the previous block saw of the transport.
#[derive(Debug, Clone, Copy, PartialEq)]
struct TransportMemory {
    playing: bool,
    tempo_bpm: f64,
    beats_per_bar: f64,
    /// Where the song position should be at the next block if nothing jumps.
    expected_pos_beats: Option<f64>,
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

        let tempo_bpm = transport
            .tempo_bpm
            .filter(|t| t.is_finite() && *t > 0.0)
            .unwrap_or(DEFAULT_TEMPO_BPM);
        let samples_per_beat = self.sample_rate * 60.0 / tempo_bpm;
        let pos_beats = transport.pos_beats.filter(|p| p.is_finite());
        let playing = transport.playing && pos_beats.is_some();
        let pos_beats = pos_beats.unwrap_or(0.0);
        let beats_per_bar = match transport.time_sig {
            Some((num, den)) if num > 0 && den > 0 => f64::from(num) * 4.0 / f64::from(den),
            _ => 4.0,
        };
        let clock = BlockClock {
            start_sample: self.clock,
            len,
            beats: playing.then_some((pos_beats, samples_per_beat)),
        };
        self.block = clock;
        let previous = self.previous_settings.unwrap_or(*settings);

        // Things that release notes all happen at the block's first sample, before anything
        // else is sent in this block.
        if std::mem::take(&mut self.release_requested) {
            self.release_everything(io, 0);
        }

        let memory = self.previous_transport;
        let jumped = playing
            && memory.is_some_and(|m| {
                m.playing
                    && m.expected_pos_beats
                        .is_some_and(|e| (pos_beats - e).abs() > JUMP_TOLERANCE_BEATS)
            });
        let stopped = !playing && memory.is_some_and(|m| m.playing);
        if jumped || stopped {
            self.release_everything(io, 0);
        }
        let transport_changed = memory.is_none_or(|m| {
            m.playing != playing || m.tempo_bpm != tempo_bpm || m.beats_per_bar != beats_per_bar
        });
        if transport_changed || jumped {
            self.send_to_engine(ToEngine::Transport(TransportInfo {
                time: self.stamp(0, playing.then_some(pos_beats)),
                playing,
                tempo_bpm,
                beats_per_bar,
                jumped,
            }));
        }
        self.previous_transport = Some(TransportMemory {
            playing,
            tempo_bpm,
            beats_per_bar,
            expected_pos_beats: playing.then(|| pos_beats + f64::from(len) / samples_per_beat),
        });

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

        self.receive_from_engine(settings.bypass);

        let trigger_controller = settings.trigger_controller();
        if trigger_controller != self.trigger_cc_tracked {
            // A new trigger controller starts "up", unless it is a pedal passed on as down.
            self.trigger_cc_tracked = trigger_controller;
            for (channel, down) in (0..16u8).zip(&mut self.trigger_cc_down) {
                *down = trigger_controller.is_some_and(|cc| self.pedals.is_down(channel, cc));
            }
        }

        // Triggers, evaluated at the block's first sample (MIDI triggers at their own sample,
        // below).
        let trigger_edge = settings.trigger && !self.previous_trigger_param;
        self.previous_trigger_param = settings.trigger;
        let trigger_requested = self.status.trigger_request.swap(false, Ordering::Relaxed);
        let now = Moment {
            pos_beats,
            playing,
            tempo_bpm,
            beats_per_bar,
        };
        if !settings.bypass {
            if trigger_edge || trigger_requested {
                // A trigger while an answer plays replaces it ("regenerate").
                self.cancel_answer(io, 0);
                self.start_answer(
                    TriggerKind::Manual,
                    settings,
                    now,
                    transport.bar_start_beats,
                    0,
                );
            } else {
                match settings.mode {
                    Mode::CallResponse => {
                        let silent_samples = self.clock.saturating_sub(self.last_player_activity);
                        if self.current_answer.is_none()
                            && self.phrase_pending
                            && self.held.total() == 0
                            && silent_samples as f64 >= settings.silence_beats * samples_per_beat
                        {
                            self.start_answer(
                                TriggerKind::Silence,
                                settings,
                                now,
                                transport.bar_start_beats,
                                0,
                            );
                        }
                    }
                    Mode::Continuous => {
                        let bars = answer_bars(TriggerKind::Continuous, settings);
                        let answer_ms = f64::from(bars) * beats_per_bar * (60_000.0 / tempo_bpm);
                        let lead_ms = answer_lead_ms(self.status.generation_ratio(), answer_ms);
                        let lead_beats = lead_ms / 60_000.0 * tempo_bpm;
                        let needs_more = self
                            .continuous_next_beat
                            .is_none_or(|end| end - pos_beats < beats_per_bar + lead_beats);
                        if playing
                            && self.has_context
                            && (self.current_answer.is_none() || self.engine_done)
                            && needs_more
                        {
                            self.start_answer(
                                TriggerKind::Continuous,
                                settings,
                                now,
                                transport.bar_start_beats,
                                0,
                            );
                        }
                    }
                    Mode::Manual => {}
                }
            }
        }

        // Generated events due in this block, merged in time order with the input events.
        let mut due = std::mem::take(&mut self.due);
        if settings.bypass {
            due.clear();
        } else {
            let stats = self.schedule.collect_due(&clock, &mut due);
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
            while due_index < due.len() && due[due_index].timing < timing {
                let due_event = due[due_index];
                self.synth
                    .render(audio, rendered, due_event.timing as usize);
                rendered = rendered.max(due_event.timing as usize);
                self.send_due(io, due_event, settings);
                due_index += 1;
            }
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
                    now.at(at, samples_per_beat),
                    transport.bar_start_beats,
                    at,
                );
                // The cancelled answer's notes are gone: nothing more is due in this block.
                due_index = due.len();
            }
        }
        while due_index < due.len() {
            let due_event = due[due_index];
            self.synth
                .render(audio, rendered, due_event.timing as usize);
            rendered = rendered.max(due_event.timing as usize);
            self.send_due(io, due_event, settings);
            due_index += 1;
        }
        self.due = due;
        self.synth.render(audio, rendered, len as usize);

        if self.current_answer.is_some() && self.engine_done && self.schedule.is_empty() {
            self.current_answer = None;
        }
        self.previous_settings = Some(*settings);
        let silence_beats = (self.clock.saturating_sub(self.last_player_activity) as f64
            / samples_per_beat)
            .min(1.0e6);
        self.clock += i64::from(len);
        let sounding_output_notes = self.sounding_output_notes() as u32;
        let Some(input) = &mut self.snapshot else {
            return;
        };
        // Written straight into the triple buffer's back buffer: the note rings (most of the
        // snapshot's 4 KB) are copied once, and nothing is allocated.
        *input.input_buffer_mut() = EditorSnapshot {
            playing,
            tempo_bpm,
            pos_beats: if playing { pos_beats } else { 0.0 },
            answer_state: if settings.bypass {
                AnswerState::Bypassed
            } else if self.current_answer.is_some() {
                AnswerState::Answering
            } else {
                AnswerState::Listening
            },
            silence_beats,
            held_player_notes: self.held.total(),
            sounding_output_notes,
            scheduled_notes: self.schedule.len() as u32,
            active_voices: self.synth.active_voices() as u32,
            now_samples: self.clock,
            now_beats: if playing {
                pos_beats + f64::from(len) / samples_per_beat
            } else {
                0.0
            },
            bar_start_beats: transport
                .bar_start_beats
                .filter(|b| b.is_finite())
                .unwrap_or(0.0),
            beats_per_bar,
            sample_rate_hz: self.sample_rate,
            recent: self.recent,
            upcoming: self.upcoming,
            accept_from_answer: self.accept_from_id,
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

    /// Records a played note-on in the piano roll (whatever thru and bypass say).
    fn record_played_on(&mut self, channel: u8, key: u8, velocity: f32, timing: u32) {
        let start = self.clock + i64::from(timing);
        self.recent.push(RollNote::started(
            NoteSource::Played,
            channel,
            key,
            velocity,
            start,
            0,
        ));
    }

    /// Ends played notes in the piano roll: bit `key` of `released[channel]` per released key.
    fn record_played_offs(&mut self, released: &[u128; 16], timing: u32) {
        let end = self.clock + i64::from(timing);
        for (channel, &keys) in released.iter().enumerate() {
            let mut keys = keys;
            while keys != 0 {
                let key = keys.trailing_zeros() as u8;
                keys &= keys - 1;
                self.recent
                    .close_all(NoteSource::Played, channel as u8, key, 0, end);
            }
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

    fn receive_from_engine(&mut self, bypassed: bool) {
        let Some(consumer) = &mut self.from_engine else {
            return;
        };
        while let Ok(message) = consumer.pop() {
            match message {
                FromEngine::Note(note) => {
                    if bypassed || note.answer_id < self.accept_from_id {
                        continue;
                    }
                    let scheduled_on = EventTime::from_note_time(note.start, self.sample_rate);
                    let scheduled_off = EventTime::from_note_time(note.end, self.sample_rate);
                    let inserted = self.schedule.insert(ScheduledNote {
                        answer_id: note.answer_id,
                        on: scheduled_on,
                        off: scheduled_off,
                        key: note.key.min(127),
                        velocity: if note.velocity.is_finite() {
                            note.velocity.clamp(1.0 / 127.0, 1.0)
                        } else {
                            1.0
                        },
                        state: NoteState::Waiting,
                    });
                    if !inserted {
                        SharedStatus::count(&self.status.dropped_schedule_full);
                    } else if let (Some(on), Some(off)) = (
                        self.block.offset_of(scheduled_on),
                        self.block.offset_of(scheduled_off),
                    ) {
                        // The roll's preview, on the plugin clock (beats at the current tempo).
                        let start = self.block.start_sample + on;
                        self.upcoming.push(RollNote {
                            end: self.block.start_sample + off.max(on),
                            ..RollNote::started(
                                NoteSource::Generated,
                                0,
                                note.key,
                                note.velocity,
                                start,
                                note.answer_id,
                            )
                        });
                    }
                }
                FromEngine::AnswerEnd { answer_id } => {
                    if self.current_answer == Some(answer_id) {
                        self.engine_done = true;
                    }
                }
                // `Outbox` already stored it in `SharedStatus`.
                FromEngine::Status(_) => {}
            }
        }
    }

    /// Requests an answer. `now` is the moment at sample `offset` of the current block.
    fn start_answer(
        &mut self,
        kind: TriggerKind,
        settings: &Settings,
        now: Moment,
        bar_start_beats: Option<f64>,
        offset: u32,
    ) {
        let answer_id = self.next_answer_id;
        let bars = answer_bars(kind, settings);
        let length_beats = f64::from(bars) * now.beats_per_bar;
        let ms_per_beat = 60_000.0 / now.tempo_bpm;
        if self.phrase_pending {
            let samples = self.last_player_activity - self.phrase_started;
            if samples > 0 {
                self.last_phrase_ms = Some(samples as f64 * 1000.0 / self.sample_rate);
            }
        }
        // "As played" answers are as long as the phrase, as the generator makes them.
        let answer_ms = if length_beats > 0.0 {
            length_beats * ms_per_beat
        } else {
            self.last_phrase_ms.unwrap_or(4.0 * ms_per_beat)
        };
        let lead_ms = answer_lead_ms(self.status.generation_ratio(), answer_ms);
        let start = if now.playing {
            let earliest = now.pos_beats + lead_ms / ms_per_beat;
            let beat = if kind == TriggerKind::Continuous {
                let origin = bar_start_beats.filter(|b| b.is_finite()).unwrap_or(0.0);
                let next_bar =
                    origin + ((earliest - origin) / now.beats_per_bar).ceil() * now.beats_per_bar;
                self.continuous_next_beat
                    .map_or(next_bar, |end| end.max(next_bar))
            } else {
                earliest.ceil()
            };
            let mut stamp = self.stamp(offset, Some(beat));
            stamp.clock_ms += (beat - now.pos_beats) * ms_per_beat;
            stamp
        } else {
            let mut stamp = self.stamp(offset, None);
            stamp.clock_ms += lead_ms;
            stamp
        };
        let request = AnswerRequest {
            answer_id,
            kind,
            start,
            length_beats,
            tempo_bpm: now.tempo_bpm,
        };
        if !self.send_to_engine(ToEngine::Trigger(request)) {
            // Tried again at the next block.
            return;
        }
        self.next_answer_id += 1;
        self.current_answer = Some(answer_id);
        self.engine_done = false;
        self.phrase_pending = false;
        if kind == TriggerKind::Continuous {
            self.continuous_next_beat = start.beats.map(|b| b + length_beats);
        }
        SharedStatus::count(&self.status.answers_triggered);
    }

    /// Stops the current answer: tells the generator, discards its notes still to come and
    /// releases the generated notes sounding, at sample `timing`.
    fn cancel_answer(&mut self, io: &mut impl BlockIo, timing: u32) {
        if let Some(answer_id) = self.current_answer.take() {
            self.send_to_engine(ToEngine::Cancel { answer_id });
        }
        self.engine_done = true;
        self.accept_from_id = self.next_answer_id;
        self.continuous_next_beat = None;
        self.release_generated(io, timing);
    }

    /// Sends a note-off for every generated note sounding and forgets those still to come.
    fn release_generated(&mut self, io: &mut impl BlockIo, timing: u32) {
        self.schedule.discard_waiting();
        for slot in 0..self.schedule.capacity() as u16 {
            let Some(note) = self.schedule.get(slot).copied() else {
                continue;
            };
            let NoteState::Sounding { channel } = note.state else {
                continue;
            };
            if io.send(note_off(timing, channel, note.key)) {
                self.schedule.remove(slot);
                self.recent.close(
                    NoteSource::Generated,
                    channel,
                    note.key,
                    u32::from(slot),
                    self.clock + i64::from(timing),
                );
            } else {
                // Tried again at the next block: late is better than stuck.
                SharedStatus::count(&self.status.dropped_output_events);
                if let Some(note) = self.schedule.get_mut(slot) {
                    note.off = EventTime::IMMEDIATE;
                }
            }
            self.synth
                .note_off(VoiceSource::Generated, Some(channel), Some(note.key));
        }
    }

    /// Releases every output note (generated and passed through) and hold pedal passed on, and
    /// silences the voice.
    fn release_everything(&mut self, io: &mut impl BlockIo, timing: u32) {
        self.cancel_answer(io, timing);
        let status = &self.status;
        self.thru.release_matching(None, None, |channel, key| {
            let sent = io.send(note_off(timing, channel, key));
            if !sent {
                SharedStatus::count(&status.dropped_output_events);
            }
            sent
        });
        self.pedals.release_all(|channel, cc| {
            let sent = io.send(NoteEvent::MidiCC {
                timing,
                channel,
                cc,
                value: 0.0,
            });
            if !sent {
                SharedStatus::count(&status.dropped_output_events);
            }
            sent
        });
        self.synth.release_all();
    }

    fn send_due(&mut self, io: &mut impl BlockIo, event: DueEvent, settings: &Settings) {
        let Some(note) = self.schedule.get(event.slot).copied() else {
            return;
        };
        match (event.is_on, note.state) {
            (true, NoteState::Waiting) => {
                let channel = settings.out_channel & 15;
                let sent = io.send(NoteEvent::NoteOn {
                    timing: event.timing,
                    voice_id: VoiceID::Wildcard,
                    channel: Channel::Number(channel),
                    key: Key::Number(note.key),
                    velocity: note.velocity,
                });
                if sent {
                    if let Some(note) = self.schedule.get_mut(event.slot) {
                        note.state = NoteState::Sounding { channel };
                    }
                    self.recent.push(RollNote::started(
                        NoteSource::Generated,
                        channel,
                        note.key,
                        note.velocity,
                        self.clock + i64::from(event.timing),
                        u32::from(event.slot),
                    ));
                    SharedStatus::count(&self.status.generated_notes_played);
                    if settings.voice {
                        self.synth.note_on(
                            VoiceSource::Generated,
                            channel,
                            note.key,
                            note.velocity,
                        );
                    }
                } else {
                    self.schedule.remove(event.slot);
                    SharedStatus::count(&self.status.dropped_output_events);
                }
            }
            (false, NoteState::Sounding { channel }) => {
                if io.send(note_off(event.timing, channel, note.key)) {
                    self.schedule.remove(event.slot);
                    self.recent.close(
                        NoteSource::Generated,
                        channel,
                        note.key,
                        u32::from(event.slot),
                        self.clock + i64::from(event.timing),
                    );
                } else {
                    SharedStatus::count(&self.status.dropped_output_events);
                    if let Some(note) = self.schedule.get_mut(event.slot) {
                        note.off = EventTime::IMMEDIATE;
                    }
                }
                self.synth
                    .note_off(VoiceSource::Generated, Some(channel), Some(note.key));
            }
            _ => {}
        }
    }

    /// Handles one input event at sample `timing`. Returns `true` if it barged in on an answer.
    fn handle_input(
        &mut self,
        io: &mut impl BlockIo,
        event: NoteEvent<()>,
        timing: u32,
        settings: &Settings,
    ) -> bool {
        let forward = settings.thru || settings.bypass;
        // MIDI triggers work unless bypassed.
        let armed = !settings.bypass;
        let mut barged_in = false;
        match event {
            NoteEvent::NoteOn {
                channel,
                key,
                velocity,
                ..
            } => {
                // A note-on must name its channel and key; anything else is malformed.
                let (Some(c), Some(k)) = (channel.number(), key.number()) else {
                    return false;
                };
                let (c, k) = (c & 15, k & 127);
                if armed && settings.trigger_key() == Some(k) {
                    // A trigger, not a note. Nothing is recorded, so its note-off finds nothing
                    // to release and is dropped too.
                    self.midi_trigger_at = Some(timing);
                    return false;
                }
                self.held.note_on(c, k);
                self.record_played_on(c, k, velocity, timing);
                self.last_player_activity = self.clock + i64::from(timing);
                if !settings.bypass {
                    if !self.phrase_pending {
                        self.phrase_started = self.clock + i64::from(timing);
                    }
                    self.phrase_pending = true;
                    self.has_context = true;
                    if settings.mode == Mode::CallResponse && self.current_answer.is_some() {
                        // Barge-in: the answer stops before the player's note.
                        self.cancel_answer(io, timing);
                        barged_in = true;
                    }
                    let time = self.stamp(timing, self.beats_at(timing));
                    self.send_to_engine(ToEngine::Note(PlayedNote {
                        time,
                        channel: c,
                        key: k,
                        velocity,
                        is_on: true,
                    }));
                    if settings.voice {
                        self.synth.note_on(VoiceSource::Player, c, k, velocity);
                    }
                }
                if forward {
                    if self.thru.note_on(c, k) {
                        if !io.send(with_timing(event, timing)) {
                            self.thru.note_off(c, k);
                            SharedStatus::count(&self.status.dropped_output_events);
                        }
                    } else {
                        SharedStatus::count(&self.status.dropped_output_events);
                    }
                }
            }
            NoteEvent::NoteOff { channel, key, .. } | NoteEvent::Choke { channel, key, .. } => {
                let (c, k) = (
                    channel.number().map(|c| c & 15),
                    key.number().map(|k| k & 127),
                );
                self.player_released(c, k, timing, settings);
                match (c, k) {
                    (Some(c), Some(k)) => {
                        // Only note-offs of notes we passed on are sent, so the output never
                        // holds an unmatched note-off, whatever thru and bypass did meanwhile.
                        if self.thru.note_off(c, k) {
                            let off = match event {
                                NoteEvent::Choke { .. } => note_off(timing, c, k),
                                _ => with_timing(event, timing),
                            };
                            if !io.send(off) {
                                self.thru.note_on(c, k);
                                SharedStatus::count(&self.status.dropped_output_events);
                            }
                        }
                    }
                    // A wildcard note-off releases every matching note passed on.
                    (c, k) => {
                        let status = &self.status;
                        self.thru.release_matching(c, k, |c, k| {
                            let sent = io.send(note_off(timing, c, k));
                            if !sent {
                                SharedStatus::count(&status.dropped_output_events);
                            }
                            sent
                        });
                    }
                }
            }
            NoteEvent::PolyPressure { channel, key, .. }
            | NoteEvent::PolyVolume { channel, key, .. }
            | NoteEvent::PolyPan { channel, key, .. }
            | NoteEvent::PolyTuning { channel, key, .. }
            | NoteEvent::PolyVibrato { channel, key, .. }
            | NoteEvent::PolyExpression { channel, key, .. }
            | NoteEvent::PolyBrightness { channel, key, .. } => {
                // Expressions of a trigger note go with it, unless that key was passed on (it
                // was held before it became the trigger note).
                let of_trigger = armed
                    && settings
                        .trigger_key()
                        .is_some_and(|t| key.number() == Some(t));
                let passed_on = match (channel.number(), key.number()) {
                    (Some(c), Some(k)) => self.thru.count(c, k) > 0,
                    _ => false,
                };
                if forward && (passed_on || !of_trigger) {
                    self.forward(io, event, timing);
                }
            }
            NoteEvent::MidiCC {
                channel, cc, value, ..
            } => self.handle_controller(io, event, timing, (channel & 15, cc), value, settings),
            NoteEvent::MidiPitchBend { .. }
            | NoteEvent::MidiChannelPressure { .. }
            | NoteEvent::MidiProgramChange { .. }
                if forward =>
            {
                self.forward(io, event, timing);
            }
            _ => {}
        }
        barged_in
    }

    /// Handles a controller: a trigger, a hold pedal or any other. Called on the audio thread.
    fn handle_controller(
        &mut self,
        io: &mut impl BlockIo,
        event: NoteEvent<()>,
        timing: u32,
        (channel, cc): (u8, u8),
        value: f32,
        settings: &Settings,
    ) {
        let forward = settings.thru || settings.bypass;
        let down = controller_is_down(value);
        if self.trigger_cc_tracked == Some(cc) {
            let was_down = std::mem::replace(&mut self.trigger_cc_down[usize::from(channel)], down);
            if !settings.bypass {
                if down && !was_down {
                    self.midi_trigger_at = Some(timing);
                }
                // Consumed, except the release of a pedal passed on as down before it became
                // the trigger.
                if !down && self.pedals.is_down(channel, cc) && self.forward(io, event, timing) {
                    self.pedals.release(channel, cc);
                }
                return;
            }
        }
        if down {
            if forward && self.forward(io, event, timing) {
                self.pedals.press(channel, cc);
            }
        } else if (forward || self.pedals.is_down(channel, cc)) && self.forward(io, event, timing) {
            self.pedals.release(channel, cc);
        }
    }

    /// Sends an input event on unchanged at sample `timing`; counts it if the host refuses it.
    fn forward(&mut self, io: &mut impl BlockIo, event: NoteEvent<()>, timing: u32) -> bool {
        let sent = io.send(with_timing(event, timing));
        if !sent {
            SharedStatus::count(&self.status.dropped_output_events);
        }
        sent
    }

    /// Bookkeeping for a player note-off (`None` = wildcard).
    fn player_released(&mut self, c: Option<u8>, k: Option<u8>, timing: u32, settings: &Settings) {
        let mut released = [0u128; 16];
        let mut any = false;
        self.held.release_matching(c, k, |c, k| {
            released[usize::from(c)] |= 1 << k;
            any = true;
            true
        });
        if !any {
            return;
        }
        self.record_played_offs(&released, timing);
        self.last_player_activity = self.clock + i64::from(timing);
        if settings.bypass {
            return;
        }
        let time = self.stamp(timing, self.beats_at(timing));
        for (c, &keys) in released.iter().enumerate() {
            // Only the set bits: a note-off releases one key, not 128 candidates.
            let mut rest = keys;
            while rest != 0 {
                let k = rest.trailing_zeros() as u8;
                rest &= rest - 1;
                {
                    self.send_to_engine(ToEngine::Note(PlayedNote {
                        time,
                        channel: c as u8,
                        key: k,
                        velocity: 0.0,
                        is_on: false,
                    }));
                    self.synth
                        .note_off(VoiceSource::Player, Some(c as u8), Some(k));
                }
            }
        }
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
struct Moment {
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

fn note_off(timing: u32, channel: u8, key: u8) -> NoteEvent<()> {
    NoteEvent::NoteOff {
        timing,
        voice_id: VoiceID::Wildcard,
        channel: Channel::Number(channel),
        key: Key::Number(key),
        velocity: 0.0,
    }
}

/// The event with its timing clamped into the block.
fn with_timing(mut event: NoteEvent<()>, timing: u32) -> NoteEvent<()> {
    let shift = event.timing().saturating_sub(timing);
    event.subtract_timing(shift);
    event
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, VecDeque};

    use super::*;
    use crate::generator::{EchoGenerator, Generator, Outbox};
    use crate::params::TriggerSource;
    use crate::protocol::{GeneratedNote, NoteTime};

    struct VecIo {
        input: VecDeque<NoteEvent<()>>,
        output: Vec<NoteEvent<()>>,
        /// Refuse every output event (a host whose buffer is full).
        refuse: bool,
    }

    impl BlockIo for VecIo {
        fn next_event(&mut self) -> Option<NoteEvent<()>> {
            self.input.pop_front()
        }

        fn send(&mut self, event: NoteEvent<()>) -> bool {
            if !self.refuse {
                self.output.push(event);
            }
            !self.refuse
        }
    }

    /// A core with the stand-in generator run synchronously after every block.
    struct Rig {
        core: Core,
        generator: EchoGenerator,
        engine_in: rtrb::Consumer<ToEngine>,
        engine_out: rtrb::Producer<FromEngine>,
        status: Arc<SharedStatus>,
        settings: Settings,
        transport: TransportSnapshot,
        sample_rate: f64,
        /// Running output note count per (channel, key); must never go negative.
        sounding: HashMap<(u8, u8), i32>,
        /// Hold pedals down at the output, per (channel, controller).
        pedals_down: HashMap<(u8, u8), bool>,
        refuse_output: bool,
        audio_peak: f32,
    }

    impl Rig {
        fn new(sample_rate: f64) -> Self {
            let status = Arc::new(SharedStatus::default());
            let (snapshot_in, _snapshot_out) =
                triple_buffer::triple_buffer(&EditorSnapshot::default());
            let mut core = Core::new(status.clone(), snapshot_in);
            let (to_in, to_out) = rtrb::RingBuffer::new(1024);
            let (from_in, from_out) = rtrb::RingBuffer::new(1024);
            core.activate(sample_rate, to_in, from_out);
            Self {
                core,
                generator: EchoGenerator::new(),
                engine_in: to_out,
                engine_out: from_in,
                status,
                settings: Settings {
                    voice: false,
                    ..Settings::default()
                },
                transport: TransportSnapshot::default(),
                sample_rate,
                sounding: HashMap::new(),
                pedals_down: HashMap::new(),
                refuse_output: false,
                audio_peak: 0.0,
            }
        }

        fn play(&mut self, tempo_bpm: f64, pos_beats: f64) {
            self.transport = TransportSnapshot {
                playing: true,
                tempo_bpm: Some(tempo_bpm),
                pos_beats: Some(pos_beats),
                bar_start_beats: Some((pos_beats / 4.0).floor() * 4.0),
                time_sig: Some((4, 4)),
            };
        }

        fn stop(&mut self) {
            self.transport.playing = false;
        }

        /// Runs one block and returns its output as text, e.g. `"12 on 0:60"`.
        fn block(&mut self, len: u32, input: &[NoteEvent<()>]) -> Vec<String> {
            let mut io = VecIo {
                input: input.iter().copied().collect(),
                output: Vec::new(),
                refuse: self.refuse_output,
            };
            let (mut left, mut right) = (vec![0.0f32; len as usize], vec![0.0f32; len as usize]);
            let settings = self.settings;
            let transport = self.transport;
            self.core.process(
                &mut io,
                len,
                &transport,
                &settings,
                &mut [&mut left[..], &mut right[..]],
            );
            self.audio_peak = left
                .iter()
                .chain(&right)
                .fold(self.audio_peak, |peak, x| peak.max(x.abs()));
            if self.transport.playing {
                let tempo = self.transport.tempo_bpm.unwrap();
                *self.transport.pos_beats.as_mut().unwrap() +=
                    f64::from(len) / (self.sample_rate * 60.0 / tempo);
            }
            while let Ok(message) = self.engine_in.pop() {
                self.generator.handle(
                    message,
                    &mut Outbox::new(&mut self.engine_out, &self.status),
                );
            }
            let mut last_timing = 0;
            io.output
                .iter()
                .map(|event| {
                    assert!(event.timing() >= last_timing, "output out of time order");
                    assert!(event.timing() < len, "output outside the block");
                    last_timing = event.timing();
                    match *event {
                        NoteEvent::NoteOn {
                            timing,
                            channel,
                            key,
                            ..
                        } => {
                            let (c, k) = (channel.number().unwrap(), key.number().unwrap());
                            *self.sounding.entry((c, k)).or_default() += 1;
                            format!("{timing} on {c}:{k}")
                        }
                        NoteEvent::NoteOff {
                            timing,
                            channel,
                            key,
                            ..
                        } => {
                            let (c, k) = (channel.number().unwrap(), key.number().unwrap());
                            let count = self.sounding.entry((c, k)).or_default();
                            *count -= 1;
                            assert!(*count >= 0, "unmatched note-off {c}:{k}");
                            format!("{timing} off {c}:{k}")
                        }
                        NoteEvent::MidiCC {
                            timing,
                            channel,
                            cc,
                            value,
                        } => {
                            if HeldPedals::is_hold_pedal(cc) {
                                self.pedals_down
                                    .insert((channel, cc), controller_is_down(value));
                            }
                            format!("{timing} cc {channel}:{cc}={}", (value * 127.0).round())
                        }
                        other => format!("{other:?}"),
                    }
                })
                .collect()
        }

        /// Runs `n` empty blocks and returns all their output, with timings made absolute from
        /// the first of them.
        fn run(&mut self, n: usize, len: u32) -> Vec<String> {
            let mut all = Vec::new();
            for i in 0..n {
                for line in self.block(len, &[]) {
                    let (timing, rest) = line.split_once(' ').unwrap();
                    let absolute = timing.parse::<usize>().unwrap() + i * len as usize;
                    all.push(format!("{absolute} {rest}"));
                }
            }
            all
        }

        fn stuck(&self) -> Vec<(u8, u8)> {
            self.sounding
                .iter()
                .filter(|(_, n)| **n != 0)
                .map(|(k, _)| *k)
                .collect()
        }

        /// Hold pedals left down at the output, as (channel, controller).
        fn stuck_pedals(&self) -> Vec<(u8, u8)> {
            self.pedals_down
                .iter()
                .filter(|(_, down)| **down)
                .map(|(k, _)| *k)
                .collect()
        }
    }

    fn on(timing: u32, key: u8) -> NoteEvent<()> {
        NoteEvent::NoteOn {
            timing,
            voice_id: VoiceID::ID(7),
            channel: Channel::Number(0),
            key: Key::Number(key),
            velocity: 0.5,
        }
    }

    fn off(timing: u32, key: u8) -> NoteEvent<()> {
        NoteEvent::NoteOff {
            timing,
            voice_id: VoiceID::ID(7),
            channel: Channel::Number(0),
            key: Key::Number(key),
            velocity: 0.0,
        }
    }

    /// A controller change with a raw 0..=127 value.
    fn cc(timing: u32, channel: u8, cc: u8, raw: u8) -> NoteEvent<()> {
        NoteEvent::MidiCC {
            timing,
            channel,
            cc,
            value: f32::from(raw) / 127.0,
        }
    }

    fn note_on(timing: u32, channel: u8, key: u8) -> NoteEvent<()> {
        NoteEvent::NoteOn {
            timing,
            voice_id: VoiceID::Wildcard,
            channel: Channel::Number(channel),
            key: Key::Number(key),
            velocity: 0.8,
        }
    }

    fn note_off(timing: u32, channel: u8, key: u8) -> NoteEvent<()> {
        super::note_off(timing, channel, key)
    }

    /// The host fuzz in `tests/` runs the real generator thread, whose answers are often late
    /// on a busy machine; this one runs the stand-in synchronously, so answers always arrive
    /// and the generated-note paths get exercised deterministically.
    #[test]
    fn random_blocks_keep_the_output_well_formed() {
        let mut rig = Rig::new(48_000.0);
        rig.settings.voice = true;
        let mut state: u64 = 5;
        let mut next = |n: u64| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) % n
        };
        let mut held = [[false; 128]; 2];
        let mut generated = 0;
        for _ in 0..10_000 {
            let frames = 1 + next(256) as u32;
            let mut input = Vec::new();
            for _ in 0..next(6) {
                let timing = next(u64::from(frames)) as u32;
                // Now and then the trigger note.
                let key = if next(20) == 0 {
                    24
                } else {
                    48 + next(24) as u8
                };
                let channel = next(2) as u8;
                let event = match next(100) {
                    // The sustain pedal, the default trigger controller, sostenuto, mod wheel.
                    90.. => cc(
                        timing,
                        channel,
                        [64, 20, 66, 1][next(4) as usize],
                        [0, 127, next(128) as u8][next(3) as usize],
                    ),
                    0..45 => NoteEvent::NoteOn {
                        timing,
                        voice_id: VoiceID::Wildcard,
                        channel: Channel::Number(channel),
                        key: Key::Number(key),
                        velocity: next(128) as f32 / 127.0,
                    },
                    45..88 => NoteEvent::NoteOff {
                        timing,
                        voice_id: VoiceID::Wildcard,
                        channel: Channel::Number(channel),
                        key: Key::Number(key),
                        velocity: 0.0,
                    },
                    _ => NoteEvent::Choke {
                        timing,
                        voice_id: VoiceID::Wildcard,
                        channel: Channel::Number(channel),
                        key: Key::Wildcard,
                    },
                };
                input.push(event);
            }
            input.sort_by_key(|e| e.timing());
            for event in &input {
                match *event {
                    NoteEvent::NoteOn { channel, key, .. } => {
                        held[usize::from(channel.number().unwrap())]
                            [usize::from(key.number().unwrap())] = true;
                    }
                    NoteEvent::NoteOff { channel, key, .. } => {
                        held[usize::from(channel.number().unwrap())]
                            [usize::from(key.number().unwrap())] = false;
                    }
                    NoteEvent::Choke { channel, .. } => {
                        held[usize::from(channel.number().unwrap())] = [false; 128]
                    }
                    _ => {}
                }
            }
            if next(100) < 3 {
                match next(10) {
                    0 => rig.settings.bypass = next(2) == 0,
                    1 => rig.settings.thru = next(2) == 0,
                    2 => {
                        rig.settings.mode =
                            [Mode::CallResponse, Mode::Manual, Mode::Continuous][next(3) as usize]
                    }
                    3 => rig.settings.voice = next(2) == 0,
                    4 => rig.settings.out_channel = next(16) as u8,
                    5 | 6 => rig.settings.trigger = !rig.settings.trigger,
                    7 => {
                        rig.settings.trigger_source = [
                            TriggerSource::Button,
                            TriggerSource::Note,
                            TriggerSource::ControlChange,
                            TriggerSource::Sustain,
                        ][next(4) as usize]
                    }
                    8 => rig.settings.trigger_note = [None, Some(24), Some(60)][next(3) as usize],
                    _ => rig.settings.silence_beats = 0.25 + next(4) as f64 * 0.25,
                }
            }
            if next(100) == 0 {
                match next(3) {
                    0 if rig.transport.playing => rig.stop(),
                    0 => rig.play(60.0 + next(120) as f64, 0.0),
                    1 => rig.transport.pos_beats = Some(next(64) as f64),
                    _ => rig.transport.tempo_bpm = Some(40.0 + next(200) as f64),
                }
            }
            generated += rig
                .block(frames, &input)
                .iter()
                .filter(|line| {
                    line.contains(" on ")
                        && line.split(':').nth(1).unwrap().parse::<u8>().unwrap() >= 72
                })
                .count();
        }
        let mut releases = Vec::new();
        for (channel, keys) in held.iter().enumerate() {
            for (key, _) in keys.iter().enumerate().filter(|(_, down)| **down) {
                releases.push(NoteEvent::NoteOff {
                    timing: 0,
                    voice_id: VoiceID::Wildcard,
                    channel: Channel::Number(channel as u8),
                    key: Key::Number(key as u8),
                    velocity: 0.0,
                });
            }
        }
        // The player lets go of every pedal too.
        for channel in 0..2 {
            releases.extend([cc(0, channel, 64, 0), cc(0, channel, 66, 0)]);
        }
        rig.block(64, &releases);
        assert!(rig.stuck_pedals().is_empty(), "{:?}", rig.stuck_pedals());
        rig.settings.bypass = false;
        rig.block(64, &[]);
        rig.settings.bypass = true;
        rig.block(64, &[]);
        assert!(rig.stuck().is_empty(), "{:?}", rig.stuck());
        let counters = rig.status.counters();
        assert!(
            generated > 20 && counters.answers_triggered > 20,
            "{generated} generated, {counters:?}"
        );
        assert_eq!(counters.dropped_total(), 0);
        assert!(rig.audio_peak.is_finite() && rig.audio_peak < 4.0);
    }

    #[test]
    fn thru_forwards_at_exact_offsets_unchanged() {
        let mut rig = Rig::new(48_000.0);
        rig.settings.mode = Mode::Manual;
        let input = [on(0, 60), on(17, 64), off(17, 60), off(255, 64)];
        let mut io = VecIo {
            input: input.into_iter().collect(),
            output: Vec::new(),
            refuse: false,
        };
        rig.core.process(
            &mut io,
            256,
            &TransportSnapshot::default(),
            &rig.settings,
            &mut [],
        );
        assert_eq!(io.output, input.to_vec(), "events pass through bit for bit");
    }

    #[test]
    fn thru_forwards_every_midi_event_unchanged() {
        let mut rig = Rig::new(48_000.0);
        rig.settings.mode = Mode::Manual;
        let input = [
            cc(0, 0, 64, 127),
            on(0, 60),
            NoteEvent::MidiPitchBend {
                timing: 3,
                channel: 0,
                value: 0.75,
            },
            NoteEvent::PolyPressure {
                timing: 4,
                voice_id: VoiceID::ID(7),
                channel: Channel::Number(0),
                key: Key::Number(60),
                pressure: 0.5,
            },
            NoteEvent::MidiChannelPressure {
                timing: 5,
                channel: 9,
                pressure: 0.25,
            },
            cc(17, 4, 1, 90),
            NoteEvent::MidiProgramChange {
                timing: 30,
                channel: 2,
                program: 41,
            },
            off(31, 60),
            cc(255, 0, 64, 0),
        ];
        let process = |rig: &mut Rig| {
            let mut io = VecIo {
                input: input.into_iter().collect(),
                output: Vec::new(),
                refuse: false,
            };
            rig.core.process(
                &mut io,
                256,
                &TransportSnapshot::default(),
                &rig.settings,
                &mut [],
            );
            io.output
        };
        assert_eq!(process(&mut rig), input, "events pass through bit for bit");
        // Thru off: nothing at all (no note or pedal was passed on).
        rig.settings.thru = false;
        assert!(process(&mut rig).is_empty());
    }

    #[test]
    fn a_trigger_note_answers_like_the_button_and_is_consumed() {
        let mut rig = Rig::new(48_000.0);
        rig.settings.mode = Mode::Manual;
        rig.settings.voice = true;
        rig.settings.trigger_source = TriggerSource::Note; // C1 (24)
        assert_eq!(rig.block(480, &[on(0, 60)]), ["0 on 0:60"]);
        assert_eq!(rig.block(480, &[off(0, 60)]), ["0 off 0:60"]);
        rig.run(200, 480);
        assert_eq!(rig.core.synth.active_voices(), 0);
        // The trigger note, on another channel, at sample 100 of the block starting at sample
        // 96,960: nothing comes out, nothing sounds, nothing is held.
        assert!(rig.block(480, &[note_on(100, 5, 24)]).is_empty());
        assert_eq!(rig.core.synth.active_voices(), 0);
        assert_eq!(rig.core.held.total(), 0);
        assert_eq!(rig.status.counters().answers_triggered, 1);
        // Its note-off is dropped too.
        assert!(rig.block(480, &[note_off(7, 5, 24)]).is_empty());
        // The answer echoes the phrase (60 → 72) and not the trigger note (24 → 36): the
        // generator never saw it. It starts ANSWER_LEAD_MS after the trigger's own sample:
        // 97,060 + 4,800 = 101,860, which is 3,940 after the next block (97,920).
        assert_eq!(rig.run(20, 480), ["3940 on 0:72", "4900 off 0:72"]);
        assert!(rig.stuck().is_empty());
        // Not counted as playing: no second answer follows in call-and-response.
        rig.settings.mode = Mode::CallResponse;
        assert!(rig.run(200, 480).is_empty());
        assert_eq!(rig.status.counters().answers_triggered, 1);
    }

    #[test]
    fn a_midi_trigger_takes_the_next_beat_after_its_own_sample() {
        let mut rig = Rig::new(48_000.0);
        rig.settings.mode = Mode::Manual;
        rig.settings.thru = false;
        rig.settings.answer_bars = 1;
        rig.settings.trigger_source = TriggerSource::Sustain;
        // 120 BPM at 48 kHz: 24,000 samples per beat, 480 samples = 0.02 beat.
        rig.play(120.0, 0.0);
        rig.block(480, &[on(0, 60)]);
        rig.block(480, &[off(0, 60)]);
        rig.block(18_000, &[]);
        // The block starts at beat 0.79: the button would answer on beat 1 (0.79 + 0.2 lead).
        // The pedal goes down at sample 480 (beat 0.81), so the answer takes beat 2.
        assert!(rig.block(960, &[cc(480, 0, 64, 127)]).is_empty());
        let out = rig.run(80, 480);
        // Beat 2 is (2 - 0.83) × 24,000 = 28,080 samples after the trigger block.
        assert_eq!(out[0], "28080 on 0:72");
    }

    #[test]
    fn midi_triggers_only_when_chosen_and_not_bypassed() {
        let mut rig = Rig::new(48_000.0);
        rig.settings.mode = Mode::Manual;
        // The default source is the button: C1 is an ordinary note.
        assert_eq!(rig.block(64, &[on(1, 24)]), ["1 on 0:24"]);
        // It became the trigger note while held: its note-off still goes out.
        rig.settings.trigger_source = TriggerSource::Note;
        assert_eq!(rig.block(64, &[off(2, 24)]), ["2 off 0:24"]);
        assert!(rig.block(64, &[on(1, 24), off(9, 24)]).is_empty());
        assert_eq!(rig.status.counters().answers_triggered, 1);
        // No trigger note chosen.
        rig.settings.trigger_note = None;
        assert_eq!(
            rig.block(64, &[on(1, 24), off(2, 24)]),
            ["1 on 0:24", "2 off 0:24"]
        );
        // Another note.
        rig.settings.trigger_note = Some(60);
        assert!(rig.block(64, &[on(1, 60), off(2, 60)]).is_empty());
        assert_eq!(rig.status.counters().answers_triggered, 2);
        // Bypassed: everything passes, nothing triggers.
        rig.settings.bypass = true;
        assert_eq!(
            rig.block(64, &[on(1, 60), off(2, 60)]),
            ["1 on 0:60", "2 off 0:60"]
        );
        rig.settings.trigger_source = TriggerSource::ControlChange;
        assert_eq!(rig.block(64, &[cc(3, 0, 20, 127)]), ["3 cc 0:20=127"]);
        assert_eq!(rig.status.counters().answers_triggered, 2);
        // The controller was followed while bypassed: still down, so no edge afterwards.
        rig.settings.bypass = false;
        assert!(rig.block(64, &[cc(3, 0, 20, 127)]).is_empty());
        assert_eq!(rig.status.counters().answers_triggered, 2);
        assert!(rig.stuck().is_empty() && rig.stuck_pedals().is_empty());
    }

    #[test]
    fn a_controller_triggers_when_it_rises_through_64() {
        let mut rig = Rig::new(48_000.0);
        rig.settings.mode = Mode::Manual;
        rig.settings.trigger_source = TriggerSource::ControlChange; // CC 20
        let out = rig.block(
            480,
            &[
                cc(0, 0, 20, 0),
                cc(10, 0, 20, 63),
                cc(20, 0, 20, 64),
                cc(30, 0, 20, 127),
                cc(40, 0, 1, 90),
            ],
        );
        assert_eq!(out, ["40 cc 0:1=90"], "the trigger controller is consumed");
        assert_eq!(rig.status.counters().answers_triggered, 1);
        // Each channel has its own edge; down, up and down again triggers again.
        assert!(rig
            .block(
                480,
                &[cc(0, 3, 20, 127), cc(5, 0, 20, 10), cc(6, 0, 20, 100)]
            )
            .is_empty());
        assert_eq!(rig.status.counters().answers_triggered, 3);
        // Choosing another controller starts from "up".
        rig.settings.trigger_cc = Some(21);
        assert!(rig.block(480, &[cc(0, 0, 21, 127)]).is_empty());
        assert_eq!(rig.status.counters().answers_triggered, 4);
        assert_eq!(rig.block(480, &[cc(0, 0, 20, 0)]), ["0 cc 0:20=0"]);
    }

    #[test]
    fn the_sustain_pedal_triggers_or_passes_through() {
        let mut rig = Rig::new(48_000.0);
        rig.settings.thru = false;
        rig.settings.answer_bars = 0;
        rig.settings.silence_beats = 4.0;
        // Not the trigger (and thru off): not passed on, and the voice ignores it.
        rig.settings.voice = true;
        assert!(rig.block(480, &[cc(0, 0, 64, 127)]).is_empty());
        rig.block(480, &[cc(0, 0, 64, 0)]);
        rig.settings.voice = false;
        // Call-and-response with the pedal as the trigger: it answers at once instead of
        // after four beats of silence.
        rig.settings.trigger_source = TriggerSource::Sustain;
        rig.block(480, &[on(0, 60)]);
        rig.block(480, &[off(0, 60)]);
        assert!(rig.block(480, &[cc(10, 0, 64, 127)]).is_empty());
        assert_eq!(rig.status.counters().answers_triggered, 1);
        // The pedal is not playing: the answer is not barged in on, and the answer was the
        // phrase's, so the silence that follows asks for nothing more.
        let out = rig.run(300, 480);
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(out[0].ends_with("on 0:72"));
        rig.block(480, &[cc(0, 0, 64, 0)]);
        assert!(rig.run(300, 480).is_empty());
        assert_eq!(rig.status.counters().answers_triggered, 1);
    }

    #[test]
    fn pedals_passed_on_are_always_released() {
        let mut rig = Rig::new(48_000.0);
        rig.settings.mode = Mode::Manual;
        assert_eq!(rig.block(64, &[cc(1, 2, 64, 127)]), ["1 cc 2:64=127"]);
        rig.settings.thru = false;
        // Thru off: other controllers stop, but the pedal passed on down is let up.
        assert_eq!(
            rig.block(64, &[cc(1, 2, 1, 90), cc(2, 2, 64, 0), cc(3, 2, 64, 0)]),
            ["2 cc 2:64=0"]
        );
        // Bypass lifts what is down.
        rig.settings.thru = true;
        assert_eq!(rig.block(64, &[cc(5, 0, 66, 127)]), ["5 cc 0:66=127"]);
        rig.settings.bypass = true;
        assert_eq!(rig.block(64, &[]), ["0 cc 0:66=0"]);
        rig.settings.bypass = false;
        // So do a transport stop and a reset.
        rig.play(120.0, 0.0);
        assert_eq!(rig.block(64, &[cc(5, 1, 64, 100)]), ["5 cc 1:64=100"]);
        rig.stop();
        assert_eq!(rig.block(64, &[]), ["0 cc 1:64=0"]);
        assert_eq!(rig.block(64, &[cc(5, 1, 69, 127)]), ["5 cc 1:69=127"]);
        rig.core.reset();
        assert_eq!(rig.block(64, &[]), ["0 cc 1:69=0"]);
        // A pedal down when it becomes the trigger: its release is passed on, and does not
        // trigger; pressing it again does.
        assert_eq!(rig.block(64, &[cc(5, 0, 64, 127)]), ["5 cc 0:64=127"]);
        rig.settings.trigger_source = TriggerSource::Sustain;
        // A half pedal still down is no new press.
        assert!(rig.block(64, &[cc(4, 0, 64, 100)]).is_empty());
        assert_eq!(rig.block(64, &[cc(5, 0, 64, 0)]), ["5 cc 0:64=0"]);
        assert_eq!(rig.status.counters().answers_triggered, 0);
        assert!(rig
            .block(64, &[cc(5, 0, 64, 127), cc(6, 0, 64, 0)])
            .is_empty());
        assert_eq!(rig.status.counters().answers_triggered, 1);
        assert!(rig.stuck_pedals().is_empty());
    }

    #[test]
    fn thru_off_still_releases_notes_passed_on_before() {
        let mut rig = Rig::new(48_000.0);
        rig.settings.mode = Mode::Manual;
        assert_eq!(rig.block(64, &[on(3, 60)]), ["3 on 0:60"]);
        rig.settings.thru = false;
        assert_eq!(
            rig.block(64, &[on(1, 62), off(5, 60), off(6, 62)]),
            ["5 off 0:60"]
        );
        assert!(rig.stuck().is_empty());
    }

    #[test]
    fn orphan_note_offs_are_not_sent() {
        let mut rig = Rig::new(48_000.0);
        assert_eq!(rig.block(64, &[off(3, 60)]), Vec::<String>::new());
    }

    #[test]
    fn call_and_response_answers_after_silence_in_wall_time() {
        let mut rig = Rig::new(48_000.0);
        rig.settings.thru = false;
        rig.settings.answer_bars = 0; // as long as the phrase
        rig.settings.silence_beats = 1.0; // 0.5 s at the default 120 BPM
                                          // The player plays C4 for 480 samples (10 ms) at clock 0.
        rig.block(480, &[on(0, 60)]);
        rig.block(480, &[off(0, 60)]);
        // Silence is measured from the note-off at sample 480; the trigger is seen at the first
        // block starting 24,000 samples later, and the answer starts ANSWER_LEAD_MS (4,800
        // samples) after that block's start.
        let out = rig.run(120, 480);
        // Absolute timings here count from sample 960.
        let trigger_block_start = 480 + 24_000;
        let answer_start = trigger_block_start + 4_800 - 960;
        assert_eq!(
            out,
            [
                format!("{answer_start} on 0:72"),
                format!("{} off 0:72", answer_start + 480)
            ]
        );
        assert_eq!(rig.status.counters().answers_triggered, 1);
        assert!(rig.stuck().is_empty());
        // No second answer without new playing.
        assert!(rig.run(200, 480).is_empty());
    }

    /// Once the generator's speed is measured, an answer starts late enough for all of it to
    /// be generated first: here 1 bar (2 s at 120 BPM) at 0.2 ms per ms of music, with the
    /// margin, is 500 ms (24,000 samples) instead of the 100 ms minimum; "as played", the
    /// phrase's length counts.
    #[test]
    fn the_lead_covers_generating_the_whole_answer_at_the_measured_speed() {
        assert_eq!(answer_lead_ms(None, 8_000.0), ANSWER_LEAD_MS);
        assert_eq!(answer_lead_ms(Some(0.001), 8_000.0), ANSWER_LEAD_MS);
        assert_eq!(answer_lead_ms(Some(0.02), 8_000.0), 200.0);
        assert_eq!(answer_lead_ms(Some(3.0), 8_000.0), MAX_ANSWER_LEAD_MS);
        assert_eq!(
            answer_lead_ms(Some(f64::INFINITY), 8_000.0),
            MAX_ANSWER_LEAD_MS
        );

        let mut rig = Rig::new(48_000.0);
        rig.settings.thru = false;
        rig.settings.answer_bars = 1;
        rig.settings.silence_beats = 1.0;
        rig.status.record_generation_ratio(0.2);
        rig.block(480, &[on(0, 60)]);
        rig.block(480, &[off(0, 60)]);
        let out = rig.run(120, 480);
        let trigger_block_start = 480 + 24_000;
        let answer_start = trigger_block_start + 24_000 - 960;
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[0], format!("{answer_start} on 0:72"));
        assert!(rig.stuck().is_empty());

        // An answer "as played" is as long as the phrase: 1 s here, so 250 ms (12,000
        // samples) of lead.
        let mut rig = Rig::new(48_000.0);
        rig.settings.thru = false;
        rig.settings.answer_bars = 0;
        rig.settings.silence_beats = 1.0;
        rig.status.record_generation_ratio(0.2);
        rig.block(480, &[on(0, 60)]);
        rig.block(47_520, &[]);
        rig.block(480, &[off(0, 60)]);
        // Silence from the note-off at 48,000; the trigger is seen by the block starting at
        // 72,000, and the run counts from 48,480 (long enough for the 1 s echo to end).
        let out = rig.run(200, 480);
        let answer_start = 72_000 + 12_000 - 48_480;
        assert_eq!(
            out.first(),
            Some(&format!("{answer_start} on 0:72")),
            "{out:?}"
        );
        assert!(rig.stuck().is_empty());
    }

    #[test]
    fn barge_in_releases_the_answer_before_the_players_note() {
        let mut rig = Rig::new(48_000.0);
        rig.settings.answer_bars = 4;
        rig.settings.silence_beats = 0.25;
        rig.block(512, &[on(0, 60)]);
        rig.block(512, &[off(0, 60)]);
        // Wait until the echo (72) sounds: it lasts 512 samples, so hold the player's note
        // longer to make the answer note long.
        let mut sounding = false;
        for _ in 0..100 {
            if rig.block(512, &[]).iter().any(|l| l.ends_with("on 0:72")) {
                sounding = true;
                break;
            }
        }
        assert!(sounding);
        assert_eq!(
            rig.block(512, &[on(100, 67)]),
            ["100 off 0:72", "100 on 0:67"]
        );
        assert!(rig.core.current_answer.is_none());
        rig.block(512, &[off(0, 67)]);
        assert!(rig.stuck().is_empty());
    }

    #[test]
    fn answers_start_on_the_next_beat_while_playing() {
        let mut rig = Rig::new(48_000.0);
        rig.settings.mode = Mode::Manual;
        rig.settings.thru = false;
        rig.settings.answer_bars = 1;
        // 120 BPM at 48 kHz: 24,000 samples per beat. Start at beat 0.25.
        rig.play(120.0, 0.25);
        rig.block(480, &[on(0, 60)]);
        rig.block(480, &[off(0, 60)]);
        rig.settings.trigger = true;
        // The trigger is seen at beat 0.25 + 960/24000 = 0.29; with the lead the answer starts on
        // beat 1, i.e. 24,000 * 0.71 = 17,040 samples after this block's start.
        let out = rig.run(100, 480);
        assert_eq!(out[0], "17040 on 0:72");
        // The 10 ms note is echoed at the stand-in's minimum length of 20 ms (960 samples).
        assert_eq!(out[1], format!("{} off 0:72", 17_040 + 960));
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn transport_stop_releases_everything() {
        let mut rig = Rig::new(44_100.0);
        rig.settings.mode = Mode::Manual;
        rig.settings.answer_bars = 4;
        rig.play(90.0, 0.0);
        rig.block(441, &[on(0, 60)]);
        rig.block(441, &[]);
        rig.settings.trigger = true;
        let mut generated = false;
        for _ in 0..400 {
            if rig.block(441, &[]).iter().any(|l| l.ends_with("on 0:72")) {
                generated = true;
                break;
            }
        }
        assert!(generated);
        rig.stop();
        let mut out = rig.block(441, &[]);
        out.sort();
        assert_eq!(out, ["0 off 0:60", "0 off 0:72"]);
        assert!(rig.stuck().is_empty());
        // The player's own note-off now finds nothing to release.
        assert!(rig.block(441, &[off(0, 60)]).is_empty());
    }

    #[test]
    fn transport_jump_releases_generated_notes() {
        let mut rig = Rig::new(48_000.0);
        rig.settings.mode = Mode::Manual;
        rig.settings.thru = false;
        rig.play(120.0, 0.0);
        rig.block(480, &[on(0, 60)]);
        rig.block(480, &[off(0, 60)]);
        rig.settings.trigger = true;
        let mut out = Vec::new();
        while !out.iter().any(|l: &String| l.ends_with("on 0:72")) {
            out = rig.block(480, &[]);
        }
        // Loop back to the start.
        rig.transport.pos_beats = Some(0.0);
        assert_eq!(rig.block(480, &[]), ["0 off 0:72"]);
        assert!(rig.stuck().is_empty());
    }

    #[test]
    fn bypass_releases_and_passes_through() {
        let mut rig = Rig::new(48_000.0);
        rig.settings.thru = false;
        rig.settings.silence_beats = 0.25;
        rig.settings.answer_bars = 4;
        rig.block(512, &[on(0, 60)]);
        rig.block(512, &[off(0, 60)]);
        let mut out = Vec::new();
        while !out.iter().any(|l: &String| l.ends_with("on 0:72")) {
            out = rig.block(512, &[]);
        }
        rig.settings.bypass = true;
        assert_eq!(rig.block(512, &[on(10, 50)]), ["0 off 0:72", "10 on 0:50"]);
        rig.settings.bypass = false;
        assert_eq!(rig.block(512, &[off(4, 50)]), ["4 off 0:50"]);
        assert!(rig.stuck().is_empty());
    }

    #[test]
    fn mode_change_releases_generated_notes() {
        let mut rig = Rig::new(48_000.0);
        rig.settings.thru = false;
        rig.settings.silence_beats = 0.25;
        rig.settings.answer_bars = 4;
        rig.block(512, &[on(0, 60)]);
        rig.block(512, &[off(0, 60)]);
        let mut out = Vec::new();
        while !out.iter().any(|l: &String| l.ends_with("on 0:72")) {
            out = rig.block(512, &[]);
        }
        rig.settings.mode = Mode::Manual;
        assert_eq!(rig.block(512, &[]), ["0 off 0:72"]);
        assert!(rig.run(200, 512).is_empty());
    }

    #[test]
    fn late_notes_are_dropped_and_counted() {
        let mut rig = Rig::new(48_000.0);
        rig.settings.mode = Mode::Manual;
        rig.run(10, 480);
        // 10 blocks = 100 ms have passed: a note due at 50 ms is late, one at 150 ms is not.
        for (start, key) in [(50.0, 40), (150.0, 41)] {
            rig.engine_out
                .push(FromEngine::Note(GeneratedNote {
                    answer_id: rig.core.accept_from_id,
                    start: NoteTime::Millis(start),
                    end: NoteTime::Millis(start + 10.0),
                    key,
                    velocity: 0.5,
                }))
                .unwrap();
        }
        let out = rig.run(10, 480);
        assert_eq!(out, ["2400 on 0:41", "2880 off 0:41"]);
        assert_eq!(rig.status.counters().late_notes, 1);
    }

    #[test]
    fn generated_notes_use_the_output_channel_they_started_on() {
        let mut rig = Rig::new(48_000.0);
        rig.settings.mode = Mode::Manual;
        rig.settings.out_channel = 4;
        rig.engine_out
            .push(FromEngine::Note(GeneratedNote {
                answer_id: rig.core.accept_from_id,
                start: NoteTime::Millis(1.0),
                end: NoteTime::Millis(20.0),
                key: 50,
                velocity: 0.5,
            }))
            .unwrap();
        assert_eq!(rig.block(480, &[]), ["48 on 4:50"]);
        rig.settings.out_channel = 9;
        assert!(rig.block(480, &[]).is_empty());
        assert_eq!(rig.block(480, &[]), ["0 off 4:50"]);
    }
}

/// The piano roll's side of the core: what the editor snapshot shows.
#[cfg(test)]
mod roll_tests {
    use super::*;
    use crate::protocol::{GeneratedNote, NoteTime};

    /// Input from a fixed array, output into reserved capacity: no allocation anywhere.
    struct ArrayIo {
        input: [NoteEvent<()>; 8],
        len: usize,
        next: usize,
        sent: Vec<NoteEvent<()>>,
    }

    impl BlockIo for ArrayIo {
        fn next_event(&mut self) -> Option<NoteEvent<()>> {
            let event = self.input[..self.len].get(self.next).copied();
            self.next += 1;
            event
        }

        fn send(&mut self, event: NoteEvent<()>) -> bool {
            // Capacity is reserved by `ArrayIo::new`, so this won't allocate.
            if self.sent.len() < self.sent.capacity() {
                self.sent.push(event);
                true
            } else {
                false
            }
        }
    }

    impl ArrayIo {
        fn new() -> Self {
            Self {
                input: [off(0, 0); 8],
                len: 0,
                next: 0,
                sent: Vec::with_capacity(64),
            }
        }

        fn load(&mut self, events: &[NoteEvent<()>]) {
            self.input[..events.len()].copy_from_slice(events);
            self.len = events.len();
            self.next = 0;
            self.sent.clear();
        }
    }

    fn on(timing: u32, key: u8) -> NoteEvent<()> {
        NoteEvent::NoteOn {
            timing,
            voice_id: VoiceID::Wildcard,
            channel: Channel::Number(0),
            key: Key::Number(key),
            velocity: 0.5,
        }
    }

    fn off(timing: u32, key: u8) -> NoteEvent<()> {
        NoteEvent::NoteOff {
            timing,
            voice_id: VoiceID::Wildcard,
            channel: Channel::Number(0),
            key: Key::Number(key),
            velocity: 0.0,
        }
    }

    struct Rig {
        core: Core,
        snapshot: triple_buffer::Output<EditorSnapshot>,
        engine_out: rtrb::Producer<FromEngine>,
        engine_in: rtrb::Consumer<ToEngine>,
        io: ArrayIo,
        settings: Settings,
        transport: TransportSnapshot,
        left: Vec<f32>,
        right: Vec<f32>,
    }

    impl Rig {
        fn new() -> Self {
            let (snapshot_in, snapshot) = triple_buffer::triple_buffer(&EditorSnapshot::default());
            let mut core = Core::new(Arc::new(SharedStatus::default()), snapshot_in);
            let (to_in, engine_in) = rtrb::RingBuffer::new(1024);
            let (engine_out, from_out) = rtrb::RingBuffer::new(1024);
            core.activate(48_000.0, to_in, from_out);
            Self {
                core,
                snapshot,
                engine_out,
                engine_in,
                io: ArrayIo::new(),
                settings: Settings {
                    mode: Mode::Manual,
                    voice: false,
                    ..Settings::default()
                },
                transport: TransportSnapshot::default(),
                left: vec![0.0; 4096],
                right: vec![0.0; 4096],
            }
        }

        /// Runs one block and returns the editor's snapshot after it. Allocation-free up to the
        /// snapshot read (the core's part is checked by `process_never_allocates`).
        fn block(&mut self, len: u32, input: &[NoteEvent<()>]) -> EditorSnapshot {
            self.io.load(input);
            let len_usize = len as usize;
            self.core.process(
                &mut self.io,
                len,
                &self.transport,
                &self.settings,
                &mut [&mut self.left[..len_usize], &mut self.right[..len_usize]],
            );
            while self.engine_in.pop().is_ok() {}
            *self.snapshot.read()
        }

        fn generate(&mut self, answer_id: u32, start_ms: f64, end_ms: f64, key: u8) {
            self.engine_out
                .push(FromEngine::Note(GeneratedNote {
                    answer_id,
                    start: NoteTime::Millis(start_ms),
                    end: NoteTime::Millis(end_ms),
                    key,
                    velocity: 1.0,
                }))
                .unwrap();
        }
    }

    fn notes<const N: usize>(ring: &NoteRing<N>) -> Vec<RollNote> {
        ring.iter().copied().collect()
    }

    #[test]
    fn snapshot_shows_played_notes_even_with_thru_off() {
        let mut rig = Rig::new();
        rig.settings.thru = false;
        let snap = rig.block(256, &[on(100, 60)]);
        assert!(rig.io.sent.is_empty(), "thru is off");
        assert_eq!(snap.now_samples, 256);
        assert_eq!(snap.sample_rate_hz, 48_000.0);
        assert_eq!(
            notes(&snap.recent),
            [RollNote::started(NoteSource::Played, 0, 60, 0.5, 100, 0)]
        );
        let snap = rig.block(256, &[on(10, 64), off(50, 60)]);
        let got: Vec<(u8, i64, i64)> = snap
            .recent
            .iter()
            .map(|n| (n.key, n.start, n.end))
            .collect();
        assert_eq!(got, [(60, 100, 306), (64, 266, RollNote::OPEN)]);
    }

    #[test]
    fn snapshot_shows_generated_notes_when_they_sound() {
        let mut rig = Rig::new();
        rig.settings.out_channel = 3;
        // 10 ms to 20 ms: samples 480 to 960.
        rig.generate(1, 10.0, 20.0, 72);
        let snap = rig.block(256, &[on(0, 60)]);
        assert_eq!(snap.accept_from_answer, 1);
        assert_eq!(
            notes(&snap.upcoming),
            [RollNote {
                end: 960,
                ..RollNote::started(NoteSource::Generated, 0, 72, 1.0, 480, 1)
            }]
        );
        assert_eq!(snap.recent.len(), 1, "only the played note so far");
        let snap = rig.block(256, &[]);
        assert_eq!(rig.io.sent.len(), 1);
        let generated = notes(&snap.recent)[1];
        assert_eq!(
            generated,
            RollNote::started(NoteSource::Generated, 3, 72, 1.0, 480, generated.tag)
        );
        rig.block(256, &[]);
        let snap = rig.block(256, &[]);
        assert_eq!(notes(&snap.recent)[1].end, 960);
        assert_eq!(notes(&snap.recent)[0].source, NoteSource::Played);
        assert!(
            notes(&snap.recent)[0].is_open(),
            "the player still holds C4"
        );
    }

    #[test]
    fn notes_of_cancelled_answers_leave_the_preview() {
        let upcoming_rects = |snap: &EditorSnapshot| {
            crate::roll::layout(snap, &crate::roll::RollWindow::DEFAULT)
                .rects
                .iter()
                .filter(|r| r.upcoming)
                .count()
        };
        let mut rig = Rig::new();
        rig.settings.trigger = true;
        let snap = rig.block(256, &[]);
        assert_eq!(snap.accept_from_answer, 1, "answer 1 requested");
        rig.settings.trigger = false;
        rig.generate(1, 200.0, 300.0, 72);
        let snap = rig.block(256, &[]);
        assert_eq!(upcoming_rects(&snap), 1);
        // A mode change cancels answer 1.
        rig.settings.mode = Mode::CallResponse;
        let snap = rig.block(256, &[]);
        assert_eq!(snap.accept_from_answer, 2);
        assert_eq!(snap.upcoming.len(), 1, "still in the ring");
        assert_eq!(upcoming_rects(&snap), 0, "but no longer shown");
    }

    /// The core with the roll wrapped around many times, generated notes, the voice and a
    /// playing transport, inside nice-plug's allocation check (warn mode in tests).
    #[test]
    fn process_never_allocates() {
        let mut rig = Rig::new();
        rig.settings.voice = true;
        rig.settings.mode = Mode::CallResponse;
        rig.transport = TransportSnapshot {
            playing: true,
            tempo_bpm: Some(120.0),
            pos_beats: Some(0.0),
            bar_start_beats: Some(0.0),
            time_sig: Some((4, 4)),
        };
        let len = 480u32; // 10 ms
        let before = nice_assert_no_alloc::violation_count();
        for block in 0..2_000u32 {
            let key = 48 + (block % 24) as u8;
            let input = [on(block % 7, key), off(400, key), on(410, key + 1)];
            let held_off = [off(0, key.wrapping_sub(1))];
            if block.is_multiple_of(3) {
                let start_ms = f64::from(block + 1) * 10.0 + 2.0;
                rig.generate(u32::MAX, start_ms, start_ms + 15.0, 72 + (block % 12) as u8);
            }
            rig.io.load(if block.is_multiple_of(2) {
                &input
            } else {
                &held_off
            });
            let Rig {
                core,
                io,
                settings,
                transport,
                left,
                right,
                ..
            } = &mut rig;
            nice_assert_no_alloc::assert_no_alloc(|| {
                core.process(
                    io,
                    len,
                    transport,
                    settings,
                    &mut [&mut left[..len as usize], &mut right[..len as usize]],
                );
            });
            *rig.transport.pos_beats.as_mut().unwrap() += f64::from(len) / 24_000.0;
            while rig.engine_in.pop().is_ok() {}
        }
        assert_eq!(nice_assert_no_alloc::violation_count(), before);
        let snap = *rig.snapshot.read();
        assert_eq!(snap.recent.len(), RECENT_NOTES, "the ring wrapped");
        let generated = snap
            .recent
            .iter()
            .filter(|n| n.source == NoteSource::Generated)
            .count();
        assert!(generated > 10, "{generated}");
    }
}
