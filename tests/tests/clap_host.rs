//! Drives the built debug `Continuo.clap` bundle from a real CLAP host (clack-host).
//!
//! The bundle is built with nice-plug's `assert_process_allocs`, so any allocation inside the
//! plugin's `process()` aborts the test process. Build it first with `cargo xtask bundle continuo`.

use std::time::Duration;

use anyhow::Result;
use continuo_tests::{Harness, HostTransport, In, Out};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Every parameter id the plugin must keep (host-facing: never renamed).
const PARAM_IDS: [&str; 26] = [
    "bypass", "mode", "thru", "voice", "outch", "bars", "silenc", "temp", "topp", "seed", "stystr",
    "velsc", "pitlo", "pithi", "dens", "trig", "quant", "swing", "key", "scale", "trgsrc",
    "trgnot", "trgcc", "style", "styleb", "blend",
];

/// CLAP values of the `mode` enum (stepped: the variant index).
const MODE_CALL_RESPONSE: f64 = 0.0;
const MODE_MANUAL: f64 = 1.0;

/// Manual mode, thru on, built-in voice off: only the player's notes come out.
fn quiet_thru() -> Vec<In> {
    vec![
        In::param(0, "mode", MODE_MANUAL),
        In::param(0, "voice", 0.0),
    ]
}

/// Output notes sounding now (thru and generated).
fn sounding(harness: &Harness) -> i64 {
    harness.stuck_notes().iter().map(|(_, n)| n).sum()
}

/// Processes blocks in real time, as a DAW does, so the generator thread has the same margin as
/// in a host (answers are due about 100 ms after a trigger; a test would otherwise run through
/// that in microseconds and every answer would be late). Stops after the first block after which
/// more than `more_than` output notes are sounding: the generator's notes have keys and lengths
/// chosen by the model, so tests wait for one of them to be sounding rather than for a given key.
fn run_until_sounding(
    harness: &mut Harness,
    frames: u32,
    max_blocks: u32,
    more_than: i64,
) -> Result<Vec<Out>> {
    let mut all = Vec::new();
    for block in 0..max_blocks {
        let out = harness.process(frames, &[])?;
        all.extend(out.into_iter().map(|mut n| {
            n.time += block * frames;
            n
        }));
        if sounding(harness) > more_than {
            return Ok(all);
        }
        std::thread::sleep(Duration::from_secs_f64(
            f64::from(frames) / harness.sample_rate,
        ));
    }
    anyhow::bail!("no generated note sounded in {max_blocks} blocks: {all:?}")
}

#[test]
fn descriptor_ports_and_debug_build() -> Result<()> {
    let mut harness = Harness::load()?;
    let (description, features) = harness.descriptor()?;
    if std::env::var_os("CONTINUO_ALLOW_RELEASE_BUNDLE").is_none() {
        assert!(
            description.contains("debug build"),
            "not a debug bundle (allocation checks off): {description}; \
             run `cargo xtask bundle continuo` without --release"
        );
    }
    for feature in ["instrument", "note-effect"] {
        assert!(features.iter().any(|f| f == feature), "{features:?}");
    }
    assert_eq!(harness.ports()?, (1, 1, 0, vec![2]));
    Ok(())
}

#[test]
fn params_have_stable_ids_and_exact_stepped_values() -> Result<()> {
    let mut harness = Harness::load()?;
    let infos = harness.param_infos()?;
    assert_eq!(infos.len(), PARAM_IDS.len());
    for id in PARAM_IDS {
        let info = infos
            .iter()
            .find(|i| i.id == continuo_tests::param_id(id))
            .unwrap_or_else(|| panic!("no parameter with id {id}"));
        assert!(
            info.min <= info.default && info.default <= info.max,
            "{info:?}"
        );
        if info.stepped {
            // Hosts truncate stepped values: they must be exact integers.
            assert_eq!(info.default, info.default.trunc(), "{id}: {info:?}");
            assert_eq!(harness.param_value(id)?, info.default, "{id}");
        }
    }
    Ok(())
}

