use std::collections::{HashMap, VecDeque};

use nice_plug::midi::{Channel, Key, VoiceID};

use super::schedule::controller_is_down;
use super::*;
use crate::generator::{EchoGenerator, Generator, Outbox};
use crate::params::{Mode, TriggerSource};
use crate::protocol::{AnswerRequest, GeneratedNote, NoteTime, MAX_ANSWER_MS};

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
    /// Every answer request sent to the generator.
    requests: Vec<AnswerRequest>,
}

impl Rig {
    /// A rig at 48 kHz, thru off, whose echo answer (key 72) to one played note (60) is
    /// sounding, after blocks of 512 samples.
    fn answering() -> Self {
        let mut rig = Rig::new(48_000.0);
        rig.settings.thru = false;
        rig.settings.silence_beats = 0.25;
        rig.settings.answer_bars = 4;
        rig.block(512, &[on(0, 60)]);
        rig.block(512, &[off(0, 60)]);
        rig.block_until(512, "on 0:72");
        rig
    }

    /// Runs empty blocks of `len` samples until one sends a line ending in `suffix`, and
    /// returns that block's lines (fails after 10,000 blocks).
    fn block_until(&mut self, len: u32, suffix: &str) -> Vec<String> {
        for _ in 0..10_000 {
            let out = self.block(len, &[]);
            if out.iter().any(|l| l.ends_with(suffix)) {
                return out;
            }
        }
        panic!("no block sent a line ending in {suffix:?}");
    }

    fn new(sample_rate: f64) -> Self {
        let status = Arc::new(SharedStatus::default());
        let (snapshot_in, _snapshot_out) = triple_buffer::triple_buffer(&EditorSnapshot::default());
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
            requests: Vec::new(),
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
            if let ToEngine::Trigger(request) = message {
                assert!(request.is_valid(), "{request:?}");
                self.requests.push(request);
            }
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

/// A note-on from the host (voice id 7, channel 1), for this file and `roll_tests`.
pub(super) fn on(timing: u32, key: u8) -> NoteEvent<()> {
    NoteEvent::NoteOn {
        timing,
        voice_id: VoiceID::ID(7),
        channel: Channel::Number(0),
        key: Key::Number(key),
        velocity: 0.5,
    }
}

/// The matching note-off.
pub(super) fn off(timing: u32, key: u8) -> NoteEvent<()> {
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
    super::output::note_off(timing, channel, key)
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

/// The audio thread decides an answer's length once and sends it: its bars at the host's tempo
/// and metre, or "as played" the phrase's length (4 beats before any phrase), never more than
/// the protocol's maximum; an unusable host tempo counts as the default.
#[test]
fn the_request_carries_the_resolved_length_and_tempo() {
    let mut rig = Rig::new(48_000.0);
    rig.settings.thru = false;
    rig.settings.answer_bars = 0;
    // A manual trigger before anything was played: 4 beats at the default tempo.
    rig.settings.trigger = true;
    rig.block(480, &[]);
    rig.settings.trigger = false;
    rig.run(10, 480);
    let first = rig.requests.last().copied().unwrap();
    assert_eq!(first.tempo_bpm, 120.0);
    assert_eq!(first.length_ms, 2000.0);

    // "As played": the phrase from its first note-on to its last note event, 1 s.
    rig.settings.silence_beats = 1.0;
    rig.block(480, &[on(0, 60)]);
    rig.block(47_520, &[]);
    rig.block(480, &[off(0, 60)]);
    rig.run(200, 480);
    assert_eq!(rig.requests.len(), 2);
    assert!(
        (rig.requests[1].length_ms - 1000.0).abs() < 1e-9,
        "{:?}",
        rig.requests[1]
    );

    // Bars at the host's tempo and metre: one bar of 3/4 at 90 BPM is 2 s.
    let mut rig = Rig::new(48_000.0);
    rig.settings.answer_bars = 1;
    rig.play(90.0, 0.0);
    rig.transport.time_sig = Some((3, 4));
    rig.settings.trigger = true;
    rig.block(480, &[]);
    let request = rig.requests.last().copied().unwrap();
    assert_eq!(request.tempo_bpm, 90.0);
    assert!((request.length_ms - 2000.0).abs() < 1e-9, "{request:?}");

    // A host tempo that is no tempo is the default; an absurdly slow one is cut to the most.
    for (host_tempo, tempo, length_ms) in [(f64::NAN, 120.0, 2000.0), (0.0, 120.0, 2000.0)] {
        let mut rig = Rig::new(48_000.0);
        rig.settings.answer_bars = 1;
        rig.settings.trigger = true;
        rig.transport.tempo_bpm = Some(host_tempo);
        rig.block(480, &[]);
        let request = rig.requests.last().copied().unwrap();
        assert_eq!((request.tempo_bpm, request.length_ms), (tempo, length_ms));
    }
    let mut rig = Rig::new(48_000.0);
    rig.settings.answer_bars = 16;
    rig.settings.trigger = true;
    rig.transport.tempo_bpm = Some(1.0);
    rig.block(480, &[]);
    assert_eq!(rig.requests.last().unwrap().length_ms, MAX_ANSWER_MS);
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
    rig.block_until(480, "on 0:72");
    // Loop back to the start.
    rig.transport.pos_beats = Some(0.0);
    assert_eq!(rig.block(480, &[]), ["0 off 0:72"]);
    assert!(rig.stuck().is_empty());
}

#[test]
fn bypass_releases_and_passes_through() {
    let mut rig = Rig::answering();
    rig.settings.bypass = true;
    assert_eq!(rig.block(512, &[on(10, 50)]), ["0 off 0:72", "10 on 0:50"]);
    rig.settings.bypass = false;
    assert_eq!(rig.block(512, &[off(4, 50)]), ["4 off 0:50"]);
    assert!(rig.stuck().is_empty());
}

#[test]
fn mode_change_releases_generated_notes() {
    let mut rig = Rig::answering();
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
