//! Styles through a real CLAP host: switching in the middle of an answer, and the chosen style
//! saved with the state by path (a file gone on restore falls back to the base model).
//!
//! The harness gives the plugin two styles made for the tiny test model ([`TEST_STYLES`]) as
//! its shipped styles, so the `style` parameter's values 1 and 2 are "Tiny A" and "Tiny B".

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use continuo_tests::{Harness, In, Out, TEST_STYLES};

const MODE_MANUAL: f64 = 1.0;

/// Processes `blocks` blocks in real time (so the generator and loader threads keep pace as in
/// a host), collecting the output with times counted from the first block.
fn run_real_time(harness: &mut Harness, frames: u32, blocks: u32) -> Result<Vec<Out>> {
    let mut all = Vec::new();
    for block in 0..blocks {
        let out = harness.process(frames, &[])?;
        all.extend(out.into_iter().map(|mut n| {
            n.time += block * frames;
            n
        }));
        std::thread::sleep(Duration::from_secs_f64(
            f64::from(frames) / harness.sample_rate,
        ));
    }
    Ok(all)
}

/// Waits (processing blocks) until slot A's saved style choice has this name.
fn wait_for_choice(harness: &mut Harness, name: Option<&str>) -> Result<serde_json::Value> {
    wait_for_field(harness, "style-choice", name)
}

/// Waits (processing blocks) until the saved style choice `field` (`style-choice` or
/// `style-b-choice`) has this name.
fn wait_for_field(
    harness: &mut Harness,
    field: &str,
    name: Option<&str>,
) -> Result<serde_json::Value> {
    let started = Instant::now();
    loop {
        let choice = harness.state_field(field)?;
        let matches = match name {
            Some(name) => choice["name"] == name && choice["path"].is_string(),
            None => choice["path"].is_null(),
        };
        if matches {
            return Ok(choice);
        }
        if started.elapsed() > Duration::from_secs(20) {
            bail!("{field} never became {name:?}: {choice}");
        }
        run_real_time(harness, 480, 5)?;
    }
}

fn generated_ons(out: &[Out]) -> usize {
    out.iter().filter(|n| n.is_on).count()
}

#[test]
fn style_switch_in_the_middle_of_an_answer() -> Result<()> {
    let mut harness = Harness::start(48_000.0, 480)?;
    harness.process(
        480,
        &[
            In::param(0, "mode", MODE_MANUAL),
            In::param(0, "thru", 0.0),
            In::param(0, "voice", 0.0),
            In::param(0, "bars", 2.0),
            In::param(0, "dens", 1.0), // normalized: the highest density cap
        ],
    )?;
    for (key, at) in [(60, 0), (64, 1), (67, 2), (72, 3)] {
        harness.process(480, &[In::on(at, key)])?;
        harness.process(480, &[In::off(at, key)])?;
    }
    harness.process(480, &[In::param(0, "trig", 1.0)])?;
    harness.process(480, &[In::param(0, "trig", 0.0)])?;
    // The answer starts (thru is off: every note out is generated).
    let mut out = run_real_time(&mut harness, 480, 60)?;
    let before = generated_ons(&out);
    // Switch styles while the answer plays: to Tiny A, then Tiny B, then back to the base.
    for (value, name) in [
        (1.0, Some(TEST_STYLES[0])),
        (2.0, Some(TEST_STYLES[1])),
        (0.0, None),
    ] {
        out.extend(harness.process(480, &[In::param(0, "style", value)])?);
        wait_for_choice(&mut harness, name)?;
        out.extend(run_real_time(&mut harness, 480, 20)?);
    }
    // The answer went on through the switches, and ends with every note released.
    out.extend(run_real_time(&mut harness, 480, 400)?);
    assert!(before > 0, "the answer never started");
    assert!(
        generated_ons(&out) > before,
        "nothing was generated after the first switch"
    );
    assert!(
        harness.stuck_notes().is_empty(),
        "{:?}",
        harness.stuck_notes()
    );
    assert_eq!(harness.unmatched_note_offs, 0);
    Ok(())
}

