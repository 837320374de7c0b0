//! How fast the plugin's generator answers, with the bundled model (or `CONTINUO_MODEL`).
//!
//! `cargo bench -p continuo --bench answer` drives `MoonbeamGenerator` directly, as its
//! thread does, and prints:
//! * trigger to first generated note (the bar: 50 ms), with a warm cache;
//! * trigger to the whole 4-bar answer at 120 BPM (bar: ready before its first note is due,
//!   which is on the next beat at least `answer_lead_ms` after the trigger: 100 ms, or enough
//!   to generate the whole answer at the speed measured on earlier answers);
//! * a style switch: loading the style file, and from handing it to the generator to the
//!   first note decoded with it (bar: heard within one beat, 500 ms at 120 BPM).
//!
//! Timings are printed, not asserted (this is a benchmark, not a test).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use continuo::audio::{answer_lead_ms, ANSWER_LEAD_MARGIN, ANSWER_LEAD_MS, MAX_ANSWER_LEAD_MS};
use continuo::generator::MoonbeamGenerator;
use continuo::generator::{Generator, Outbox};
use continuo::library::{locate_model, ModelCache, StyleSlot};
use continuo::protocol::{
    AnswerRequest, FromEngine, GenParams, NoteTime, PlayedNote, Stamp, ToEngine,
};
use continuo::status::SharedStatus;
use continuo_engine::Style;

const TRIALS: usize = 20;
const TEMPO_BPM: f64 = 120.0;
const ANSWER_BEATS: f64 = 16.0;

struct Rig {
    generator: MoonbeamGenerator,
    status: Arc<SharedStatus>,
    producer: rtrb::Producer<FromEngine>,
    consumer: rtrb::Consumer<FromEngine>,
}

impl Rig {
    fn handle(&mut self, message: ToEngine) {
        let (generator, mut out) = (
            &mut self.generator,
            Outbox::new(&mut self.producer, &self.status),
        );
        generator.handle(message, &mut out);
    }

    fn step(&mut self) -> bool {
        let (generator, mut out) = (
            &mut self.generator,
            Outbox::new(&mut self.producer, &self.status),
        );
        generator.step(&mut out)
    }

    fn settle(&mut self) {
        while self.step() {
            self.drain();
        }
        self.drain();
    }

    fn drain(&mut self) -> Vec<FromEngine> {
        let mut all = Vec::new();
        while let Ok(m) = self.consumer.pop() {
            all.push(m);
        }
        all
    }

    /// Plays the notes of the example prompt as a musician would, from `from_ms`.
    fn play(&mut self, notes: &[continuo_engine::Note], from_ms: f64) -> f64 {
        let mut events: Vec<(f64, bool, u8, f32)> = Vec::new();
        let origin = notes.iter().map(|n| n.onset).min().unwrap_or(0);
        for n in notes {
            let start = from_ms + (n.onset - origin) as f64 * 10.0;
            let key = n.pitch().clamp(0, 127) as u8;
            events.push((start, true, key, n.velocity as f32 / 127.0));
            events.push((start + n.duration.max(1) as f64 * 10.0, false, key, 0.0));
        }
        events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let mut last = from_ms;
        for (ms, is_on, key, velocity) in events {
            self.handle(ToEngine::Note(PlayedNote {
                time: Stamp {
                    clock_ms: ms,
                    beats: None,
                },
                channel: 0,
                key,
                velocity,
                is_on,
            }));
            self.step();
            last = ms;
        }
        self.settle();
        last
    }

