//! The generator thread: one per plugin instance, started in `activate()` and joined in
//! `deactivate()` and on drop.
//!
//! The thread owns a [`Generator`] and talks to the audio thread only through the two lock-free
//! queues of [`crate::protocol`]. The plugin runs [`crate::moonbeam::MoonbeamGenerator`];
//! [`EchoGenerator`] is a deterministic stand-in kept for the shell's own unit tests (scheduling,
//! barge-in, stuck notes), which need exactly predictable answers.

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::protocol::{
    AnswerRequest, EngineStatus, FromEngine, GenParams, GeneratedNote, NoteTime, PlayedNote,
    ToEngine,
};
use crate::status::SharedStatus;

/// How long the thread sleeps when it has nothing to do. New messages are picked up within this
/// time; the audio thread never wakes the thread itself (that would be a syscall).
const IDLE_POLL_INTERVAL: Duration = Duration::from_millis(1);

/// Something that turns played notes into answers: [`crate::moonbeam::MoonbeamGenerator`] in
/// the plugin, the stand-in [`EchoGenerator`] in the shell's unit tests.
///
/// All methods are called on the generator thread, never on the audio thread, so they may
/// allocate and take their time; but long work should be cut into [`Generator::step`] calls so
/// that a `Cancel` is seen between decode steps.
pub trait Generator: Send + 'static {
    /// Called once on the generator thread before any message, e.g. to load a model. Messages
    /// sent meanwhile wait in the queue.
    fn start(&mut self, out: &mut Outbox<'_>) {
        let _ = out;
    }

    /// Handles one message from the audio thread.
    fn handle(&mut self, message: ToEngine, out: &mut Outbox<'_>);

    /// Does one slice of background work (e.g. one decode step). Returns `true` if there is more
    /// to do, so the thread calls it again at once instead of sleeping.
    fn step(&mut self, out: &mut Outbox<'_>) -> bool {
        let _ = out;
        false
    }
}

/// The generator's side of the generator → audio queue.
pub struct Outbox<'a> {
    producer: &'a mut rtrb::Producer<FromEngine>,
    status: &'a SharedStatus,
}

impl<'a> Outbox<'a> {
    pub fn new(producer: &'a mut rtrb::Producer<FromEngine>, status: &'a SharedStatus) -> Self {
        Self { producer, status }
    }

    /// Sends a message; a full queue drops it and counts the drop. Returns whether it was sent.
    pub fn send(&mut self, message: FromEngine) -> bool {
        if let FromEngine::Status(status) = message {
            self.status.set_engine_status(status);
        }
        match self.producer.push(message) {
            Ok(()) => true,
            Err(_) => {
                SharedStatus::count(&self.status.dropped_from_engine);
                false
            }
        }
    }

    /// Free slots in the queue, for generators that want to wait rather than drop.
    pub fn free_slots(&self) -> usize {
        self.producer.slots()
    }
}