#[test]
fn style_choices_round_trip_and_a_missing_file_falls_back() -> Result<()> {
    let mut harness = Harness::start(48_000.0, 480)?;
    harness.process(
        480,
        &[
            In::param(0, "style", 2.0),
            In::param(0, "styleb", 1.0),
            In::param(0, "blend", 0.25),
        ],
    )?;
    let choice = wait_for_choice(&mut harness, Some(TEST_STYLES[1]))?;
    let choice_b = wait_for_field(&mut harness, "style-b-choice", Some(TEST_STYLES[0]))?;
    let state = harness.save_state()?;
    let mut json = harness.state_json()?;

    // Restored into a new instance: the same style, by path.
    let mut restored = Harness::load()?;
    restored.load_state(&state)?;
    restored.activate(48_000.0, 480)?;
    run_real_time(&mut restored, 480, 10)?;
    assert_eq!(
        wait_for_choice(&mut restored, Some(TEST_STYLES[1]))?,
        choice
    );
    assert_eq!(restored.param_value("style")?, 2.0);
    // Slot B and the blend come back too.
    assert_eq!(restored.state_field("style-b-choice")?, choice_b);
    assert_eq!(restored.param_value("styleb")?, 1.0);
    assert!((restored.param_value("blend")? - 0.25).abs() < 1e-6);

    // A project whose style file is gone: the base model, not a crash or a stale choice.
    let gone = serde_json::json!({"path": "/nonexistent/gone.safetensors", "name": "Gone"});
    json["fields"]["style-choice"] = serde_json::Value::String(gone.to_string());
    let mut missing = Harness::load()?;
    missing.load_state_json(&json)?;
    missing.activate(48_000.0, 480)?;
    wait_for_choice(&mut missing, None)?;
    // It still answers.
    missing.process(480, &[In::param(0, "mode", MODE_MANUAL), In::on(0, 60)])?;
    missing.process(480, &[In::off(0, 60), In::param(0, "trig", 1.0)])?;
    let out = run_real_time(&mut missing, 480, 200)?;
    assert!(out.iter().any(|n| n.is_on && n.key != 60), "{out:?}");
    Ok(())
}

/// Plays the same phrase into a fresh instance with Tiny A in slot A and Tiny B in slot B, and
/// triggers two answers. During the first, the blend follows `ramp` (one value per block, the
/// automation a host sends); the second is played at the ramp's last value. Returns the
/// second answer's notes `(time from its trigger, key, on)` and the whole output.
/// A note the plugin sent: `(time from the trigger, key, on)`.
type NoteAt = (u32, i16, bool);

fn blended_answers(ramp: &[f64]) -> Result<(Vec<NoteAt>, Vec<Out>, Harness)> {
    let mut harness = Harness::start(48_000.0, 480)?;
    harness.process(
        480,
        &[
            In::param(0, "mode", MODE_MANUAL),
            In::param(0, "thru", 0.0),
            In::param(0, "voice", 0.0),
            In::param(0, "bars", 1.0),
            In::param(0, "dens", 1.0), // normalized: the highest density cap
            In::param(0, "seed", 7.0),
            In::param(0, "style", 1.0),
            In::param(0, "styleb", 2.0),
        ],
    )?;
    wait_for_choice(&mut harness, Some(TEST_STYLES[0]))?;
    wait_for_field(&mut harness, "style-b-choice", Some(TEST_STYLES[1]))?;
    for (key, at) in [(60, 0), (64, 1), (67, 2), (72, 3), (71, 4), (67, 5)] {
        harness.process(480, &[In::on(at, key)])?;
        harness.process(480, &[In::off(at, key)])?;
    }
    // The saved choices above change before the loader hands the styles to the generator;
    // half a second lets that happen before the trigger. (A style that reaches the generator
    // after the phrase re-reads the context under it, so the answer does not depend on when.)
    let mut all = run_real_time(&mut harness, 480, 50)?;
    all.extend(harness.process(480, &[In::param(0, "trig", 1.0)])?);
    all.extend(harness.process(480, &[In::param(0, "trig", 0.0)])?);
    for &blend in ramp {
        all.extend(harness.process(480, &[In::param(0, "blend", blend)])?);
        std::thread::sleep(Duration::from_millis(10));
    }
    all.extend(run_real_time(&mut harness, 480, 300)?);
    all.extend(harness.process(480, &[In::param(0, "trig", 1.0)])?);
    let second = run_real_time(&mut harness, 480, 400)?;
    all.extend(second.iter().copied());
    let notes = second.iter().map(|n| (n.time, n.key, n.is_on)).collect();
    Ok((notes, all, harness))
}

/// The blend automated from A to B while an answer plays leaves no stuck notes, and the
/// blend reaches the model: the next answer at B differs from the same answer at A, while two
/// instances at A answer alike (so the difference is the blend's, not chance's).
#[test]
fn blend_automation_from_a_to_b_during_an_answer() -> Result<()> {
    let at_a = vec![0.0; 40];
    let a_to_b: Vec<f64> = (0..40).map(|i| f64::from(i + 1) / 40.0).collect();
    let (first, _, _) = blended_answers(&at_a)?;
    let (again, _, _) = blended_answers(&at_a)?;
    let (moved, out, mut harness) = blended_answers(&a_to_b)?;
    assert!(generated_ons(&out) > 0, "nothing was generated");
    assert!(first.iter().any(|n| n.2), "the second answer at A is empty");
    assert_eq!(
        first, again,
        "two instances at blend 0 answered differently"
    );
    assert_ne!(first, moved, "the blend did not change the answer");
    assert!(
        harness.stuck_notes().is_empty(),
        "{:?}",
        harness.stuck_notes()
    );
    assert_eq!(harness.unmatched_note_offs, 0);
    assert_eq!(harness.param_value("blend")?, 1.0);
    let label = harness.state_field("style-b-choice")?;
    assert_eq!(label["name"], TEST_STYLES[1]);
    Ok(())
}