    /// Triggers an answer and runs it to the end. The answer starts as far after the trigger
    /// as the audio thread would put it at the earliest (`answer_lead_ms` with the generator's
    /// measured speed so far). Returns (that lead in ms, time to first note, time to the end,
    /// notes, the smallest margin in ms between a note being ready and its start being due).
    fn answer(&mut self, answer_id: u32, clock_ms: f64) -> (f64, Duration, Duration, usize, f64) {
        let lead_ms = answer_lead_ms(
            self.status.generation_ratio(),
            ANSWER_BEATS * 60_000.0 / TEMPO_BPM,
        );
        let started = Instant::now();
        self.handle(ToEngine::Trigger(AnswerRequest {
            answer_id,
            start: Stamp {
                clock_ms: clock_ms + lead_ms,
                beats: None,
            },
            length_ms: ANSWER_BEATS * 60_000.0 / TEMPO_BPM,
            tempo_bpm: TEMPO_BPM,
        }));
        let mut first = None;
        let mut notes = 0;
        let mut margin = f64::INFINITY;
        loop {
            let more = self.step();
            for message in self.drain() {
                match message {
                    FromEngine::Note(note) => {
                        notes += 1;
                        let ready = started.elapsed();
                        first.get_or_insert(ready);
                        if let NoteTime::Millis(due) = note.start {
                            margin = margin.min(due - clock_ms - ready.as_secs_f64() * 1e3);
                        }
                    }
                    FromEngine::AnswerEnd { .. } => {
                        let end = started.elapsed();
                        self.settle();
                        return (lead_ms, first.unwrap_or(end), end, notes, margin);
                    }
                }
            }
            if !more {
                let end = started.elapsed();
                return (lead_ms, first.unwrap_or(end), end, notes, margin);
            }
        }
    }
}

fn stats(label: &str, unit: &str, mut values: Vec<f64>) {
    values.sort_by(f64::total_cmp);
    let pick = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    println!(
        "{label:<44} min {:>7.1}   median {:>7.1}   p95 {:>7.1}   max {:>7.1} {unit}",
        pick(0.0),
        pick(0.5),
        pick(0.95),
        pick(1.0)
    );
}