/// A running generator thread. Dropping it stops and joins the thread.
pub struct GeneratorThread {
    /// Set by the owner (main thread) to ask the thread to exit; read by the generator thread.
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl GeneratorThread {
    /// Starts a generator thread. Called on the main thread from `activate()`.
    pub fn spawn(
        mut generator: Box<dyn Generator>,
        mut to_engine: rtrb::Consumer<ToEngine>,
        mut from_engine: rtrb::Producer<FromEngine>,
        status: Arc<SharedStatus>,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let handle = thread::Builder::new()
            .name("continuo-generator".into())
            .spawn(move || {
                Outbox::new(&mut from_engine, &status).send(FromEngine::Status(EngineStatus::Idle));
                let mut failed = {
                    let mut out = Outbox::new(&mut from_engine, &status);
                    let failed =
                        panic::catch_unwind(AssertUnwindSafe(|| generator.start(&mut out)))
                            .is_err();
                    if failed {
                        out.send(FromEngine::Status(EngineStatus::Failed));
                    }
                    failed
                };
                while !thread_stop.load(Ordering::Acquire) {
                    let mut busy = false;
                    while let Ok(message) = to_engine.pop() {
                        busy = true;
                        if failed {
                            continue;
                        }
                        let mut out = Outbox::new(&mut from_engine, &status);
                        // NOTE: A panicking generator must not take the host down. It is switched off
                        //       and the plugin keeps passing MIDI through.
                        failed = panic::catch_unwind(AssertUnwindSafe(|| {
                            generator.handle(message, &mut out);
                        }))
                        .is_err();
                        if failed {
                            out.send(FromEngine::Status(EngineStatus::Failed));
                        }
                    }
                    if !failed {
                        let mut out = Outbox::new(&mut from_engine, &status);
                        match panic::catch_unwind(AssertUnwindSafe(|| generator.step(&mut out))) {
                            Ok(more) => busy |= more,
                            Err(_) => {
                                failed = true;
                                out.send(FromEngine::Status(EngineStatus::Failed));
                            }
                        }
                    }
                    if !busy {
                        thread::park_timeout(IDLE_POLL_INTERVAL);
                    }
                }
                status.set_engine_status(EngineStatus::Stopped);
            })?;
        Ok(Self {
            stop,
            handle: Some(handle),
        })
    }

    /// Stops the thread and waits for it. Called on the main thread from `deactivate()` and drop.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(handle) = self.handle.take() {
            handle.thread().unpark();
            // A panic inside the thread was already caught; a join error has nothing to add.
            let _ = handle.join();
        }
    }
}

impl Drop for GeneratorThread {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The most notes of a played phrase the stand-in remembers.
const MAX_PHRASE_NOTES: usize = 256;
/// Length given to a note that is still held when the answer is made.
const HELD_NOTE_MS: f64 = 250.0;
/// The shortest note the stand-in plays.
const MIN_NOTE_MS: f64 = 20.0;

#[derive(Debug, Clone, Copy)]
struct PhraseNote {
    start_ms: f64,
    end_ms: Option<f64>,
    key: u8,
    velocity: f32,
}

/// STAND-IN for the Moonbeam engine, used by the shell's unit tests (`realtime.rs`), which need
/// exactly predictable answers. The plugin itself runs [`crate::moonbeam::MoonbeamGenerator`].
///
/// It answers a phrase by echoing the notes played since the previous answer, transposed by
/// [`EchoGenerator::TRANSPOSE`] semitones (folded by octaves into the pitch range), with the
/// played rhythm, cut to the requested length and thinned to the density cap. With nothing new
/// played it repeats the previous phrase, so continuous mode loops it. It is deterministic:
/// temperature, top-p, seed and style strength are accepted and ignored, and so are quantize,
/// swing and the scale lock (their tests run on Moonbeam in `moonbeam.rs` and `music.rs`).
#[derive(Debug, Default)]
pub struct EchoGenerator {
    params: GenParams,
    tempo_bpm: f64,
    phrase: Vec<PhraseNote>,
    previous_phrase: Vec<PhraseNote>,
}

impl EchoGenerator {
    /// The echo's transposition in semitones.
    pub const TRANSPOSE: i32 = 12;

    pub fn new() -> Self {
        Self {
            params: GenParams::default(),
            tempo_bpm: 120.0,
            phrase: Vec::with_capacity(MAX_PHRASE_NOTES),
            previous_phrase: Vec::with_capacity(MAX_PHRASE_NOTES),
        }
    }

    fn record(&mut self, note: PlayedNote) {
        if note.is_on {
            if self.phrase.len() == MAX_PHRASE_NOTES {
                self.phrase.remove(0);
            }
            self.phrase.push(PhraseNote {
                start_ms: note.time.clock_ms,
                end_ms: None,
                key: note.key,
                velocity: note.velocity,
            });
        } else if let Some(open) = self
            .phrase
            .iter_mut()
            .rev()
            .find(|n| n.key == note.key && n.end_ms.is_none())
        {
            open.end_ms = Some(note.time.clock_ms);
        }
    }

