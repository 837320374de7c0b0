//! The generator thread: one per plugin instance, started in `activate()` and joined in
//! `deactivate()` and on drop.
//!
//! **Thread:** the generator thread. **May touch:** the two lock-free queues of
//! [`crate::protocol`] (its only link to the audio thread), [`SharedStatus`], and the hand-off
//! slots the loader fills ([`crate::library::ModelCache`], [`crate::library::StyleSlot`]). It
//! does no file I/O of its own apart from loading the model it is told to.
//!
//! The thread owns a [`Generator`]. The plugin runs [`MoonbeamGenerator`] ([`moonbeam`]), which
//! keeps the played notes in a warm session (`session`) and shapes each decoded note
//! ([`shaper`]: quantize, scale, range, density). `EchoGenerator` is a deterministic stand-in,
//! compiled for tests only, for the shell's own unit tests (scheduling, barge-in, stuck notes),
//! which need exactly predictable answers.

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

#[cfg(test)]
#[cfg(test)]
mod echo;
mod moonbeam;
mod session;
pub mod shaper;

#[cfg(test)]
#[cfg(test)]
pub use echo::EchoGenerator;
pub use moonbeam::MoonbeamGenerator;

use crate::protocol::{FromEngine, ToEngine};
use crate::status::{EngineStatus, SharedStatus};

/// How long the thread sleeps when it has nothing to do. New messages are picked up within this
/// time; the audio thread never wakes the thread itself (that would be a syscall).
const IDLE_POLL_INTERVAL: Duration = Duration::from_millis(1);

/// Something that turns played notes into answers: [`MoonbeamGenerator`] in the plugin, the
/// stand-in `EchoGenerator` in the shell's unit tests.
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
        match self.producer.push(message) {
            Ok(()) => true,
            Err(_) => {
                SharedStatus::count(&self.status.dropped_from_engine);
                false
            }
        }
    }

    /// Publishes the generator's state for the editor (an atomic, not a message: the audio
    /// thread has no use for it).
    pub fn set_status(&self, status: EngineStatus) {
        self.status.set_engine_status(status);
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
                status.set_engine_status(EngineStatus::Idle);
                let mut failed = {
                    let mut out = Outbox::new(&mut from_engine, &status);
                    let failed =
                        panic::catch_unwind(AssertUnwindSafe(|| generator.start(&mut out)))
                            .is_err();
                    if failed {
                        out.set_status(EngineStatus::Failed);
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
                            out.set_status(EngineStatus::Failed);
                        }
                    }
                    if !failed {
                        let mut out = Outbox::new(&mut from_engine, &status);
                        match panic::catch_unwind(AssertUnwindSafe(|| generator.step(&mut out))) {
                            Ok(more) => busy |= more,
                            Err(_) => {
                                failed = true;
                                out.set_status(EngineStatus::Failed);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{AnswerRequest, GeneratedNote, NoteTime, Stamp};

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

    /// The notes among the generator's messages.
    fn notes_of(out: &[FromEngine]) -> Vec<GeneratedNote> {
        out.iter()
            .filter_map(|m| match m {
                FromEngine::Note(n) => Some(*n),
                _ => None,
            })
            .collect()
    }

    fn trigger(answer_id: u32, beats: Option<f64>, length_ms: f64) -> ToEngine {
        ToEngine::Trigger(AnswerRequest {
            answer_id,
            start: Stamp {
                clock_ms: 10_000.0,
                beats,
            },
            length_ms,
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
                // As long as the phrase, as the audio thread resolves it.
                trigger(7, None, 600.0),
            ],
        );
        let notes = notes_of(&out);
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
                // Half a beat at 120 BPM = 250 ms: only the first note fits, and it is cut.
                trigger(1, Some(8.0), 250.0),
            ],
        );
        let notes = notes_of(&out);
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
        to_producer.push(trigger(3, None, 500.0)).unwrap();
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
