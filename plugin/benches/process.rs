//! The cost of one `Core::process` block, the audio thread's whole job: 512 samples at 48 kHz,
//! the transport playing, player notes passed through, generated notes arriving from a stand-in
//! generator side (no model: the bench feeds the generator → audio queue itself, half of the
//! notes timed in milliseconds and half in beats, so both scheduling paths run) and the built-in
//! voice rendering. The piano roll's note rings are filled and copied into the editor snapshot
//! every block, as in the plugin.
//!
//! Allocations inside the measured calls are counted and must be zero; the bench panics
//! otherwise. Run with `cargo bench -p continuo --bench process`.
//!
//! Target: at most 20 µs and 0 allocations for 512 samples with 32 events.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use continuo::audio::voice::Kernel;
use continuo::audio::{BlockIo, Core, TransportSnapshot};
use continuo::params::Settings;
use continuo::protocol::{FromEngine, GeneratedNote, NoteTime, ToEngine};
use continuo::status::{EditorSnapshot, SharedStatus};
use criterion::{criterion_group, criterion_main, Criterion};
use nice_plug::midi::{Channel, Key, NoteEvent, VoiceID};

const SAMPLE_RATE_HZ: f64 = 48_000.0;
const BLOCK_SAMPLES: u32 = 512;
const TEMPO_BPM: f64 = 120.0;
const SAMPLES_PER_BEAT: f64 = SAMPLE_RATE_HZ * 60.0 / TEMPO_BPM;
/// Generated notes the stand-in generator sends per block.
const GENERATED_PER_BLOCK: u32 = 4;
const MAX_INPUT_EVENTS: usize = 64;
/// The host's output event buffer.
const MAX_OUTPUT_EVENTS: usize = 256;

// ---------------------------------------------------------------------------------------------
// Allocation counting

/// Counts allocator calls made on a thread while it is armed. Installed only in optimised
/// builds: in debug builds nice-plug's `assert_process_allocs` installs its own global allocator,
/// and [`measured`] uses that one's violation count instead.
#[cfg(not(debug_assertions))]
mod counting {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;
    use std::sync::atomic::{AtomicU64, Ordering};

    struct CountingAlloc;

    #[global_allocator]
    static GLOBAL: CountingAlloc = CountingAlloc;

    static ALLOCATOR_CALLS: AtomicU64 = AtomicU64::new(0);

    thread_local! {
        static ARMED: Cell<bool> = const { Cell::new(false) };
    }

    fn count_if_armed() {
        // `try_with`: the allocator may run while thread-locals are being torn down.
        if ARMED.try_with(Cell::get).unwrap_or(false) {
            ALLOCATOR_CALLS.fetch_add(1, Ordering::Relaxed);
        }
    }