#[test]
fn thru_at_exact_sample_offsets() -> Result<()> {
    let mut harness = Harness::start(48_000.0, 512)?;
    harness.process(512, &quiet_thru())?;
    let input = [
        In::On {
            time: 0,
            channel: 0,
            key: 60,
            velocity: 0.5,
        },
        In::On {
            time: 1,
            channel: 3,
            key: 64,
            velocity: 1.0,
        },
        In::Off {
            time: 1,
            channel: 0,
            key: 60,
        },
        In::On {
            time: 255,
            channel: 15,
            key: 0,
            velocity: 0.25,
        },
        In::Off {
            time: 300,
            channel: 3,
            key: 64,
        },
        In::Off {
            time: 511,
            channel: 15,
            key: 0,
        },
    ];
    let out = harness.process(512, &input)?;
    let got: Vec<(u32, bool, i16, i16, f64)> = out
        .iter()
        .map(|n| (n.time, n.is_on, n.channel, n.key, n.velocity))
        .collect();
    assert_eq!(
        got,
        [
            (0, true, 0, 60, 0.5),
            (1, true, 3, 64, 1.0),
            (1, false, 0, 60, 0.0),
            (255, true, 15, 0, 0.25),
            (300, false, 3, 64, 0.0),
            (511, false, 15, 0, 0.0),
        ]
    );
    // Thru off: new notes stay in, but the note-off of a note passed on before still goes out.
    harness.process(64, &[In::on(5, 70)])?;
    let out = harness.process(
        64,
        &[In::param(0, "thru", 0.0), In::on(3, 71), In::off(9, 70)],
    )?;
    assert_eq!(
        out.iter()
            .map(|n| (n.time, n.is_on, n.key))
            .collect::<Vec<_>>(),
        [(9, false, 70)]
    );
    assert!(harness.stuck_notes().is_empty());
    assert_eq!(harness.unmatched_note_offs, 0);
    Ok(())
}

#[test]
fn call_and_response_answers_in_order_and_stops_on_barge_in() -> Result<()> {
    let mut harness = Harness::start(48_000.0, 480)?;
    harness.process(
        480,
        &[
            In::param(0, "mode", MODE_CALL_RESPONSE),
            In::param(0, "thru", 0.0),
            In::param(0, "silenc", 0.0), // the minimum: a quarter beat
            In::param(0, "bars", 4.0),
        ],
    )?;
    // A three-note phrase.
    let phrase: [&[In]; 9] = [
        &[In::on(0, 60)],
        &[],
        &[],
        &[In::off(0, 60), In::on(100, 62)],
        &[],
        &[],
        &[In::off(0, 62), In::on(50, 64)],
        &[],
        &[In::off(400, 64)],
    ];
    for events in phrase {
        harness.process(480, events)?;
    }
    // After the silence the generator answers (thru is off: every note out is generated), in
    // time order, on the output channel, with the plugin's own note ids. Wait until one of its
    // notes is sounding.
    let out = run_until_sounding(&mut harness, 480, 400, 0)?;
    assert!(out.iter().any(|n| n.is_on));
    assert!(out.windows(2).all(|w| w[0].time <= w[1].time));
    assert!(out.iter().all(|n| n.channel == 0 && n.note_id == -1));
    let sounding_keys: Vec<i16> = harness.stuck_notes().iter().map(|((_, k), _)| *k).collect();
    // The player plays again: everything generated is released at once, at the player's note.
    let out = harness.process(480, &[In::on(123, 50)])?;
    assert!(out.windows(2).all(|w| w[0].time <= w[1].time));
    assert!(
        out.iter()
            .all(|n| n.time < 123 || (n.time == 123 && !n.is_on)),
        "{out:?}"
    );
    for key in sounding_keys {
        assert!(
            out.iter()
                .any(|n| n.time == 123 && !n.is_on && n.key == key),
            "{key} not released: {out:?}"
        );
    }
    assert!(harness.stuck_notes().is_empty());
    // Nothing more of that answer comes.
    assert!(harness.run(50, 480)?.is_empty());
    Ok(())
}

