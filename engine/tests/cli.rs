//! The `continuo` command line, end to end, against the golden reference outputs.

mod common;

use common::golden;

use std::path::PathBuf;
use std::process::Command;

use candle_core::Device;
use serde_json::Value;

fn tmp(name: &str) -> PathBuf {
    common::tmp("cli", name)
}

fn continuo(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_continuo"))
        .args(args)
        .output()
        .expect("run continuo")
}

fn json(path: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn path(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn tokens_prints_the_golden_compounds() {
    let out = continuo(&["tokens", path(&golden("input.mid"))]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got, json(&golden("tokens.json"))["compounds"]);
}

#[test]
fn continue_greedy_reproduces_the_reference_json_and_midi() {
    for (lora, reference) in [(None, "greedy_base"), (Some("lora_adapter"), "greedy_lora")] {
        let (mid, js) = (
            tmp(&format!("{reference}.mid")),
            tmp(&format!("{reference}.json")),
        );
        let mut args = vec![
            "continue".to_string(),
            "--config".into(),
            path(&golden("tiny_config.json")).into(),
            "--weights".into(),
            path(&golden("tiny_model.safetensors")).into(),
            "--midi".into(),
            path(&golden("input.mid")).into(),
            "--notes".into(),
            "16".into(),
            "--greedy".into(),
            "--timing".into(),
            "reference".into(),
            "--out".into(),
            path(&mid).into(),
            "--json".into(),
            path(&js).into(),
        ];
        if let Some(l) = lora {
            args.extend(["--lora".into(), path(&golden(l)).into()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = continuo(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let want = json(&golden(&format!("{reference}.json")));
        let got = json(&js);
        for key in [
            "generated_only",
            "output_tokens_prompt_plus_generated_no_sos",
            "prompt_with_sos",
        ] {
            assert_eq!(got[key], want[key], "{reference}: {key}");
        }
        assert_eq!(
            std::fs::read(&mid).unwrap(),
            std::fs::read(golden(&format!("{reference}.mid"))).unwrap(),
            "{reference}.mid"
        );
    }
}

#[test]
fn forward_writes_the_reference_tensors() {
    let out_path = tmp("forward.safetensors");
    let out = continuo(&[
        "forward",
        "--config",
        path(&golden("tiny_config.json")),
        "--weights",
        path(&golden("tiny_model.safetensors")),
        "--midi",
        path(&golden("input.mid")),
        "--out",
        path(&out_path),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = candle_core::safetensors::load(&out_path, &Device::Cpu).unwrap();
    let want = candle_core::safetensors::load(golden("forward_outputs.safetensors"), &Device::Cpu)
        .unwrap();
    for (ours, theirs, tol) in [
        ("final_hidden", "base/final_hidden_normed", 1e-4f32),
        ("summary", "base/summary_projection", 1e-4),
        ("gru_logits", "base/gru_logits_teacher_forced", 5e-4),
        ("loss", "base/loss", 1e-4),
    ] {
        let (a, b) = (&got[ours], &want[theirs]);
        assert_eq!(a.dims(), b.dims(), "{ours}");
        let diff = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff <= tol, "{ours}: max |diff| {diff}");
    }
}

#[test]
fn sampling_is_seeded_and_valid() {
    let run = |seed: &str, name: &str| {
        let js = tmp(name);
        let out = continuo(&[
            "continue",
            "--config",
            path(&golden("tiny_config.json")),
            "--weights",
            path(&golden("tiny_model.safetensors")),
            "--midi",
            path(&golden("input.mid")),
            "--notes",
            "24",
            "--temperature",
            "1.0",
            "--top-p",
            "0.9",
            "--seed",
            seed,
            "--out",
            path(&tmp(&format!("{name}.mid"))),
            "--json",
            path(&js),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        json(&js)["generated_only"].clone()
    };
    let a = run("1", "a.json");
    assert_eq!(a, run("1", "b.json"), "same seed, same notes");
    assert_ne!(a, run("2", "c.json"), "another seed, other notes");
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let junk = tmp("junk.mid");
    std::fs::write(&junk, b"MThd\x00\x00\x00\x06\x00\x01\x00\x01").unwrap();
    let out = continuo(&["tokens", path(&junk)]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("error:") && !stderr.contains("panicked"),
        "{stderr}"
    );

    let out = continuo(&[
        "continue",
        "--config",
        path(&golden("tiny_config.json")),
        "--weights",
        path(&golden("input.mid")),
        "--midi",
        path(&golden("input.mid")),
        "--out",
        path(&tmp("x.mid")),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains("cannot load weights")
            && !stderr.contains("panicked"),
        "{stderr}"
    );
}

/// `continue`, `eval` and `demo` share their sampling flags and refuse the same bad values
/// before doing any work.
#[test]
fn every_sampling_command_refuses_bad_sampling_flags() {
    let out_dir = tmp("demo-refused");
    let (config, weights, data) = (
        golden("tiny_config.json"),
        golden("tiny_model.safetensors"),
        golden("input.mid"),
    );
    let cases: [(&[&str], &str); 3] = [
        (
            &["demo", "--out", path(&out_dir), "--temperature", "0"],
            "--temperature must be positive",
        ),
        (
            &["demo", "--out", path(&out_dir), "--top-p", "1.5"],
            "--top-p must be between 0 and 1",
        ),
        (
            &[
                "eval",
                "--config",
                path(&config),
                "--weights",
                path(&weights),
                "--data",
                path(&data),
                "--temperature=-1",
            ],
            "--temperature must be positive",
        ),
    ];
    for (args, message) in cases {
        let out = continuo(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(message) && !stderr.contains("panicked"),
            "{args:?}: {stderr}"
        );
    }
    assert!(!out_dir.exists(), "a refused demo wrote nothing");
}

#[test]
fn quantize_writes_a_model_that_continue_loads_and_the_golden_style_accepts() {
    let (config, weights) = (golden("tiny_config.json"), golden("tiny_model.safetensors"));
    let q4 = tmp("tiny_q4.safetensors");
    let out = continuo(&[
        "quantize",
        "--config",
        path(&config),
        "--weights",
        path(&weights),
        "--format",
        "q4",
        "--out",
        path(&q4),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("wrote") && stderr.contains("q4"),
        "{stderr}"
    );
    let mid = tmp("q4_continue.mid");
    let out = continuo(&[
        "continue",
        "--config",
        path(&config),
        "--weights",
        path(&q4),
        "--lora",
        path(&golden("lora_adapter")),
        "--midi",
        path(&golden("input.mid")),
        "--notes",
        "8",
        "--out",
        path(&mid),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(mid.exists());
    // Quantizing at load time works the same way.
    let out = continuo(&[
        "continue",
        "--config",
        path(&config),
        "--weights",
        path(&weights),
        "--quantize",
        "q8",
        "--midi",
        path(&golden("input.mid")),
        "--notes",
        "4",
        "--out",
        path(&tmp("q8_continue.mid")),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Bad requests are refused before any work, and the input is never overwritten.
    let before = std::fs::read(&weights).unwrap();
    for (args, needle) in [
        (
            vec!["--format", "q3", "--out", path(&tmp("x.safetensors"))],
            "q3",
        ),
        (
            vec!["--format", "q8", "--out", path(&weights)],
            "is the --weights input",
        ),
    ] {
        let mut all = vec![
            "quantize",
            "--config",
            path(&config),
            "--weights",
            path(&weights),
        ];
        all.extend(args);
        let out = continuo(&all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(needle), "{stderr}");
    }
    assert!(std::fs::read(&weights).unwrap() == before);
}

#[test]
fn no_command_overwrites_its_input_or_writes_two_results_to_one_file() {
    let (config, weights) = (golden("tiny_config.json"), golden("tiny_model.safetensors"));
    // Scratch copies, so that a failing check cannot damage the golden files.
    let midi = tmp("lost_work_prompt.mid");
    std::fs::copy(golden("input.mid"), &midi).unwrap();
    let base = tmp("lost_work_base.safetensors");
    std::fs::copy(&weights, &base).unwrap();
    let json_out = tmp("lost_work.json");
    let folk = common::folk_dir();
    let model = ["--config", path(&config), "--weights", path(&base)];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            [
                &["continue"][..],
                &model,
                &["--midi", path(&midi), "--notes", "4", "--out", path(&midi)],
            ]
            .concat(),
            "is the --midi input",
        ),
        (
            [
                &["continue"][..],
                &model,
                &[
                    "--midi",
                    path(&midi),
                    "--notes",
                    "4",
                    "--out",
                    path(&json_out),
                    "--json",
                    path(&json_out),
                ],
            ]
            .concat(),
            "are the same file",
        ),
        (
            [
                &["forward"][..],
                &model,
                &["--midi", path(&midi), "--out", path(&midi)],
            ]
            .concat(),
            "is the --midi input",
        ),
        (
            [
                &["train-style"][..],
                &model,
                &["--data", path(&folk), "--out", path(&base)],
            ]
            .concat(),
            "is the --weights input",
        ),
        (
            [
                &["continue"][..],
                &model,
                &["--midi", path(&midi), "--notes", "4", "--out", path(&folk)],
            ]
            .concat(),
            "is a folder",
        ),
    ];
    let midi_before = std::fs::read(&midi).unwrap();
    let base_before = std::fs::read(&base).unwrap();
    for (args, needle) in cases {
        let out = continuo(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(needle),
            "{args:?}: {stderr}"
        );
    }
    assert!(
        std::fs::read(&midi).unwrap() == midi_before,
        "the prompt was overwritten"
    );
    assert!(
        std::fs::read(&base).unwrap() == base_before,
        "the base was overwritten"
    );
    assert!(!json_out.exists());
}

#[test]
fn every_number_is_checked_before_any_work() {
    let config = golden("tiny_config.json");
    let weights = golden("tiny_model.safetensors");
    let folk = common::folk_dir();
    let out = tmp("numbers.safetensors");
    let model = ["--config", path(&config), "--weights", path(&weights)];
    let train = |extra: &[&'static str]| -> Vec<String> {
        [
            &["train-style"][..],
            &model,
            &["--data", path(&folk), "--out", path(&out)],
            extra,
        ]
        .concat()
        .into_iter()
        .map(String::from)
        .collect()
    };
    let midi = golden("input.mid");
    let cont = |extra: &[&'static str]| -> Vec<String> {
        let mid = tmp("numbers.mid");
        [
            &["continue"][..],
            &model,
            &["--midi", path(&midi), "--notes", "4", "--out", path(&mid)],
            extra,
        ]
        .concat()
        .into_iter()
        .map(String::from)
        .collect()
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (train(&["--epochs", "0"]), "--epochs"),
        (train(&["--lr", "NaN"]), "--lr"),
        (train(&["--lr", "-1"]), "--lr"),
        (train(&["--gamma", "nan"]), "--gamma"),
        (train(&["--batch-size", "0"]), "--batch-size"),
        (train(&["--context", "2"]), "--context"),
        (train(&["--context", "100000"]), "max_len"),
        (train(&["--val-fraction", "1"]), "--val-fraction"),
        (train(&["--rank", "0"]), "--rank"),
        (train(&["--alpha", "NaN"]), "--alpha"),
        (cont(&["--temperature", "-1"]), "--temperature"),
        (cont(&["--temperature", "inf"]), "--temperature"),
        (cont(&["--lora-strength", "NaN"]), "--lora-strength"),
        (cont(&["--max-seconds", "NaN"]), "--max-seconds"),
        (
            [
                &["eval"][..],
                &model,
                &["--data", path(&folk), "--context", "1"],
            ]
            .concat()
            .into_iter()
            .map(String::from)
            .collect(),
            "--context",
        ),
    ];
    for (args, needle) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = continuo(&args);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(
            run.status.code() == Some(1) && stderr.contains(needle) && !stderr.contains("panicked"),
            "{args:?}: {stderr}"
        );
    }
    assert!(!out.exists(), "a refused run wrote its output");
}

#[test]
fn pipes_devices_damaged_styles_and_missing_checkpoints_are_refused() {
    let config = golden("tiny_config.json");
    let weights = golden("tiny_model.safetensors");
    // A FIFO would block a reader forever; /dev/zero would never end.
    let fifo = tmp("prompt.fifo");
    let _ = std::fs::remove_file(&fifo);
    let made = Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .is_ok_and(|s| s.success());
    let mut cases: Vec<(Vec<String>, &str)> = vec![(
        vec!["tokens".into(), "/dev/zero".into()],
        "not a regular file",
    )];
    if made {
        cases.push((
            [
                "continue",
                "--config",
                path(&config),
                "--weights",
                path(&weights),
                "--midi",
                path(&fifo),
                "--out",
                path(&tmp("fifo.mid")),
            ]
            .map(String::from)
            .to_vec(),
            "not a regular file",
        ));
        cases.push((
            [
                "continue",
                "--config",
                path(&fifo),
                "--weights",
                path(&weights),
                "--midi",
                path(&golden("input.mid")),
                "--out",
                path(&tmp("fifo.mid")),
            ]
            .map(String::from)
            .to_vec(),
            "not a regular file",
        ));
    }
    // A style file cut in half: its header (and card) is intact, its weights are not.
    let style = tmp("whole_style.safetensors");
    let out = continuo(&[
        "style",
        "import",
        path(&golden("lora_adapter")),
        "--out",
        path(&style),
        "--config",
        path(&config),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&style).unwrap();
    let cut = tmp("cut_style.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2 + 4096.min(bytes.len() / 4)]).unwrap();
    cases.push((
        vec!["style".into(), "info".into(), path(&cut).into()],
        "damaged",
    ));
    // --resume with nothing to resume.
    cases.push((
        [
            "train-style",
            "--config",
            path(&config),
            "--weights",
            path(&weights),
            "--data",
            path(&common::folk_dir()),
            "--out",
            path(&tmp("never.safetensors")),
            "--resume",
        ]
        .map(String::from)
        .to_vec(),
        "no checkpoint",
    ));
    for (args, needle) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = Command::new(env!("CARGO_BIN_EXE_continuo"))
            .args(&args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(
            run.status.code() == Some(1) && stderr.contains(needle),
            "{args:?}: {stderr}"
        );
    }
    // The whole style still reads.
    let out = continuo(&["style", "info", path(&style)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_long_piece_can_be_continued_from_its_end() {
    let config = golden("tiny_config.json");
    let weights = golden("tiny_model.safetensors");
    let midi = golden("input.mid");
    let all: Vec<[i64; 6]> =
        serde_json::from_slice(&continuo(&["tokens", path(&midi)]).stdout).unwrap();
    let js = tmp("from_end.json");
    let out = continuo(&[
        "continue",
        "--config",
        path(&config),
        "--weights",
        path(&weights),
        "--midi",
        path(&midi),
        "--prompt-notes",
        "8",
        "--prompt-from",
        "end",
        "--notes",
        "4",
        "--greedy",
        "--out",
        path(&tmp("from_end.mid")),
        "--json",
        path(&js),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let prompt: Vec<[i64; 6]> =
        serde_json::from_value(json(&js)["prompt_with_sos"].clone()).unwrap();
    let tail = &all[all.len() - 8..];
    let expected: Vec<[i64; 6]> = tail
        .iter()
        .map(|r| {
            let mut r = *r;
            r[0] -= tail[0][0];
            r
        })
        .collect();
    assert_eq!(&prompt[1..], &expected[..]);
    // In the MIDI, the prompt is back at its place in the piece.
    let written: Vec<[i64; 6]> =
        serde_json::from_slice(&continuo(&["tokens", path(&tmp("from_end.mid"))]).stdout).unwrap();
    assert_eq!(&written[..8], tail);

    // A prompt over the context says which options help.
    let short = tmp("short_context.json");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&short, text.replace("\"max_len\": 1024", "\"max_len\": 16")).unwrap();
    let out = continuo(&[
        "continue",
        "--config",
        path(&short),
        "--weights",
        path(&weights),
        "--midi",
        path(&midi),
        "--out",
        path(&tmp("too_long.mid")),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains("--prompt-notes 14")
            && stderr.contains("--prompt-from end"),
        "{stderr}"
    );
}

#[test]
fn existing_models_and_adapter_folders_are_replaced_only_with_force() {
    let config = golden("tiny_config.json");
    let weights = golden("tiny_model.safetensors");
    let existing = tmp("existing_model.safetensors");
    std::fs::write(&existing, b"keep me").unwrap();
    let quantize = |force: bool| {
        let mut args = vec![
            "quantize",
            "--config",
            path(&config),
            "--weights",
            path(&weights),
            "--format",
            "q8",
            "--out",
            path(&existing),
        ];
        if force {
            args.push("--force");
        }
        continuo(&args)
    };
    let out = quantize(false);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&existing).unwrap(), b"keep me");
    assert!(quantize(true).status.success());

    // export-peft into a folder that already holds an adapter.
    let style = tmp("export_me.safetensors");
    let out = continuo(&[
        "style",
        "import",
        path(&golden("lora_adapter")),
        "--out",
        path(&style),
        "--config",
        path(&config),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let folder = tmp("peft_out");
    let export = |force: bool| {
        let mut args = vec![
            "style",
            "export-peft",
            path(&style),
            "-o",
            path(&folder),
            "--config",
            path(&config),
        ];
        if force {
            args.push("--force");
        }
        continuo(&args)
    };
    assert!(export(false).status.success());
    let out = export(false);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("already holds an adapter"),
        "{stderr}"
    );
    assert!(export(true).status.success());
}

#[cfg(unix)]
#[test]
fn ctrl_c_during_training_saves_a_checkpoint_that_resume_finishes() {
    use std::io::{BufRead, BufReader};
    let out = tmp("interrupted.safetensors");
    let checkpoint = tmp("interrupted.safetensors.resume");
    let config = golden("tiny_config.json");
    let weights = golden("tiny_model.safetensors");
    let folk = common::folk_dir();
    let args = |epochs: &'static str, resume: bool| {
        let mut a = vec![
            "train-style",
            "--config",
            path(&config),
            "--weights",
            path(&weights),
            "--data",
            path(&folk),
            "--out",
            path(&out),
            "--context",
            "96",
            "--batch-size",
            "1",
            "--epochs",
            epochs,
        ];
        if resume {
            a.push("--resume");
        }
        a
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_continuo"))
        .args(args("500", false))
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    // Training has started once the first validation is reported.
    while !log.contains("validation loss before training") {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 {
            panic!("training ended before it started: {log}");
        }
        log += &line;
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    log += &rest;
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{log}");
    assert!(log.contains("run the same command with --resume"), "{log}");
    assert!(checkpoint.is_file(), "{log}");
    #[cfg(unix)]
    {
        // The checkpoint gets the same permissions as any file the user writes.
        use std::os::unix::fs::PermissionsExt;
        let plain = tmp("plain_file");
        std::fs::write(&plain, b"").unwrap();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode();
        assert_eq!(mode(&checkpoint), mode(&plain));
    }

    // Resuming (here for a run cut short to one epoch) finishes and writes the style.
    let run = continuo(&args("1", true));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(stderr.contains("resuming"), "{stderr}");
    assert!(out.is_file() && !checkpoint.exists(), "{stderr}");
}

#[test]
fn a_continuation_is_written_on_the_prompt_files_grid_tempo_and_metre() {
    let input = golden("input.mid");
    let out_path = tmp("on_grid.mid");
    let out = continuo(&[
        "continue",
        "--config",
        path(&golden("tiny_config.json")),
        "--weights",
        path(&golden("tiny_model.safetensors")),
        "--midi",
        path(&input),
        "--notes",
        "8",
        "--seed",
        "1",
        "--out",
        path(&out_path),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (input_bytes, out_bytes) = (
        std::fs::read(&input).unwrap(),
        std::fs::read(&out_path).unwrap(),
    );
    let (want, got) = (
        continuo_engine::midi::midi_timing(&input_bytes).unwrap(),
        continuo_engine::midi::midi_timing(&out_bytes).unwrap(),
    );
    assert_eq!(got.division, want.division);
    assert_eq!(got.time_signatures, want.time_signatures);
    assert_eq!(got.tempos.first(), want.tempos.first());
    // Every note of the prompt is on its own tick, and something was added after it.
    let (division, prompt_ticks) = common::note_on_ticks(&input_bytes);
    let (out_division, out_ticks) = common::note_on_ticks(&out_bytes);
    assert_eq!(out_division, division);
    for tick in &prompt_ticks {
        assert!(out_ticks.contains(tick), "prompt note {tick:?} moved");
    }
    assert!(out_ticks.len() > prompt_ticks.len());
}

/// `forward` with `extra` model flags: every tensor it writes.
fn forward_tensors(
    name: &str,
    extra: &[&str],
) -> std::collections::HashMap<String, candle_core::Tensor> {
    let out_path = tmp(&format!("blend_{name}.safetensors"));
    let (config, weights, midi) = (
        golden("tiny_config.json"),
        golden("tiny_model.safetensors"),
        golden("input.mid"),
    );
    let mut args = vec![
        "forward",
        "--config",
        path(&config),
        "--weights",
        path(&weights),
        "--midi",
        path(&midi),
        "--out",
        path(&out_path),
    ];
    args.extend_from_slice(extra);
    let out = continuo(&args);
    assert!(
        out.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    candle_core::safetensors::load(&out_path, &Device::Cpu).unwrap()
}

/// The largest absolute difference between two sets of tensors with the same names.
fn max_difference(
    a: &std::collections::HashMap<String, candle_core::Tensor>,
    b: &std::collections::HashMap<String, candle_core::Tensor>,
) -> f32 {
    let mut worst = 0.0_f32;
    for (name, x) in a {
        let d = (x - &b[name])
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        worst = worst.max(d);
    }
    worst
}

#[test]
fn two_styles_blend_linearly_and_bad_blends_are_refused() {
    // Style B is the golden adapter at twice its alpha, so a blend has a closed form:
    // (1 - b) A + b (2 A) = (1 + b) A.
    let cfg = common::tiny_config();
    let peft = golden("lora_adapter");
    let mut doubled = continuo_engine::lora::Adapter::from_peft_dir(&peft, &cfg).unwrap();
    doubled.alpha *= 2.0;
    let b_path = tmp("doubled_style.safetensors");
    continuo_engine::style::save_style(
        &b_path,
        &doubled,
        &continuo_engine::style::StyleCard::new("Doubled", "the golden adapter at 2x alpha"),
    )
    .unwrap();
    let (a, b) = (path(&peft), path(&b_path));
    let (config, weights, midi, bad_out) = (
        golden("tiny_config.json"),
        golden("tiny_model.safetensors"),
        golden("input.mid"),
        tmp("bad_blend.mid"),
    );
    let base = forward_tensors("base", &[]);
    let only_a = forward_tensors("a", &["--lora", a]);
    let a_15 = forward_tensors("a15", &["--lora", a, "--lora-strength", "1.5"]);
    let only_b = forward_tensors("b", &["--lora", b]);
    let blend = |x: &str| {
        forward_tensors(
            &format!("blend{x}"),
            &["--lora", a, "--lora", b, "--blend", x],
        )
    };
    assert!(
        max_difference(&base, &only_a) > 1e-3,
        "the style changes the output"
    );
    assert!(max_difference(&blend("0"), &only_a) < 1e-5);
    assert!(max_difference(&blend("1"), &only_b) < 1e-5);
    let half = blend("0.5");
    assert!(max_difference(&half, &a_15) < 1e-4);
    assert!(max_difference(&half, &only_a) > 1e-4 && max_difference(&half, &only_b) > 1e-4);

    for (bad, says) in [
        (vec!["--lora", a, "--lora", b], "need --blend"),
        (vec!["--lora", a, "--blend", "0.5"], "give --lora twice"),
        (
            vec!["--lora", a, "--lora", b, "--blend", "1.5"],
            "between 0 and 1",
        ),
        (
            vec!["--lora", a, "--lora", b, "--lora", a, "--blend", "0.5"],
            "at most two",
        ),
    ] {
        let mut args = vec![
            "continue",
            "--config",
            path(&config),
            "--weights",
            path(&weights),
            "--midi",
            path(&midi),
            "--out",
            path(&bad_out),
        ];
        args.extend(bad.iter().copied());
        let out = continuo(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(says),
            "{bad:?}: {stderr}"
        );
    }
}

#[test]
fn continue_draws_a_piano_roll_on_request() {
    let png = tmp("continue.png");
    let out = continuo(&[
        "continue",
        "--config",
        path(&golden("tiny_config.json")),
        "--weights",
        path(&golden("tiny_model.safetensors")),
        "--midi",
        path(&golden("input.mid")),
        "--notes",
        "8",
        "--out",
        path(&tmp("with_png.mid")),
        "--png",
        path(&png),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[1..4], b"PNG");
}