    // SAFETY: every call is forwarded unchanged to the system allocator; the counting touches
    // only an atomic and a const-initialised thread-local, neither of which allocates.
    unsafe impl GlobalAlloc for CountingAlloc {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            count_if_armed();
            // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which `System` shares.
            unsafe { System.alloc(layout) }
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            count_if_armed();
            // SAFETY: as for `alloc`.
            unsafe { System.alloc_zeroed(layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            count_if_armed();
            // SAFETY: `ptr` and `layout` came from this allocator, i.e. from `System`.
            unsafe { System.realloc(ptr, layout, new_size) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            count_if_armed();
            // SAFETY: `ptr` and `layout` came from this allocator, i.e. from `System`.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    /// Runs `f` with allocation counting on for this thread.
    pub fn measured<R>(f: impl FnOnce() -> R) -> R {
        ARMED.with(|armed| armed.set(true));
        let result = f();
        ARMED.with(|armed| armed.set(false));
        result
    }

    /// Allocator calls made inside [`measured`] so far.
    pub fn allocations() -> u64 {
        ALLOCATOR_CALLS.load(Ordering::Relaxed)
    }
}

/// Debug builds (`cargo test --benches`, clippy): nice-plug's allocation checker in warn mode.
#[cfg(debug_assertions)]
mod counting {
    pub fn measured<R>(f: impl FnOnce() -> R) -> R {
        nice_assert_no_alloc::assert_no_alloc(f)
    }

    pub fn allocations() -> u64 {
        u64::from(nice_assert_no_alloc::violation_count())
    }
}

use counting::{allocations, measured};

// ---------------------------------------------------------------------------------------------
// The host side

/// The host's event buffers for one block: preallocated arrays, like a real host's.
struct HostIo {
    input: [NoteEvent<()>; MAX_INPUT_EVENTS],
    input_len: usize,
    next_input: usize,
    output: [NoteEvent<()>; MAX_OUTPUT_EVENTS],
    output_len: usize,
}

impl BlockIo for HostIo {
    fn next_event(&mut self) -> Option<NoteEvent<()>> {
        let event = self.input[..self.input_len].get(self.next_input).copied();
        self.next_input += 1;
        event
    }

    fn send(&mut self, event: NoteEvent<()>) -> bool {
        match self.output.get_mut(self.output_len) {
            Some(slot) => {
                *slot = event;
                self.output_len += 1;
                true
            }
            None => false,
        }
    }
}

/// One scenario of the bench.
#[derive(Clone, Copy)]
struct Scenario {
    name: &'static str,
    /// Player note events per block, alternating note-on and the matching note-off.
    events_per_block: u32,
    voice: bool,
    /// The voice's synthesis kernel; `None` for the one the CPU gets by default.
    kernel: Option<Kernel>,
}

/// A core activated as `lib.rs` does it, with this bench as host and generator.
struct Harness {
    scenario: Scenario,
    core: Core,
    status: Arc<SharedStatus>,
    /// The editor's end of the triple buffer, read after the run for the report.
    snapshot: triple_buffer::Output<EditorSnapshot>,
    /// The generator's ends of the queues.
    to_engine: rtrb::Consumer<ToEngine>,
    from_engine: rtrb::Producer<FromEngine>,
    io: HostIo,
    left: Vec<f32>,
    right: Vec<f32>,
    settings: Settings,
    transport: TransportSnapshot,
    blocks: u64,
    /// Player events sent so far (decides note-on or note-off and the key).
    player_events: u64,
    output_events: u64,
}

impl Harness {
    fn new(scenario: Scenario) -> Self {
        let status = Arc::new(SharedStatus::default());
        let (snapshot_in, snapshot_out) = triple_buffer::triple_buffer(&EditorSnapshot::default());
        let mut core = Core::new(status.clone(), snapshot_in);
        let (to_engine_in, to_engine_out) =
            rtrb::RingBuffer::new(continuo::protocol::TO_ENGINE_CAPACITY);
        let (from_engine_in, from_engine_out) =
            rtrb::RingBuffer::new(continuo::protocol::FROM_ENGINE_CAPACITY);
        core.activate(SAMPLE_RATE_HZ, to_engine_in, from_engine_out);
        if let Some(kernel) = scenario.kernel {
            assert!(core.set_voice_kernel(kernel));
        }
        let silent = NoteEvent::NoteOff {
            timing: 0,
            voice_id: VoiceID::Wildcard,
            channel: Channel::Number(0),
            key: Key::Number(0),
            velocity: 0.0,
        };
        let mut harness = Self {
            scenario,
            core,
            status,
            snapshot: snapshot_out,
            to_engine: to_engine_out,
            from_engine: from_engine_in,
            io: HostIo {
                input: [silent; MAX_INPUT_EVENTS],
                input_len: 0,
                next_input: 0,
                output: [silent; MAX_OUTPUT_EVENTS],
                output_len: 0,
            },
            left: vec![0.0; BLOCK_SAMPLES as usize],
            right: vec![0.0; BLOCK_SAMPLES as usize],
            settings: Settings {
                voice: scenario.voice,
                ..Settings::default()
            },
            transport: TransportSnapshot {
                playing: true,
                tempo_bpm: Some(TEMPO_BPM),
                pos_beats: Some(0.0),
                bar_start_beats: Some(0.0),
                time_sig: Some((4, 4)),
            },
            blocks: 0,
            player_events: 0,
            output_events: 0,
        };
        // Reach a steady state: the roll's rings full, notes scheduled and sounding.
        for _ in 0..1_000 {
            harness.prepare();
            harness.process();
            harness.finish();
        }
        harness
    }

    /// The host and generator work before a block (not measured): this block's input events,
    /// and generated notes starting in the next block.
    fn prepare(&mut self) {
        let n = self.scenario.events_per_block;
        for j in 0..n {
            let timing = j * BLOCK_SAMPLES / n;
            let g = self.player_events;
            self.player_events += 1;
            let key = Key::Number(48 + ((g / 2) % 24) as u8);
            let channel = Channel::Number(0);
            self.io.input[j as usize] = if g.is_multiple_of(2) {
                NoteEvent::NoteOn {
                    timing,
                    voice_id: VoiceID::Wildcard,
                    channel,
                    key,
                    velocity: 0.7,
                }
            } else {
                NoteEvent::NoteOff {
                    timing,
                    voice_id: VoiceID::Wildcard,
                    channel,
                    key,
                    velocity: 0.0,
                }
            };
        }
        self.io.input_len = n as usize;
        self.io.next_input = 0;
        self.io.output_len = 0;

        let next_block_start = (self.blocks + 1) * u64::from(BLOCK_SAMPLES);
        let pos_beats = self.transport.pos_beats.unwrap_or(0.0);
        for i in 0..GENERATED_PER_BLOCK {
            let offset = f64::from(i * BLOCK_SAMPLES / GENERATED_PER_BLOCK + 7);
            let length = 1.5 * f64::from(BLOCK_SAMPLES);
            let (start, end) = if i.is_multiple_of(2) {
                let ms = |samples: f64| NoteTime::Millis(samples * 1000.0 / SAMPLE_RATE_HZ);
                let start = next_block_start as f64 + offset;
                (ms(start), ms(start + length))
            } else {
                let beats = |samples: f64| NoteTime::Beats(pos_beats + samples / SAMPLES_PER_BEAT);
                let start = f64::from(BLOCK_SAMPLES) + offset;
                (beats(start), beats(start + length))
            };
            let note = GeneratedNote {
                // Above every id the core has handed out, so never discarded as cancelled.
                answer_id: u32::MAX,
                start,
                end,
                key: 72
                    + ((self.blocks * u64::from(GENERATED_PER_BLOCK) + u64::from(i)) % 12) as u8,
                velocity: 0.8,
            };
            let _ = self.from_engine.push(FromEngine::Note(note));
        }
    }

    /// The measured part: one `process()` call.
    fn process(&mut self) {
        let len = BLOCK_SAMPLES as usize;
        self.core.process(
            &mut self.io,
            BLOCK_SAMPLES,
            &self.transport,
            &self.settings,
            &mut [&mut self.left[..len], &mut self.right[..len]],
        );
    }

    /// The host and generator work after a block (not measured).
    fn finish(&mut self) {
        black_box(&self.left);
        self.output_events += self.io.output_len as u64;
        while self.to_engine.pop().is_ok() {}
        self.blocks += 1;
        if let Some(pos) = &mut self.transport.pos_beats {
            *pos += f64::from(BLOCK_SAMPLES) / SAMPLES_PER_BEAT;
        }
    }
}

fn bench_scenario(c: &mut Criterion, scenario: Scenario) {
    let mut harness = Harness::new(scenario);
    let (blocks_before, out_before) = (harness.blocks, harness.output_events);
    let generated_before = harness.status.counters().generated_notes_played;
    let allocations_before = allocations();
    c.bench_function(scenario.name, |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                harness.prepare();
                let start = Instant::now();
                measured(|| harness.process());
                total += start.elapsed();
                harness.finish();
            }
            total
        })
    });
    let blocks = harness.blocks - blocks_before;
    if blocks == 0 {
        // Filtered out on the command line.
        return;
    }
    let counters = harness.status.counters();
    let allocations = allocations() - allocations_before;
    let snapshot = *harness.snapshot.read();
    println!(
        "{}: {blocks} measured blocks, {:.1} output events and {:.2} generated notes per block, \
         {} notes scheduled and {} voices sounding at the end, late {}, dropped {}, \
         allocator calls inside process(): {allocations}",
        scenario.name,
        (harness.output_events - out_before) as f64 / blocks as f64,
        (counters.generated_notes_played - generated_before) as f64 / blocks as f64,
        snapshot.scheduled_notes,
        snapshot.active_voices,
        counters.late_notes,
        counters.dropped_total(),
    );
    assert_eq!(allocations, 0, "process() allocated");
    assert_eq!(counters.late_notes + counters.dropped_total(), 0);
}

fn process_block(c: &mut Criterion) {
    for scenario in [
        Scenario {
            name: "process_512/32_events_voice_on",
            events_per_block: 32,
            voice: true,
            kernel: None,
        },
        Scenario {
            name: "process_512/32_events_voice_off",
            events_per_block: 32,
            voice: false,
            kernel: None,
        },
        Scenario {
            name: "process_512/1_event_voice_on",
            events_per_block: 1,
            voice: true,
            kernel: None,
        },
        // The narrower kernels other CPUs get (AVX2 without AVX-512; portable off x86-64).
        Scenario {
            name: "process_512/32_events_voice_on_avx2",
            events_per_block: 32,
            voice: true,
            kernel: Some(Kernel::Avx2),
        },
        Scenario {
            name: "process_512/32_events_voice_on_portable",
            events_per_block: 32,
            voice: true,
            kernel: Some(Kernel::Portable),
        },
    ] {
        if scenario.kernel.is_some_and(|kernel| !kernel.is_available()) {
            println!(
                "{}: skipped, this CPU cannot run that kernel",
                scenario.name
            );
            continue;
        }
        bench_scenario(c, scenario);
    }
}

criterion_group!(benches, process_block);
criterion_main!(benches);
