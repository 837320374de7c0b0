//! The piano roll's side of the core: what the editor snapshot shows.

use super::tests::{off, on};
use super::*;
use crate::params::Mode;
use crate::protocol::{GeneratedNote, NoteTime};
use crate::status::{NoteSource, RollNote};

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
        crate::editor::roll::layout(snap, &crate::editor::roll::RollWindow::DEFAULT)
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