#[test]
fn no_stuck_notes_across_bypass_transport_stop_and_reactivation() -> Result<()> {
    let mut harness = Harness::start(44_100.0, 441)?;
    harness.transport = Some(HostTransport {
        playing: true,
        tempo_bpm: 100.0,
        pos_beats: 0.0,
    });
    harness.process(
        441,
        &[In::param(0, "mode", MODE_MANUAL), In::param(0, "bars", 8.0)],
    )?;
    let answer = |harness: &mut Harness| -> Result<()> {
        harness.process(441, &[In::on(0, 60), In::on(10, 64)])?;
        harness.process(441, &[In::param(0, "trig", 1.0)])?;
        harness.process(441, &[In::param(0, "trig", 0.0)])?;
        // The player's two notes sound (thru); wait for a generated one as well.
        run_until_sounding(harness, 441, 600, 2)?;
        Ok(())
    };

    // Bypass: generated and passed-through notes are all released at once.
    answer(&mut harness)?;
    assert!(!harness.stuck_notes().is_empty());
    harness.process(441, &[In::param(0, "bypass", 1.0)])?;
    assert!(
        harness.stuck_notes().is_empty(),
        "{:?}",
        harness.stuck_notes()
    );
    // The player's late note-offs find nothing left to release.
    harness.process(
        441,
        &[In::off(0, 60), In::off(0, 64), In::param(0, "bypass", 0.0)],
    )?;
    assert_eq!(harness.unmatched_note_offs, 0);

    // Transport stop.
    answer(&mut harness)?;
    harness.transport.as_mut().unwrap().playing = false;
    harness.process(441, &[])?;
    assert!(
        harness.stuck_notes().is_empty(),
        "{:?}",
        harness.stuck_notes()
    );
    harness.process(441, &[In::off(0, 60), In::off(0, 64)])?;

    // Deactivation with a note sounding: released at the first block after reactivation.
    harness.transport.as_mut().unwrap().playing = true;
    harness.process(441, &[In::on(0, 48)])?;
    assert_eq!(harness.stuck_notes(), [((0, 48), 1)]);
    harness.deactivate();
    harness.activate(44_100.0, 441)?;
    let out = harness.process(441, &[])?;
    assert_eq!(
        out.iter()
            .map(|n| (n.time, n.is_on, n.key))
            .collect::<Vec<_>>(),
        [(0, false, 48)]
    );
    assert!(harness.stuck_notes().is_empty());
    assert_eq!(harness.unmatched_note_offs, 0);
    Ok(())
}

#[test]
fn state_round_trip() -> Result<()> {
    let mut harness = Harness::start(48_000.0, 64)?;
    let changes = [
        ("mode", 2.0),
        ("thru", 0.0),
        ("voice", 0.0),
        ("outch", 9.0),
        ("bars", 7.0),
        ("seed", 1234.0),
        ("pitlo", 36.0),
        ("pithi", 96.0),
        // Float parameters are normalized in CLAP.
        ("temp", 0.25),
        ("topp", 0.5),
        ("silenc", 0.75),
    ];
    let events: Vec<In> = changes
        .iter()
        .map(|&(id, value)| In::param(0, id, value))
        .collect();
    harness.process(64, &events)?;
    let saved: Vec<f64> = changes
        .iter()
        .map(|(id, _)| harness.param_value(id))
        .collect::<Result<_>>()?;
    let state = harness.save_state()?;

    let mut restored = Harness::load()?;
    restored.load_state(&state)?;
    let loaded: Vec<f64> = changes
        .iter()
        .map(|(id, _)| restored.param_value(id))
        .collect::<Result<_>>()?;
    for ((id, value), (before, after)) in changes.iter().zip(saved.iter().zip(&loaded)) {
        assert!(
            (before - value).abs() < 0.01,
            "{id}: set {value}, read {before}"
        );
        assert!(
            (before - after).abs() < 1e-9,
            "{id}: saved {before}, restored {after}"
        );
    }
    // The restored instance runs with them: generated channel 10, thru off.
    restored.activate(48_000.0, 64)?;
    assert!(restored.process(64, &[In::on(0, 60)])?.is_empty());
    Ok(())
}