    /// Folds `key + TRANSPOSE` into `[low, high]` by octaves (clamping if the range is narrower
    /// than an octave).
    pub fn fold_key(key: u8, low: u8, high: u8) -> u8 {
        let (low, high) = (i32::from(low.min(high)), i32::from(low.max(high)));
        let mut k = i32::from(key) + Self::TRANSPOSE;
        while k > high && k - 12 >= low {
            k -= 12;
        }
        while k < low && k + 12 <= high {
            k += 12;
        }
        k.clamp(low, high).clamp(0, 127) as u8
    }

    fn answer(&mut self, request: AnswerRequest, out: &mut Outbox<'_>) {
        out.send(FromEngine::Status(EngineStatus::Generating));
        if !self.phrase.is_empty() {
            self.previous_phrase.clear();
            self.previous_phrase.append(&mut self.phrase);
        }
        let tempo_bpm = if request.tempo_bpm > 0.0 {
            request.tempo_bpm
        } else {
            self.tempo_bpm
        };
        let ms_per_beat = 60_000.0 / tempo_bpm;
        let phrase = &self.previous_phrase;
        if let Some(first) = phrase.first() {
            let t0 = first.start_ms;
            let phrase_end_ms = phrase
                .iter()
                .map(|n| n.end_ms.unwrap_or(n.start_ms + HELD_NOTE_MS))
                .fold(t0, f64::max);
            let length_ms = if request.length_beats > 0.0 {
                request.length_beats * ms_per_beat
            } else {
                phrase_end_ms - t0
            };
            let max_per_beat = self.params.density_cap_per_beat.max(0.0).ceil() as u32;
            let (mut beat_index, mut in_beat) = (u64::MAX, 0u32);
            for note in phrase {
                let rel_start_ms = note.start_ms - t0;
                if rel_start_ms >= length_ms {
                    break;
                }
                let this_beat = (rel_start_ms / ms_per_beat) as u64;
                if this_beat != beat_index {
                    (beat_index, in_beat) = (this_beat, 0);
                }
                if in_beat >= max_per_beat {
                    continue;
                }
                in_beat += 1;
                let end_ms = note.end_ms.unwrap_or(note.start_ms + HELD_NOTE_MS);
                let rel_end_ms = (end_ms - t0).max(rel_start_ms + MIN_NOTE_MS).min(length_ms);
                let to_time = |rel_ms: f64| match request.start.beats {
                    Some(beats) => NoteTime::Beats(beats + rel_ms / ms_per_beat),
                    None => NoteTime::Millis(request.start.clock_ms + rel_ms),
                };
                let velocity = (note.velocity * self.params.velocity_scale).clamp(1.0 / 127.0, 1.0);
                out.send(FromEngine::Note(GeneratedNote {
                    answer_id: request.answer_id,
                    start: to_time(rel_start_ms),
                    end: to_time(rel_end_ms.max(rel_start_ms)),
                    key: Self::fold_key(note.key, self.params.pitch_low, self.params.pitch_high),
                    velocity,
                }));
            }
        }
        out.send(FromEngine::AnswerEnd {
            answer_id: request.answer_id,
        });
        out.send(FromEngine::Status(EngineStatus::Idle));
    }
}

impl Generator for EchoGenerator {
    fn handle(&mut self, message: ToEngine, out: &mut Outbox<'_>) {
        match message {
            ToEngine::Note(note) => self.record(note),
            ToEngine::Transport(transport) => self.tempo_bpm = transport.tempo_bpm,
            ToEngine::Params(params) => self.params = params,
            ToEngine::Trigger(request) => self.answer(request, out),
            // Answers are made in one go, so there is nothing in progress to stop.
            ToEngine::Cancel { .. } => {}
            ToEngine::Reset => {
                self.phrase.clear();
                self.previous_phrase.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Stamp, TriggerKind};

    fn played(clock_ms: f64, key: u8, is_on: bool) -> ToEngine {
        crate::protocol::played(clock_ms, key, is_on, 0.5)
    }

    fn run(generator: &mut EchoGenerator, messages: &[ToEngine]) -> Vec<FromEngine> {
        let status = SharedStatus::default();
        let (mut producer, mut consumer) = rtrb::RingBuffer::new(64);
        for &message in messages {
            generator.handle(message, &mut Outbox::new(&mut producer, &status));
        }
        std::iter::from_fn(|| consumer.pop().ok()).collect()
    }

    fn trigger(answer_id: u32, beats: Option<f64>, length_beats: f64) -> ToEngine {
        ToEngine::Trigger(AnswerRequest {
            answer_id,
            kind: TriggerKind::Manual,
            start: Stamp {
                clock_ms: 10_000.0,
                beats,
            },
            length_beats,
            tempo_bpm: 120.0,
        })
    }

    #[test]
    fn echo_keeps_rhythm_and_transposes_in_wall_time() {
        let mut generator = EchoGenerator::new();
        let out = run(
            &mut generator,
            &[
                played(1000.0, 60, true),
                played(1200.0, 60, false),
                played(1500.0, 64, true),
                played(1600.0, 64, false),
                trigger(7, None, 0.0),
            ],
        );
        let notes: Vec<GeneratedNote> = out
            .iter()
            .filter_map(|m| {
                if let FromEngine::Note(n) = m {
                    Some(*n)
                } else {
                    None
                }
            })
            .collect();
        assert_eq!(notes.len(), 2);
        assert_eq!(notes[0].start, NoteTime::Millis(10_000.0));
        assert_eq!(notes[0].end, NoteTime::Millis(10_200.0));
        assert_eq!(notes[0].key, 72);
        assert_eq!(notes[1].start, NoteTime::Millis(10_500.0));
        assert_eq!(notes[1].key, 76);
        assert!(out.contains(&FromEngine::AnswerEnd { answer_id: 7 }));
    }

    #[test]
    fn echo_in_beats_is_cut_to_length() {
        let mut generator = EchoGenerator::new();
        let out = run(
            &mut generator,
            &[
                played(0.0, 60, true),
                played(400.0, 60, false),
                played(1000.0, 62, true),
                played(1100.0, 62, false),
                // One beat at 120 BPM = 500 ms: only the first note fits, and it is cut.
                trigger(1, Some(8.0), 0.5),
            ],
        );
        let notes: Vec<GeneratedNote> = out
            .iter()
            .filter_map(|m| {
                if let FromEngine::Note(n) = m {
                    Some(*n)
                } else {
                    None
                }
            })
            .collect();
        assert_eq!(notes.len(), 1);
        assert_eq!(notes[0].start, NoteTime::Beats(8.0));
        assert_eq!(notes[0].end, NoteTime::Beats(8.5));
    }

    #[test]
    fn fold_key_stays_in_range() {
        assert_eq!(EchoGenerator::fold_key(60, 0, 127), 72);
        assert_eq!(EchoGenerator::fold_key(120, 0, 127), 120);
        assert_eq!(EchoGenerator::fold_key(60, 48, 66), 60);
        assert_eq!(EchoGenerator::fold_key(60, 61, 63), 63);
    }

    #[test]
    fn thread_starts_answers_and_joins() {
        let status = Arc::new(SharedStatus::default());
        let (mut to_producer, to_consumer) = rtrb::RingBuffer::new(16);
        let (from_producer, mut from_consumer) = rtrb::RingBuffer::new(16);
        let mut thread = GeneratorThread::spawn(
            Box::new(EchoGenerator::new()),
            to_consumer,
            from_producer,
            status.clone(),
        )
        .unwrap();
        to_producer.push(played(0.0, 60, true)).unwrap();
        to_producer.push(trigger(3, None, 1.0)).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut got_end = false;
        while !got_end && std::time::Instant::now() < deadline {
            match from_consumer.pop() {
                Ok(FromEngine::AnswerEnd { answer_id }) => got_end = answer_id == 3,
                Ok(_) => {}
                Err(_) => thread::sleep(Duration::from_millis(1)),
            }
        }
        assert!(got_end);
        thread.stop();
        assert_eq!(status.engine_status(), EngineStatus::Stopped);
    }
}