fn main() {
    let location = locate_model().expect("no model");
    let status = Arc::new(SharedStatus::default());
    let models = Arc::new(ModelCache::default());
    let styles = Arc::new(StyleSlot::default());
    let (producer, consumer) = rtrb::RingBuffer::new(4096);
    let mut rig = Rig {
        generator: MoonbeamGenerator::with_model(
            status.clone(),
            models.clone(),
            styles.clone(),
            location.clone(),
        ),
        status: status.clone(),
        producer,
        consumer,
    };
    let loaded = Instant::now();
    {
        let (generator, mut out) = (
            &mut rig.generator,
            Outbox::new(&mut rig.producer, &rig.status),
        );
        generator.start(&mut out);
    }
    rig.drain();
    assert!(rig.generator.has_model(), "{:?}", status.try_engine_info());
    println!(
        "model: {} (loaded in {:.0} ms)",
        location.label(),
        loaded.elapsed().as_secs_f64() * 1e3
    );
    rig.handle(ToEngine::Params(GenParams {
        temperature: 0.9,
        top_p: 0.95,
        ..GenParams::default()
    }));

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let prompt = continuo_engine::midi::read_midi_file(
        &root.join("assets/examples/satie_gymnopedie_no1.mid"),
    )
    .expect("example prompt");
    let mut clock = rig.play(&prompt[..64.min(prompt.len())], 0.0) + 1000.0;
    println!(
        "played context: {} notes; cache warm: {}",
        rig.generator.context_len(),
        rig.generator.is_synced()
    );

    let (mut leads, mut firsts, mut ends, mut counts, mut margins) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // Answers complete by the earliest moment their first note can be due (the lead; the next
    // beat is that or later), and by when it is due with the trigger at a spread of places in
    // the beat (the first beat at least the lead after it).
    let (mut complete_at_lead, mut complete_on_beat) = (0, 0);
    let ms_per_beat = 60_000.0 / TEMPO_BPM;
    for trial in 0..TRIALS {
        let (lead, first, end, notes, margin) = rig.answer(trial as u32 + 1, clock);
        let end_ms = end.as_secs_f64() * 1e3;
        if trial == 0 {
            println!(
                "first answer after loading (speed from the warm-up only): lead {lead:.0} ms, \
                 whole answer {end_ms:.1} ms, {notes} notes"
            );
        }
        complete_at_lead += usize::from(end_ms <= lead);
        let phase = (trial as f64 * 0.618_034).fract();
        let due = ((phase + lead / ms_per_beat).ceil() - phase) * ms_per_beat;
        complete_on_beat += usize::from(end_ms <= due);
        leads.push(lead);
        firsts.push(first.as_secs_f64() * 1e3);
        ends.push(end_ms);
        counts.push(notes as f64);
        margins.push(margin);
        // The player answers back with a few notes, then triggers again.
        let more: Vec<continuo_engine::Note> = (0..4)
            .map(|i| prompt[(64 + trial * 4 + i) % prompt.len()])
            .collect();
        clock = rig.play(&more, clock) + 1000.0;
    }
    stats("trigger to first note (warm cache)", "ms", firsts);
    stats("trigger to whole 4-bar answer (120 BPM)", "ms", ends);
    stats("notes per answer", "notes", counts);
    stats("lead: earliest first note after trigger", "ms", leads);
    stats("smallest margin: note due minus note ready", "ms", margins);
    println!(
        "whole answer ready by the earliest time its first note can be due: {complete_at_lead}/{TRIALS}; \
         by the beat it is due on, triggers spread over the beat: {complete_on_beat}/{TRIALS}"
    );
    println!(
        "(the first note is due on the next beat at least the lead after the trigger: \
         {ANSWER_LEAD_MS:.0} ms, or {ANSWER_LEAD_MARGIN} x the time to generate the answer at the \
         measured speed, at most {MAX_ANSWER_LEAD_MS:.0} ms)"
    );

    // A style switch in the middle of an answer.
    let style_path = root.join("lora-weights/folk/folk.safetensors");
    let model = models.current().expect("model");
    let load = Instant::now();
    let style =
        continuo_engine::style::load_style(&style_path, &model.cfg, Some(&model.fingerprint()));
    let load_ms = load.elapsed().as_secs_f64() * 1e3;
    match style {
        Err(e) => println!(
            "style switch: {} not usable with this model ({e})",
            style_path.display()
        ),
        Ok((adapter, card)) => {
            let adapter = Arc::new(adapter);
            let mut switch = Vec::new();
            for trial in 0..TRIALS {
                rig.handle(ToEngine::Trigger(AnswerRequest {
                    answer_id: 1000 + trial as u32,
                    start: Stamp {
                        clock_ms: clock + ANSWER_LEAD_MS,
                        beats: None,
                    },
                    length_ms: ANSWER_BEATS * 60_000.0 / TEMPO_BPM,
                    tempo_bpm: TEMPO_BPM,
                }));
                for _ in 0..4 {
                    rig.step();
                    rig.drain();
                }
                let asked = Instant::now();
                if trial % 2 == 0 {
                    styles.set_for(
                        &model,
                        card.name.clone(),
                        Style::single(adapter.clone(), 1.0),
                    );
                } else {
                    styles.clear();
                }
                // Until the next note decoded with the new style is out.
                let mut done = None;
                while done.is_none() {
                    let more = rig.step();
                    let styled = (trial % 2 == 0) == rig.generator.style_name().is_some();
                    if styled
                        && rig.drain().iter().any(|m| {
                            matches!(m, FromEngine::Note(_) | FromEngine::AnswerEnd { .. })
                        })
                    {
                        done = Some(asked.elapsed());
                    }
                    if !more {
                        done.get_or_insert(asked.elapsed());
                    }
                }
                switch.push(done.unwrap().as_secs_f64() * 1e3);
                rig.settle();
                clock += 10_000.0;
            }
            println!("style file load ({}): {load_ms:.1} ms", card.name);
            stats("style handed over to next note with it", "ms", switch);
        }
    }
}