#[test]
fn block_sizes_1_to_4096_and_sample_rates_44k_to_192k() -> Result<()> {
    const SIZES: [u32; 9] = [1, 2, 3, 17, 64, 256, 511, 1024, 4096];
    for sample_rate in [44_100.0, 48_000.0, 88_200.0, 96_000.0, 176_400.0, 192_000.0] {
        let mut harness = Harness::start(sample_rate, 4096)?;
        harness.transport = Some(HostTransport {
            playing: true,
            tempo_bpm: 120.0,
            pos_beats: 0.0,
        });
        harness.process(1, &[In::param(0, "mode", MODE_MANUAL)])?;
        let mut absolute = 1u64;
        for (i, &frames) in SIZES.iter().cycle().take(45).enumerate() {
            // A note-on at the last sample and its note-off at the first sample of the block:
            // they must come out at exactly those positions.
            let key = 40 + (i % 40) as u16;
            let previous_key = 40 + ((i + 39) % 40) as u16;
            let input = [In::off(0, previous_key), In::on(frames - 1, key)];
            let input = if i == 0 { &input[1..] } else { &input[..] };
            let out = harness.process(frames, input)?;
            let expected_on = (frames - 1, true, key as i16);
            assert!(
                out.iter().any(|n| (n.time, n.is_on, n.key) == expected_on),
                "{sample_rate} Hz, {frames} frames at {absolute}: {out:?}"
            );
            absolute += u64::from(frames);
        }
        harness.transport.as_mut().unwrap().playing = false;
        harness.process(4096, &[])?;
        assert!(
            harness.stuck_notes().is_empty(),
            "{sample_rate}: {:?}",
            harness.stuck_notes()
        );
        assert_eq!(harness.unmatched_note_offs, 0);
        assert!(
            harness.audio_peak.is_finite() && harness.audio_peak > 0.0 && harness.audio_peak < 4.0
        );
    }
    Ok(())
}

