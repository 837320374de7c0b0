//! The call-and-response scenario of issue #14, through the built CLAP bundle in real time:
//! the transport plays at 120 BPM; ten times, the player plays a phrase of four eighth notes
//! and then stays silent for 2 s. A round is answered when a generated note starts within its
//! silence. Prints, per round, the time from the phrase's last note-off to the first answered
//! note and the notes answered, then the totals and the notes left sounding (must be none).
//!
//! ```text
//! cargo xtask bundle continuo --release
//! CONTINUO_MODEL=<weights> CONTINUO_CONFIG=medium [CONTINUO_QUANTIZE=q4] \
//!     cargo run --release -p continuo-tests --example live_call_response
//! ```
//!
//! Without `CONTINUO_MODEL` the tiny test model plays. A measurement, not a test: it prints.

use std::time::{Duration, Instant};

use anyhow::Result;
use continuo_tests::{Harness, HostTransport, In, Out};

const RATE: f64 = 48_000.0;
const FRAMES: u32 = 480;
const ROUNDS: usize = 10;

/// Processes one block and waits until its end is due in real time.
fn block(harness: &mut Harness, events: &[In], clock: &mut Instant) -> Result<Vec<Out>> {
    let out = harness.process(FRAMES, events)?;
    *clock += Duration::from_secs_f64(f64::from(FRAMES) / RATE);
    if let Some(wait) = clock.checked_duration_since(Instant::now()) {
        std::thread::sleep(wait);
    }
    Ok(out)
}

fn main() -> Result<()> {
    let mut harness = Harness::start(RATE, FRAMES)?;
    harness.transport = Some(HostTransport {
        playing: true,
        tempo_bpm: 120.0,
        pos_beats: 0.0,
    });
    let mut clock = Instant::now();
    block(
        &mut harness,
        &[
            In::param(0, "mode", 0.0), // call and response
            In::param(0, "thru", 0.0), // every note out is generated
            In::param(0, "voice", 0.0),
        ],
        &mut clock,
    )?;
    // Let the generator load its model (3 s of blocks).
    for _ in 0..300 {
        block(&mut harness, &[], &mut clock)?;
    }
    let ms_per_block = f64::from(FRAMES) / RATE * 1000.0;
    let (mut answered, mut total_notes) = (0, 0);
    for round in 0..ROUNDS {
        // Four eighth notes (250 ms apart at 120 BPM), 200 ms each.
        let keys = [60u16, 64, 67, 72].map(|k| k + (round as u16 % 3) * 2);
        for key in keys {
            block(&mut harness, &[In::on(0, key)], &mut clock)?;
            for _ in 0..19 {
                block(&mut harness, &[], &mut clock)?;
            }
            block(&mut harness, &[In::off(0, key)], &mut clock)?;
            for _ in 0..4 {
                block(&mut harness, &[], &mut clock)?;
            }
        }
        // 2 s of silence.
        let (mut first, mut notes) = (None, 0);
        for i in 0..200 {
            let out = block(&mut harness, &[], &mut clock)?;
            let ons = out.iter().filter(|n| n.is_on).count();
            if ons > 0 && first.is_none() {
                first = Some(i as f64 * ms_per_block);
            }
            notes += ons;
        }
        answered += usize::from(notes > 0);
        total_notes += notes;
        match first {
            Some(ms) => println!(
                "round {:2}: first note {ms:6.0} ms after the phrase, {notes} notes",
                round + 1
            ),
            None => println!("round {:2}: no answer", round + 1),
        }
    }
    harness.transport = Some(HostTransport {
        playing: false,
        tempo_bpm: 120.0,
        pos_beats: 0.0,
    });
    for _ in 0..100 {
        block(&mut harness, &[], &mut clock)?;
    }
    println!(
        "answered {answered} of {ROUNDS} silences, {total_notes} notes; notes left sounding: {}",
        harness.stuck_notes().len()
    );
    Ok(())
}
