//! Prints the greedy-agreement figure BENCHMARKS.md reports: how many greedy notes of a
//! continuation of the Gymnopedie (64-note prompt, 64 notes) agree with f32 in q8 and q4.
//! Greedy decoding amplifies any flipped argmax, so this is a report, not a target.
//!
//! `cargo run --release -p continuo-engine --example greedy_agreement`

use std::path::Path;

use continuo_engine::quant::QFormat;
use continuo_engine::{
    continue_notes, midi, Config, GenerateOptions, Moonbeam, Precision, Sampling, Style,
};

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let cfg = Config::from_file(&root.join("assets/configs/continuo_base.json"))?;
    let model = Moonbeam::load(
        &cfg,
        &root.join("assets/continuo_base.safetensors"),
        Precision::F32,
    )?;
    let piece = midi::read_midi_file(&root.join("assets/examples/satie_gymnopedie_no1.mid"))?;
    let prompt = &piece[..64.min(piece.len())];
    let opts = GenerateOptions {
        allow_stacked: false,
        endless: false,
        max_notes: 64,
        max_duration_ticks: None,
        sampling: Sampling::Greedy,
    };
    let run = |m: &Moonbeam| -> anyhow::Result<Vec<_>> {
        Ok(continue_notes(m, &Style::base(), prompt, &opts, |_, _| {})?.rows)
    };
    let reference = run(&model)?;
    for format in [QFormat::Q8, QFormat::Q4] {
        let mut q = model.clone();
        q.quantize(format)?;
        let rows = run(&q)?;
        let same = reference
            .iter()
            .zip(&rows)
            .take_while(|(a, b)| a == b)
            .count();
        let equal = reference.iter().zip(&rows).filter(|(a, b)| a == b).count();
        println!(
            "{format}: the first {same} of {} greedy notes agree with f32; {equal} are equal at \
             their position",
            reference.len()
        );
    }
    Ok(())
}