#[test]
fn fuzz_10000_random_blocks() -> Result<()> {
    let seed = std::env::var("CONTINUO_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut harness = Harness::start(48_000.0, 1024)?;
    harness.transport = Some(HostTransport {
        playing: false,
        tempo_bpm: 120.0,
        pos_beats: 0.0,
    });
    let mut held = [[false; 128]; 16];
    let (mut note_ons, mut generated) = (0, 0);
    for block in 0..10_000u32 {
        let frames = if rng.random_bool(0.05) {
            rng.random_range(1..=1024)
        } else {
            rng.random_range(1..=256)
        };
        let mut input = Vec::new();
        for _ in 0..rng.random_range(0..6) {
            let time = rng.random_range(0..frames);
            let channel = rng.random_range(0..2u16);
            let key = rng.random_range(48..72u16);
            input.push(match rng.random_range(0..100) {
                0..48 => In::On {
                    time,
                    channel,
                    key,
                    velocity: rng.random_range(0.0..=1.0),
                },
                48..96 => In::Off { time, channel, key },
                _ => In::Choke { time, channel, key },
            });
        }
        // Parameter changes are rarer, so that answers get a chance to play between them.
        if rng.random_bool(0.03) {
            let time = rng.random_range(0..frames);
            input.push(match rng.random_range(0..8) {
                0 => In::param(time, "bypass", f64::from(rng.random_range(0..2u8))),
                1 => In::param(time, "thru", f64::from(rng.random_range(0..2u8))),
                2 => In::param(time, "mode", f64::from(rng.random_range(0..3u8))),
                3 => In::param(time, "voice", f64::from(rng.random_range(0..2u8))),
                4 => In::param(time, "outch", f64::from(rng.random_range(0..16u8))),
                5 | 6 => In::param(time, "trig", f64::from(rng.random_range(0..2u8))),
                _ => In::param(time, "silenc", rng.random_range(0.0..0.2)),
            });
        }
        input.sort_by_key(In::time);
        for event in &input {
            match *event {
                In::On { channel, key, .. } => held[channel as usize][key as usize] = true,
                In::Off { channel, key, .. } | In::Choke { channel, key, .. } => {
                    held[channel as usize][key as usize] = false
                }
                In::Param { .. } => {}
            }
        }
        if rng.random_bool(0.01) {
            let transport = harness.transport.as_mut().unwrap();
            match rng.random_range(0..3) {
                0 => transport.playing = !transport.playing,
                1 => transport.pos_beats = rng.random_range(0.0..64.0),
                _ => transport.tempo_bpm = rng.random_range(40.0..240.0),
            }
        }
        let out = harness
            .process(frames, &input)
            .map_err(|e| e.context(format!("block {block}")))?;
        assert_eq!(harness.unmatched_note_offs, 0, "block {block}");
        note_ons += out.iter().filter(|n| n.is_on).count();
        // The player plays keys 48..72; notes outside them were generated (a lower bound).
        generated += out
            .iter()
            .filter(|n| n.is_on && !(48..72).contains(&n.key))
            .count();
        if block % 10 == 0 {
            // Give the generator thread some real time (it polls every millisecond), so some
            // answers arrive before they are due.
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    // How many answers arrive in time depends on how busy the machine is; the plugin crate's
    // `random_blocks_keep_the_output_well_formed` covers generated notes deterministically.
    eprintln!("fuzz: {note_ons} note-ons, {generated} of them generated");
    assert!(note_ons > 5_000, "{note_ons} note-ons");
    // The player lets go of everything, then bypass releases whatever the plugin still plays.
    let mut releases = Vec::new();
    for (channel, keys) in held.iter().enumerate() {
        for (key, &down) in keys.iter().enumerate() {
            if down {
                releases.push(In::Off {
                    time: 0,
                    channel: channel as u16,
                    key: key as u16,
                });
            }
        }
    }
    harness.process(256, &releases)?;
    harness.process(256, &[In::param(0, "bypass", 0.0)])?;
    harness.process(256, &[In::param(0, "bypass", 1.0)])?;
    harness.deactivate();
    assert!(
        harness.stuck_notes().is_empty(),
        "stuck: {:?}",
        harness.stuck_notes()
    );
    assert_eq!(harness.unmatched_note_offs, 0);
    assert!(harness.audio_peak.is_finite());
    Ok(())
}

/// A project saved by the build of 2026-12-04 (`tests/data/state-2026-12-04.json`: every
/// parameter, several away from its default) still loads: each saved parameter comes back
/// under the same id with the same value. A renamed or re-typed parameter id fails here.
/// Parameters added later may appear in the new state; none may disappear.
#[test]
fn a_project_saved_by_an_earlier_build_still_loads() -> Result<()> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/data/state-2026-12-04.json"
    ))?;
    let saved: serde_json::Value = serde_json::from_str(&text)?;
    let mut harness = Harness::load()?;
    harness.load_state_json(&saved)?;
    let now = harness.state_json()?;
    let (was, is) = (
        saved["params"].as_object().unwrap(),
        now["params"].as_object().unwrap(),
    );
    assert!(was.len() >= 20);
    for (id, value) in was {
        assert_eq!(is.get(id), Some(value), "parameter {id}");
    }
    // Spot checks in the host's terms: a changed integer, a changed choice.
    assert!((harness.param_value("seed")? - 1234.0).abs() < 0.01);
    assert!((harness.param_value("pitlo")? - 36.0).abs() < 0.01);
    Ok(())
}

/// The editor is resizable on both axes, opens at its default size, and the project keeps the
/// size it was last given (`editor-size`: width in the high 32 bits, height in the low ones,
/// logical points).
#[test]
fn the_editor_is_resizable_and_its_size_is_saved() -> Result<()> {
    let mut harness = Harness::load()?;
    let facts = harness.gui_facts()?;
    assert!(facts.can_resize && facts.both_axes, "{facts:?}");
    assert_eq!(facts.size, Some((960, 700)));
    let mut state = harness.state_json()?;
    assert_eq!(state["fields"]["editor-size"], "0");
    let packed = (1200u64 << 32) | 800;
    state["fields"]["editor-size"] = serde_json::Value::String(packed.to_string());
    let mut restored = Harness::load()?;
    restored.load_state_json(&state)?;
    assert_eq!(restored.state_field("editor-size")?, packed);
    Ok(())
}
