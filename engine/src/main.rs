//! `continuo`: the engine's command-line tool. See `continuo --help` and the README.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

mod cli;

/// Training and prefill allocate and free many large tensors; glibc's allocator returns
/// each to the kernel and faults it back in (70 % system time in `train-base`). mimalloc,
/// told never to purge freed pages (`keep_freed_pages`), keeps them: 2.8x the training
/// throughput on the 2-core VM for 13 % more peak memory (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns off mimalloc's purging of freed memory (by default it returns freed pages to the
/// kernel after a short delay, which a training step outlives, so every step faulted its
/// tensors back in).
/// A `MIMALLOC_PURGE_DELAY` set by the user wins.
fn keep_freed_pages() {
    /// `mi_option_purge_delay` in mimalloc v3's `mimalloc.h` (the version the `mimalloc`
    /// crate builds by default).
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: setting an option is a plain store in mimalloc's option table; it is
        // documented as callable at any time.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{Device, Tensor};
use clap::{Args, Parser, Subcommand};
use cli::outputs::Plan;
use continuo_engine::generate::{continue_notes, GenerateOptions, Sampling};
use continuo_engine::lora::{Adapter, Style};
use continuo_engine::model::forward::Mask;
use continuo_engine::quant::QFormat;
use continuo_engine::style::{self, StyleCard};
use continuo_engine::{bench, midi, train, vocab, Config, Moonbeam, Note, Precision};

#[derive(Parser)]
#[command(
    name = "continuo",
    version,
    about = "Moonbeam MIDI continuation on the CPU"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a MIDI file's compound notes as JSON rows
    /// `[onset, duration, octave, pitch_class, instrument, velocity]` (10 ms ticks).
    Tokens {
        /// The MIDI file.
        midi: PathBuf,
    },
    /// Continue a MIDI prompt and write the result (prompt + continuation) as MIDI.
    Continue(ContinueArgs),
    /// Teacher-forced pass over `[SOS] + notes + [EOS]`; writes f32 tensors
    /// `final_hidden`, `summary`, `gru_logits` and `loss` to a safetensors file.
    Forward(ForwardArgs),
    /// Measure load, prefill and per-note decode time, peak memory and the bandwidth bound.
    Bench(BenchArgs),
    /// Write a model with 8- or 4-bit weights (one safetensors file; see the README's layout).
    Quantize(QuantizeArgs),
    /// Train a LoRA style on a folder of MIDI files, on top of a frozen base.
    TrainStyle(TrainStyleArgs),
    /// Train every parameter of a (small) base model on a folder of MIDI files.
    TrainBase(TrainBaseArgs),
    /// Continue the bundled example prompt with the bundled model in every shipped style;
    /// writes MIDI files and piano-roll pictures.
    Demo(DemoArgs),
    /// Held-out loss per note and per attribute, and statistics of generated continuations,
    /// against unigram and Markov baselines.
    Eval(EvalArgs),
    /// Style files: import from peft, inspect, export to peft.
    #[command(subcommand)]
    Style(StyleCommand),
}

#[derive(Args)]
struct TrainCommon {
    /// Folder of MIDI files (searched recursively).
    #[arg(long)]
    data: PathBuf,
    /// Passes over the training data (at least 1).
    #[arg(long, default_value_t = 20)]
    epochs: usize,
    /// AdamW learning rate (positive).
    #[arg(long, default_value_t = 3e-4, allow_negative_numbers = true)]
    lr: f64,
    /// Learning-rate factor per epoch (positive; 1 keeps the rate).
    #[arg(long, default_value_t = 0.99, allow_negative_numbers = true)]
    gamma: f64,
    /// Rows per packed training sequence (SOS and EOS included).
    #[arg(long, default_value_t = 1024)]
    context: usize,
    /// Packed sequences per optimizer step.
    #[arg(long, default_value_t = 2)]
    batch_size: usize,
    /// Share of files held out for validation.
    #[arg(long, default_value_t = 0.1)]
    val_fraction: f64,
    /// Augmented copies of each training piece per epoch (transposition, tempo, velocity).
    #[arg(long, default_value_t = 4)]
    augment_copies: usize,
    /// Train on the original pieces only (no transposition, tempo or velocity copies).
    #[arg(long)]
    no_augment: bool,
    /// Largest transposition of an augmented copy, in semitones either way (kept on the
    /// 88 keys). Default: 87 (anywhere on the keyboard) for train-base, 5 for train-style.
    #[arg(long)]
    transpose: Option<i8>,
    /// Tempo stretch of an augmented copy, `LO:HI`, drawn log-uniformly (> 1 is slower).
    /// Default: 0.5:2 for train-base, 0.9:1.1 for train-style.
    #[arg(long, value_parser = parse_range)]
    tempo_range: Option<(f64, f64)>,
    /// Velocity scale of an augmented copy, `LO:HI`, drawn log-uniformly.
    /// Default: 1:1 (as played) for train-base, 0.85:1.15 for train-style; base v3 used 0.6:1.5.
    #[arg(long, value_parser = parse_range)]
    velocity_range: Option<(f64, f64)>,
    /// Largest velocity offset of an augmented copy, either way, added after scaling.
    /// Default: 0 for both; base v3 used 20.
    #[arg(long)]
    velocity_shift: Option<i64>,
    /// Play every pitched note with this General MIDI program (0 = piano), whatever the
    /// files say; drums are untouched.
    #[arg(long)]
    instrument: Option<i64>,
    /// Seeds the validation split, the augmentation, the packing order and the new LoRA weights.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Continue an interrupted run from its checkpoint (`<out>.resume`).
    #[arg(long)]
    resume: bool,
    /// Print the data report as JSON and stop.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Args)]
struct TrainStyleArgs {
    /// Base model config: `small`, `medium` or a file.
    #[arg(long)]
    config: String,
    /// Base weights (frozen).
    #[arg(long)]
    weights: PathBuf,
    #[command(flatten)]
    common: TrainCommon,
    /// Output style file (`.safetensors`).
    #[arg(short, long)]
    out: PathBuf,
    /// LoRA rank (at least 1).
    #[arg(long, default_value_t = 8)]
    rank: usize,
    /// LoRA alpha (positive): the side path is scaled by alpha / rank.
    #[arg(long, default_value_t = 32.0, allow_negative_numbers = true)]
    alpha: f64,
    #[command(flatten)]
    card: CardArgs,
}

/// The human-written part of a style's card.
#[derive(Args)]
struct CardArgs {
    /// Style name shown in menus (default: the output or folder name).
    #[arg(long)]
    name: Option<String>,
    /// One line on what the style plays, shown with its name.
    #[arg(long, default_value = "")]
    description: String,
    /// Who made the style (and from what).
    #[arg(long, default_value = "")]
    author: String,
    /// A readable id of the base, e.g. `continuo-base-v1` or `moonbeam-839M`.
    #[arg(long, default_value = "")]
    base_model: String,
}

impl CardArgs {
    /// A card for an adapter of `rank` and `alpha`; the name defaults to `default_name`.
    fn card(
        &self,
        default_name: Option<&std::ffi::OsStr>,
        base_fingerprint: String,
        rank: usize,
        alpha: f64,
        data: serde_json::Value,
    ) -> StyleCard {
        let name = self.name.clone().unwrap_or_else(|| {
            default_name
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        StyleCard {
            author: self.author.clone(),
            base_model: self.base_model.clone(),
            base_fingerprint,
            rank,
            alpha,
            data,
            ..StyleCard::new(name, self.description.clone())
        }
    }
}

#[derive(Args)]
struct TrainBaseArgs {
    /// Model config to train (an official-schema JSON file, or `small`/`medium`).
    #[arg(long)]
    config: String,
    #[command(flatten)]
    common: TrainCommon,
    /// Output weights (`.safetensors`, official parameter names).
    #[arg(short, long)]
    out: PathBuf,
    /// Start from these weights instead of a random initialisation.
    #[arg(long)]
    init: Option<PathBuf>,
    /// Replace an existing model at --out (a resumed run may always write it).
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct DemoArgs {
    /// Where the MIDI files and pictures go.
    #[arg(short, long, default_value = "demo-output")]
    out: PathBuf,
    /// The project folder holding `assets/` and `lora-weights/` (default: this source tree).
    #[arg(long)]
    root: Option<PathBuf>,
    /// Notes of the example prompt used.
    #[arg(long, default_value_t = 48)]
    prompt_notes: usize,
    /// Notes generated per style.
    #[arg(long, default_value_t = 32)]
    notes: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
}

#[derive(Args)]
struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Held-out data: a folder of MIDI files, or `manifest.json:SPLIT` (e.g. `data/manifest.json:test`).
    #[arg(long)]
    data: String,
    /// Data the baselines are fitted on (a folder or `manifest.json:train`); without it they
    /// are fitted on the held-out data itself, which flatters them.
    #[arg(long)]
    train_data: Option<String>,
    /// Rows per window for the loss.
    #[arg(long, default_value_t = 512)]
    context: usize,
    /// Notes of each held-out prompt.
    #[arg(long, default_value_t = 64)]
    prompt_notes: usize,
    /// Notes generated (and compared) after each prompt.
    #[arg(long, default_value_t = 64)]
    notes: usize,
    /// The most held-out prompts continued (one per piece first, then later windows).
    #[arg(long, default_value_t = 16)]
    max_prompts: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Also write the report as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Subcommand)]
enum StyleCommand {
    /// Convert a peft adapter folder (the official recipe's output) into a native style file.
    Import {
        /// The peft folder (`adapter_config.json` + `adapter_model.safetensors`).
        peft_dir: PathBuf,
        /// Output style file (`.safetensors`).
        #[arg(short, long)]
        out: PathBuf,
        /// The base model's config (`small`, `medium` or a file), to validate the shapes.
        #[arg(long)]
        config: String,
        /// The base weights, to record their fingerprint (recommended).
        #[arg(long)]
        weights: Option<PathBuf>,
        #[command(flatten)]
        card: CardArgs,
    },
    /// Print a style file's card (after checking every tensor of the file).
    Info {
        /// The style file (`.safetensors`).
        file: PathBuf,
    },
    /// Write a style file as a peft adapter folder.
    ExportPeft {
        /// The native style file.
        file: PathBuf,
        /// The peft folder to write (`adapter_config.json` + `adapter_model.safetensors`).
        #[arg(short, long)]
        out: PathBuf,
        /// The base model's config, to validate the shapes.
        #[arg(long)]
        config: String,
        /// Replace an adapter the folder already holds.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Args)]
struct ModelArgs {
    /// Model config: `small`, `medium`, or an official-schema JSON file.
    #[arg(long)]
    config: String,
    /// Weights: `.safetensors` with the official names, or the official `.pt` release checkpoint.
    #[arg(long)]
    weights: PathBuf,
    /// A style: a native style file (`.safetensors`) or a peft adapter folder. Give it twice,
    /// with `--blend`, to mix two styles.
    #[arg(long)]
    lora: Vec<PathBuf>,
    /// Style strength (scales the adapter's alpha/r; with two styles, both).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    lora_strength: f32,
    /// With two `--lora`: the share of the second, 0 to 1. The first plays at (1 - blend) of
    /// the strength and the second at blend, as the plugin's Blend control does.
    #[arg(long, allow_negative_numbers = true)]
    blend: Option<f32>,
    /// Emulate the reference's bf16 element-wise rounding (spec §9); use with the released bf16 checkpoints.
    #[arg(long)]
    bf16_faithful: bool,
    /// Quantize the weights when loading them: `q8` or `q4` (see `continuo quantize`).
    #[arg(long, value_parser = parse_qformat)]
    quantize: Option<QFormat>,
}

#[derive(Args)]
struct QuantizeArgs {
    /// Model config: `small`, `medium`, or an official-schema JSON file.
    #[arg(long)]
    config: String,
    /// The f32 weights: `.safetensors` or the official `.pt` release checkpoint.
    #[arg(long)]
    weights: PathBuf,
    /// `q8` (1.0625 bytes per weight) or `q4` (0.5625).
    #[arg(long, value_parser = parse_qformat)]
    format: QFormat,
    /// The quantized model (`.safetensors`).
    #[arg(short, long)]
    out: PathBuf,
    /// Replace an existing file at --out.
    #[arg(long)]
    force: bool,
}

/// `LO:HI`, two numbers.
fn parse_range(s: &str) -> std::result::Result<(f64, f64), String> {
    let bad = || format!("`{s}` is not a range: write LO:HI, e.g. 0.5:2");
    let (lo, hi) = s.split_once(':').ok_or_else(bad)?;
    Ok((
        lo.trim().parse().map_err(|_| bad())?,
        hi.trim().parse().map_err(|_| bad())?,
    ))
}

/// A number from 0 to 1.
fn parse_unit(s: &str) -> std::result::Result<f32, String> {
    match s.trim().parse::<f32>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("`{s}` is not a number from 0 to 1")),
    }
}

fn parse_qformat(s: &str) -> std::result::Result<QFormat, String> {
    QFormat::parse(s).ok_or_else(|| format!("`{s}` is not a format: use q8 or q4"))
}

/// How tokens are chosen: the same flags for `continue`, `eval` and `demo`.
#[derive(Args)]
struct SamplingArgs {
    /// Greedy decoding (argmax per attribute).
    #[arg(long, conflicts_with_all = ["temperature", "top_p"])]
    greedy: bool,
    /// Sampling temperature (positive) [default: 0.9, the official README's; `demo`: 1.0, chosen
    /// on the bundled model's validation split].
    #[arg(long, allow_negative_numbers = true)]
    temperature: Option<f32>,
    /// Nucleus (top-p) threshold over the full flat vocabulary, 0 to 1 [default: 0.95, the
    /// official README's and, with temperature 1.0, `demo`'s].
    #[arg(long, allow_negative_numbers = true)]
    top_p: Option<f32>,
    /// Random seed for sampling.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Let a note strike a key that is already struck at its onset, as the reference's decoding
    /// does. By default that choice is masked (a key cannot sound twice at one instant), which
    /// stops greedy decoding from repeating one note at one onset.
    #[arg(long)]
    allow_stacked: bool,
    /// Never end early: the end-of-piece (EOS) and start (SOS) codes are taken out of every
    /// choice, so exactly `--notes` notes come unless a time or context limit ends them first.
    /// `demo` always does this, and so does the plugin: an answer's length is the player's
    /// choice, not the model's.
    #[arg(long)]
    no_end: bool,
}

/// The official README's sampling defaults (`continue`, `eval`).
const OFFICIAL_SAMPLING: (f32, f32) = (0.9, 0.95);
/// The defaults chosen by the coherence figures on the bundled model's validation split
/// (`scripts/sweep_sampling.py`; `demo` and the plugin).
const CHOSEN_SAMPLING: (f32, f32) = (1.0, 0.95);

impl SamplingArgs {
    /// The temperature and top-p asked for, or `defaults`.
    fn values(&self, defaults: (f32, f32)) -> (f32, f32) {
        (
            self.temperature.unwrap_or(defaults.0),
            self.top_p.unwrap_or(defaults.1),
        )
    }

    fn sampling(&self) -> Result<Sampling> {
        self.sampling_with(OFFICIAL_SAMPLING)
    }

    fn sampling_with(&self, defaults: (f32, f32)) -> Result<Sampling> {
        if self.greedy {
            return Ok(Sampling::Greedy);
        }
        let (temperature, top_p) = self.values(defaults);
        // A NaN temperature is refused too.
        if !(temperature.is_finite() && temperature > 0.0) {
            bail!(
                "--temperature must be positive and finite, not {temperature} (use --greedy for \
                 argmax decoding)"
            );
        }
        if !(0.0..=1.0).contains(&top_p) {
            bail!("--top-p must be between 0 and 1");
        }
        Ok(Sampling::TopP {
            temperature,
            top_p,
            seed: self.seed,
        })
    }
}

#[derive(Args)]
struct ContinueArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt MIDI file.
    #[arg(long)]
    midi: PathBuf,
    #[command(flatten)]
    prompt: PromptArgs,
    /// Number of notes to generate.
    #[arg(long, default_value_t = 32)]
    notes: usize,
    /// Stop before a note that starts more than this many seconds after the prompt's last onset.
    #[arg(long, allow_negative_numbers = true)]
    max_seconds: Option<f64>,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Output MIDI: the prompt followed by the playable generated notes.
    #[arg(short, long)]
    out: PathBuf,
    /// Also write the prompt and generated rows (absolute onsets) as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The grid of the output MIDI. `input`: the prompt file's ticks per beat, tempo map and
    /// time and key signatures, with the prompt at its place in the piece, so the result lines
    /// up with the original in a DAW. `reference`: the official code's file, byte for byte
    /// (50 ticks per beat, no tempo event: 10 ms per tick, the prompt moved to start at 0).
    #[arg(long, value_enum, default_value_t = OutputTiming::Input)]
    timing: OutputTiming,
    /// The same as `--timing reference`.
    #[arg(long, conflicts_with = "timing")]
    reference_writer: bool,
    /// Also draw the prompt's end and the answer as a piano-roll picture (PNG), as `demo` does.
    #[arg(long)]
    png: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OutputTiming {
    Input,
    Reference,
}

#[derive(Args)]
struct ForwardArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The MIDI file.
    #[arg(long)]
    midi: PathBuf,
    #[command(flatten)]
    prompt: PromptArgs,
    /// Output safetensors file.
    #[arg(short, long)]
    out: PathBuf,
}

/// Which notes of a MIDI file make the prompt.
#[derive(Args)]
struct PromptArgs {
    /// Use only N notes of the file (see --prompt-from).
    #[arg(long)]
    prompt_notes: Option<usize>,
    /// Take the --prompt-notes from the `start` of the file or from its `end` (to continue a
    /// long piece from where it stops; the kept notes are moved to start at 0).
    #[arg(long, value_enum, default_value_t = PromptFrom::Start)]
    prompt_from: PromptFrom,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum PromptFrom {
    Start,
    End,
}

#[derive(Args)]
struct BenchArgs {
    /// `small`, `medium`, or a config file.
    #[arg(long)]
    config: String,
    /// Weights to load; without them (or with --random-weights) random weights at the config's shapes are used.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Benchmark random weights at the config's shapes even when --weights is given.
    #[arg(long)]
    random_weights: bool,
    /// Notes of the synthetic prompt prefilled before decoding.
    #[arg(long, default_value_t = 128)]
    prompt_notes: usize,
    /// Notes decoded (greedy) and timed.
    #[arg(long, default_value_t = 32)]
    notes: usize,
    /// Also write the report (and the style report, with `--style-rank`) as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also measure styles: write a random LoRA style of this rank, then time its load and
    /// validation, the swap between two styles, and decoding with it active.
    #[arg(long)]
    style_rank: Option<usize>,
    /// Only measure LoRA training (rank 8): three steps on one packed sequence of this many rows.
    #[arg(long)]
    train_context: Option<usize>,
    /// Quantize the weights while loading them: `q8` or `q4`.
    #[arg(long, value_parser = parse_qformat)]
    quantize: Option<QFormat>,
    /// Decode with top-p sampling (temperature 1, this nucleus over the full vocabulary, as
    /// the reference and the plugin) instead of greedily; the GRU head then needs every
    /// `lm_head` row for each attribute, not only the attribute's own.
    #[arg(long, value_parser = parse_unit)]
    top_p: Option<f32>,
    /// Write the benchmarked model (e.g. random weights at the Medium shapes, quantized or
    /// not) to this `.safetensors` file, for the plugin's benches.
    #[arg(long)]
    save: Option<PathBuf>,
}

fn main() {
    keep_freed_pages();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Tokens { midi } => tokens(&midi),
        Command::Continue(args) => run_continue(args),
        Command::Forward(args) => forward(args),
        Command::Bench(args) => run_bench(args),
        Command::Quantize(args) => run_quantize(args),
        Command::Style(cmd) => run_style(cmd),
        Command::TrainStyle(args) => train_style(args),
        Command::TrainBase(args) => train_base(args),
        Command::Eval(args) => run_eval(args),
        Command::Demo(args) => run_demo(args),
    };
    if let Err(e) = result {
        if let Some(stop) = e.downcast_ref::<train::run::Interrupted>() {
            eprintln!("{stop}: run the same command with --resume to continue from there");
            std::process::exit(130);
        }
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Ctrl-C during training: the first stops after the current step with a checkpoint, a
/// second quits at once (losing only what the checkpoint does not hold).
fn stop_on_ctrl_c() -> Option<Arc<std::sync::atomic::AtomicBool>> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let installed = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::Relaxed) {
            eprintln!("\ninterrupted again: quitting without saving this step");
            std::process::exit(130);
        }
        eprintln!(
            "\ninterrupted: saving a checkpoint after this step (Ctrl-C again to quit at once)"
        );
    });
    match installed {
        Ok(()) => Some(stop),
        Err(e) => {
            eprintln!("warning: Ctrl-C will not save a checkpoint: {e}");
            None
        }
    }
}

fn load_config(spec: &str) -> Result<Config> {
    match spec {
        "small" => Ok(Config::small()),
        "medium" => Ok(Config::medium()),
        path => {
            Config::from_file(Path::new(path)).with_context(|| format!("cannot use config {path}"))
        }
    }
}

fn precision(args: &ModelArgs) -> Precision {
    if args.bf16_faithful {
        Precision::Bf16Faithful
    } else {
        Precision::F32
    }
}

/// Each style's share of the strength: one style at 1, two at `1 - blend` and `blend`.
fn style_shares(args: &ModelArgs) -> Result<Vec<f32>> {
    if !args.lora_strength.is_finite() {
        bail!(
            "--lora-strength {} must be a finite number",
            args.lora_strength
        );
    }
    match (args.lora.len(), args.blend) {
        (0, None) => Ok(vec![]),
        (1, None) => Ok(vec![1.0]),
        (2, Some(b)) if (0.0..=1.0).contains(&b) => Ok(vec![1.0 - b, b]),
        (2, Some(b)) => bail!("--blend {b} must be between 0 and 1"),
        (2, None) => bail!("two --lora styles need --blend: the share of the second, 0 to 1"),
        (n, Some(_)) if n < 2 => bail!("--blend mixes two styles: give --lora twice"),
        (n, _) => bail!("{n} --lora styles: at most two can be blended"),
    }
}

fn load_model(args: &ModelArgs) -> Result<(Moonbeam, Style)> {
    let shares = style_shares(args)?;
    let cfg = load_config(&args.config)?;
    let model = match args.quantize {
        Some(format) => Moonbeam::load_quantized(&cfg, &args.weights, precision(args), format),
        None => Moonbeam::load(&cfg, &args.weights, precision(args)),
    }
    .with_context(|| format!("cannot load weights {}", args.weights.display()))?;
    let mut style = Style::base();
    if !args.lora.is_empty() {
        let fingerprint = model.fingerprint();
        for (path, share) in args.lora.iter().zip(shares) {
            let (adapter, _card) = style::load_any(path, &cfg, Some(&fingerprint))
                .with_context(|| format!("cannot load style {}", path.display()))?;
            style
                .parts
                .push((Arc::new(adapter), share * args.lora_strength));
        }
    }
    Ok((model, style))
}

fn read_prompt(path: &Path, limit: Option<usize>) -> Result<Vec<Note>> {
    Ok(read_prompt_from(path, limit, PromptFrom::Start)?.0)
}

/// The prompt's notes: all of them, or `limit` from the start or the end of the file (those
/// moved to start at onset 0); and where in the file they were taken from (the onset
/// subtracted, 0 unless taken from the end).
fn read_prompt_from(
    path: &Path,
    limit: Option<usize>,
    from: PromptFrom,
) -> Result<(Vec<Note>, i64)> {
    let mut notes = midi::read_midi_file(path)
        .with_context(|| format!("cannot read MIDI {}", path.display()))?;
    let mut origin = 0;
    match (limit, from) {
        (Some(n), PromptFrom::Start) => notes.truncate(n),
        (Some(n), PromptFrom::End) if n < notes.len() => {
            notes.drain(..notes.len() - n);
            origin = notes.first().map_or(0, |n| n.onset);
            for note in &mut notes {
                note.onset -= origin;
            }
        }
        _ => {}
    }
    Ok((notes, origin))
}

/// The error for a prompt longer than the model's context, saying which options help.
fn prompt_too_long(notes: usize, rows_needed: usize, cfg: &Config) -> anyhow::Error {
    let fit = cfg
        .max_len
        .saturating_sub(rows_needed.saturating_sub(notes));
    anyhow::anyhow!(
        "the prompt has {notes} notes but the model's context holds {} rows: use --prompt-notes \
         {fit} or fewer (with --prompt-from end to continue from the end of the piece)",
        cfg.max_len
    )
}

/// Writes `value` as pretty JSON to `path` (atomically), for every `--json <file>`.
fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    continuo_engine::files::write_atomic(path, serde_json::to_string_pretty(value)?.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

fn rows_json(rows: impl IntoIterator<Item = [i64; 6]>) -> String {
    let rows: Vec<String> = rows
        .into_iter()
        .map(|r| format!("  {}", serde_json::to_string(&r).unwrap_or_default()))
        .collect();
    format!("[\n{}\n]", rows.join(",\n"))
}

fn tokens(path: &Path) -> Result<()> {
    let notes = read_prompt(path, None)?;
    print_out(&rows_json(notes.iter().map(|n| n.to_row())))
}

/// Prints a command's result to stdout; a closed pipe (`continuo tokens x.mid | head`) is not an error.
fn print_out(text: &str) -> Result<()> {
    use std::io::Write;
    match writeln!(std::io::stdout().lock(), "{text}") {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

fn run_continue(args: ContinueArgs) -> Result<()> {
    if let Some(s) = args.max_seconds {
        if !(s.is_finite() && s > 0.0) {
            bail!("--max-seconds {s} must be a positive number of seconds");
        }
    }
    model_plan(&args.model)
        .input("--midi", &args.midi)
        .output("--out", &args.out)
        .output_opt("--json", args.json.as_deref())
        .output_opt("--png", args.png.as_deref())
        .check()?;
    let sampling = args.sampling.sampling()?;
    let output_timing = if args.reference_writer {
        OutputTiming::Reference
    } else {
        args.timing
    };
    // The output's grid, read before the work like every input.
    let timing = match output_timing {
        OutputTiming::Input => midi::read_midi_timing(&args.midi)
            .with_context(|| format!("cannot read MIDI {}", args.midi.display()))?,
        OutputTiming::Reference => midi::Timing::reference(),
    };
    let t = Instant::now();
    let (model, style) = load_model(&args.model)?;
    let load = t.elapsed();
    let (prompt, origin) = read_prompt_from(
        &args.midi,
        args.prompt.prompt_notes,
        args.prompt.prompt_from,
    )?;
    // [SOS] + the prompt + at least one generated note.
    if prompt.len() + 2 > model.cfg.max_len {
        return Err(prompt_too_long(prompt.len(), prompt.len() + 2, &model.cfg));
    }
    let opts = GenerateOptions {
        max_notes: args.notes,
        max_duration_ticks: args.max_seconds.map(|s| (s * 100.0).round() as i64),
        sampling,
        allow_stacked: args.sampling.allow_stacked,
        endless: args.sampling.no_end,
    };
    let gen = continue_notes(&model, &style, &prompt, &opts, |_, _| {})?;
    let answer = gen.valid_notes();
    let mut all = prompt.clone();
    all.extend(answer.iter().copied());
    if let Some(png) = &args.png {
        let title = format!(
            "{} notes answering {} of {}",
            answer.len(),
            prompt.len(),
            args.midi.display()
        );
        continuo_engine::pianoroll::render(&prompt, &answer, &title, png)?;
    }
    match output_timing {
        OutputTiming::Reference => midi::write_midi_file(&args.out, &all),
        OutputTiming::Input => {
            // Back at the prompt's place in the piece (`--prompt-from end` moved it to 0).
            for note in &mut all {
                note.onset += origin;
            }
            midi::write_midi_file_timed(&args.out, &all, &timing)
        }
    }
    .with_context(|| format!("cannot write {}", args.out.display()))?;
    if let Some(path) = &args.json {
        let (temperature, top_p) = args.sampling.values(OFFICIAL_SAMPLING);
        let prompt_with_sos: Vec<[i64; 6]> = std::iter::once(vocab::SOS_ROW)
            .chain(prompt.iter().map(|n| n.to_row()))
            .collect();
        let generated: Vec<[i64; 6]> = gen.rows.iter().map(|n| n.to_row()).collect();
        let out = serde_json::json!({
            "prompt_with_sos": prompt_with_sos,
            "n_prompt_notes": prompt.len(),
            "max_gen_len": args.notes,
            "temperature": if args.sampling.greedy { 0.0 } else { temperature },
            "top_p": top_p,
            "seed": args.sampling.seed,
            "output_tokens_prompt_plus_generated_no_sos":
                prompt.iter().map(|n| n.to_row()).chain(generated.iter().copied()).collect::<Vec<_>>(),
            "generated_only": generated,
            "invalid_rows": gen.invalid,
            "stop_reason": gen.stop,
        });
        write_json(path, &out)?;
    }
    let decode: f64 = gen
        .timings
        .iter()
        .map(|t| (t.transformer + t.head).as_secs_f64())
        .sum();
    eprintln!(
        "generated {} notes ({} not playable, left out of the MIDI), stopped by {:?}; load {:.2} s, prefill {:.1} ms, {:.2} ms per note",
        gen.rows.len(),
        gen.invalid.len(),
        gen.stop,
        load.as_secs_f64(),
        gen.prefill.as_secs_f64() * 1e3,
        if gen.timings.is_empty() { 0.0 } else { decode * 1e3 / gen.timings.len() as f64 },
    );
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

fn forward(args: ForwardArgs) -> Result<()> {
    model_plan(&args.model)
        .input("--midi", &args.midi)
        .output("--out", &args.out)
        .check()?;
    let (model, style) = load_model(&args.model)?;
    let (notes, _) = read_prompt_from(
        &args.midi,
        args.prompt.prompt_notes,
        args.prompt.prompt_from,
    )?;
    let rows = vocab::input_rows(&notes, true);
    if rows.len() > model.cfg.max_len {
        return Err(prompt_too_long(notes.len(), rows.len(), &model.cfg));
    }
    model.validate_rows(&rows)?;
    let outside = vocab::out_of_range(&model.cfg, &rows);
    if let Some((row, attr, value)) = outside.first() {
        eprintln!(
            "warning: {} note(s) hold values outside the model's vocabulary (first: note {}, {} {value}); \
             like the reference, their labels are not clamped",
            outside.len(),
            row - 1,
            attr.name()
        );
    }
    let labels = vocab::labels(&model.cfg, &rows).map_err(|(row, why)| {
        anyhow::anyhow!(
            "note {} cannot be a training label: {why}",
            row.saturating_sub(1)
        )
    })?;
    let out = model.forward(&[&rows], Mask::Causal, &style, None)?;
    let l = rows.len();
    let dev = Device::Cpu;
    let inputs: Vec<u32> = labels[1..].iter().flat_map(|r| r[0..6].to_vec()).collect();
    let targets: Vec<u32> = labels[1..].iter().flat_map(|r| r[1..7].to_vec()).collect();
    let inputs = Tensor::from_vec(inputs, (1, l - 1, 6), &dev)?;
    let logits = model.gru_logits(&out.hidden, &inputs, &style)?;
    let v = model.cfg.decode_vocab_size;
    let flat = logits.reshape(((l - 1) * 6, v))?;
    let loss =
        candle_nn::loss::cross_entropy(&flat, &Tensor::from_vec(targets, (l - 1) * 6, &dev)?)?;
    let summary = model.summary_projection.forward_styled(
        &out.hidden,
        &style,
        continuo_engine::lora::Target::SummaryProjection,
    )?;
    let mut tensors = HashMap::new();
    tensors.insert("final_hidden".to_string(), out.hidden.squeeze(0)?);
    tensors.insert("summary".to_string(), summary.squeeze(0)?);
    tensors.insert("gru_logits".to_string(), logits.squeeze(0)?);
    tensors.insert("loss".to_string(), loss.reshape(1)?);
    let tmp = continuo_engine::files::partial_path(&args.out);
    candle_core::safetensors::save(&tensors, &tmp)
        .and_then(|()| Ok(continuo_engine::files::set_default_permissions(&tmp)?))
        .and_then(|()| Ok(std::fs::rename(&tmp, &args.out)?))
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    eprintln!(
        "loss {:.6} over {} notes; wrote {}",
        loss.to_scalar::<f32>()?,
        notes.len(),
        args.out.display()
    );
    Ok(())
}

fn run_quantize(args: QuantizeArgs) -> Result<()> {
    let cfg = load_config(&args.config)?;
    Plan::new()
        .input_opt("--config", config_file(&args.config))
        .input("--weights", &args.weights)
        .output("--out", &args.out)
        .check()?;
    refuse_existing_model(&args.out, args.force)?;
    let t = Instant::now();
    let model = Moonbeam::load_quantized(&cfg, &args.weights, Precision::F32, args.format)
        .with_context(|| format!("cannot load weights {}", args.weights.display()))?;
    let layers = model.quantized_layers();
    let card = serde_json::json!({
        "quantized_from": args.weights.file_name().map(|n| n.to_string_lossy().into_owned()),
        "config": args.config,
    });
    continuo_engine::model::weights::save_weights(&model, &args.out, &card)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    let bytes = std::fs::metadata(&args.out).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "quantized {layers} layers to {} in {:.1} s; wrote {} ({:.1} MB), base fingerprint {}",
        args.format,
        t.elapsed().as_secs_f64(),
        args.out.display(),
        bytes as f64 / 1e6,
        model.fingerprint()
    );
    Ok(())
}

/// The config's file, when `spec` names one (not `small` or `medium`).
fn config_file(spec: &str) -> Option<&Path> {
    match spec {
        "small" | "medium" => None,
        path => Some(Path::new(path)),
    }
}

/// The inputs of a command that loads a model through [`ModelArgs`].
fn model_plan(args: &ModelArgs) -> Plan<'_> {
    Plan::new()
        .input_opt("--config", config_file(&args.config))
        .input("--weights", &args.weights)
        .inputs("--lora", &args.lora)
}

fn run_bench(args: BenchArgs) -> Result<()> {
    Plan::new()
        .input_opt("--config", config_file(&args.config))
        .input_opt("--weights", args.weights.as_deref())
        .output_opt("--save", args.save.as_deref())
        .output_opt("--json", args.json.as_deref())
        .check()?;
    let cfg = load_config(&args.config)?;
    let t = Instant::now();
    let model = match (&args.weights, args.random_weights, args.quantize) {
        (Some(path), false, None) => Moonbeam::load(&cfg, path, Precision::F32)?,
        (Some(path), false, Some(format)) => {
            Moonbeam::load_quantized(&cfg, path, Precision::F32, format)?
        }
        (_, _, quantize) => {
            let mut model = Moonbeam::random(&cfg, 7, Precision::F32)?;
            if let Some(format) = quantize {
                model.quantize(format)?;
            }
            model
        }
    };
    let load = t.elapsed();
    let load_peak_rss = bench::peak_rss_bytes();
    if let Some(path) = &args.save {
        let card = serde_json::json!({ "config": args.config, "random_weights": args.weights.is_none() || args.random_weights });
        continuo_engine::model::weights::save_weights(&model, path, &card)
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(context) = args.train_context {
        let r = bench::run_train(&model, 8, context, 3)?;
        if let Some(path) = &args.json {
            write_json(path, &serde_json::json!({ "train": &r }))?;
        }
        println!(
            "config            {} ({} parameters, f32, loaded in {:.2} s)",
            args.config,
            cfg.n_params(),
            load.as_secs_f64()
        );
        println!(
            "LoRA training     rank {}, {} rows per step",
            r.rank, r.context_rows
        );
        println!(
            "step              median {:.2} s (forward, backward, AdamW)",
            r.step_s_median
        );
        println!("throughput        {:.1} notes/s", r.notes_per_s);
        println!("peak RSS          {:.0} MiB", r.peak_rss_mib);
        return Ok(());
    }
    if args.prompt_notes + args.notes + 1 > cfg.max_len {
        bail!(
            "prompt plus notes exceed the model's context of {} rows",
            cfg.max_len
        );
    }
    let r = bench::run(
        &model,
        load,
        load_peak_rss,
        args.prompt_notes,
        args.notes,
        args.top_p,
    )?;
    let style_report = match args.style_rank {
        Some(rank) => Some(bench::run_style(
            &model,
            rank,
            args.prompt_notes,
            args.notes,
        )?),
        None => None,
    };
    if let Some(path) = &args.json {
        write_json(
            path,
            &serde_json::json!({ "decode": &r, "style": &style_report }),
        )?;
    }
    if let Some(s) = &style_report {
        println!("style file        {:.1} MB (rank {})", s.file_mb, s.rank);
        println!(
            "style load        median {:.1} ms (read + validate)",
            s.load_ms_median
        );
        println!(
            "style swap        median {:.3} us, max {:.3} us",
            s.swap_us_median, s.swap_us_max
        );
        println!("per note (styled) median {:.2} ms", s.note_ms_median);
    }
    println!(
        "config            {} ({} parameters, {})",
        args.config,
        cfg.n_params(),
        model
            .quantization
            .as_ref()
            .map_or("f32", |q| q.format.name())
    );
    println!("threads           {}", r.threads);
    println!("load              {:.2} s", r.load_s);
    println!(
        "prefill           {:.1} ms ({} notes + SOS)",
        r.prefill_s * 1e3,
        r.prompt_notes
    );
    match (r.peak_gmacs_per_s, r.peak_instruction) {
        (Some(peak), Some(name)) => println!(
            "prefill rate      {:.0} G multiply-adds/s in the projections, {:.0} % of the {:.0} G/s \
             {name} peak (measured, {} threads)",
            r.prefill_gmacs_per_s,
            100.0 * r.prefill_gmacs_per_s / peak,
            peak,
            r.threads
        ),
        _ => println!(
            "prefill rate      {:.0} G multiply-adds/s in the projections",
            r.prefill_gmacs_per_s
        ),
    }
    println!(
        "per note          median {:.2} ms, p95 {:.2} ms",
        r.note_ms_median, r.note_ms_p95
    );
    println!(
        "  transformer     median {:.2} ms, p95 {:.2} ms",
        r.transformer_ms_median, r.transformer_ms_p95
    );
    println!(
        "  GRU head        median {:.2} ms, p95 {:.2} ms",
        r.head_ms_median, r.head_ms_p95
    );
    if r.context_batch > 0 {
        println!(
            "context batch     {} played notes in {:.2} ms ({:.1}x one transformer step)",
            r.context_batch,
            r.context_batch_ms,
            r.context_batch_ms / r.transformer_ms_median.max(1e-9)
        );
    }
    println!(
        "total             {:.2} s (prefill + {} notes)",
        r.total_s, r.notes
    );
    println!("peak RSS          {:.0} MiB", r.peak_rss_mib);
    println!(
        "load peak RSS     {:.0} MiB, {:.2}x the {:.0} MiB of weights in memory",
        r.load_peak_rss_mib,
        r.load_peak_rss_mib / r.weights_mib.max(1e-9),
        r.weights_mib
    );
    println!(
        "memory bandwidth  {:.1} GB/s (measured, {} threads)",
        r.bandwidth_gb_s, r.threads
    );
    println!(
        "bandwidth bound   {:.2} ms per note ({:.0} MB read per note); measured is {:.2}x the bound",
        r.bound_ms_per_note,
        r.bytes_per_note / 1e6,
        r.note_ms_median / r.bound_ms_per_note
    );
    println!(
        "weights' own     {:.1} GB/s read where they lie; bound {:.2} ms per note; measured is {:.2}x it",
        r.weight_stream_gb_s,
        r.weight_bound_ms_per_note,
        r.note_ms_median / r.weight_bound_ms_per_note
    );
    Ok(())
}

fn run_style(cmd: StyleCommand) -> Result<()> {
    match cmd {
        StyleCommand::Import {
            peft_dir,
            out,
            config,
            weights,
            card,
        } => {
            let cfg = load_config(&config)?;
            let (peft_config, peft_weights) = (
                peft_dir.join("adapter_config.json"),
                peft_dir.join("adapter_model.safetensors"),
            );
            Plan::new()
                .input("the peft folder's", &peft_config)
                .input("the peft folder's", &peft_weights)
                .input_opt("--weights", weights.as_deref())
                .output("--out", &out)
                .check()?;
            let adapter = Adapter::from_peft_dir(&peft_dir, &cfg)
                .with_context(|| format!("cannot import {}", peft_dir.display()))?;
            let base_fingerprint = match &weights {
                Some(w) => {
                    let base = Moonbeam::load(&cfg, w, Precision::F32)
                        .with_context(|| format!("cannot load base {}", w.display()))?;
                    if let Some(copy) = &adapter.lm_head_base {
                        let diff = (copy - &base.lm_head.f32_weight())?
                            .abs()?
                            .flatten_all()?
                            .max(0)?
                            .to_scalar::<f32>()?;
                        if diff > 1e-2 {
                            bail!("the adapter's stored lm_head differs from this base's (max |diff| {diff}): it was trained on another base");
                        }
                    }
                    base.fingerprint()
                }
                None => String::new(),
            };
            let data = serde_json::json!({ "imported_from": peft_dir.display().to_string() });
            let card = card.card(
                peft_dir.file_name(),
                base_fingerprint,
                adapter.rank,
                adapter.alpha,
                data,
            );
            style::save_style(&out, &adapter, &card)?;
            eprintln!(
                "wrote {} ({} LoRA pairs, rank {}, alpha {})",
                out.display(),
                adapter.pairs.len(),
                adapter.rank,
                adapter.alpha
            );
        }
        StyleCommand::Info { file } => {
            let card = style::read_card(&file)
                .with_context(|| format!("cannot read style {}", file.display()))?;
            style::verify_tensors(&file)
                .with_context(|| format!("style {} is damaged", file.display()))?;
            print_out(&serde_json::to_string_pretty(&card)?)?;
        }
        StyleCommand::ExportPeft {
            file,
            out,
            config,
            force,
        } => {
            let existing = ["adapter_config.json", "adapter_model.safetensors"]
                .map(|name| out.join(name))
                .into_iter()
                .find(|p| p.exists());
            if let (Some(existing), false) = (existing, force) {
                bail!(
                    "{} already holds an adapter ({}): use --force to replace it, or another folder",
                    out.display(),
                    existing.display()
                );
            }
            if out.exists() && !out.is_dir() {
                bail!(
                    "-o {} is a file: give a folder for the peft adapter",
                    out.display()
                );
            }
            let cfg = load_config(&config)?;
            let (adapter, _) = style::load_style(&file, &cfg, None)
                .with_context(|| format!("cannot read style {}", file.display()))?;
            style::export_peft(&out, &adapter)?;
            eprintln!("wrote {}", out.display());
        }
    }
    Ok(())
}

impl TrainCommon {
    /// The augmentation: `defaults` (wide for a base, mild for a style) with the options given.
    fn augment(&self, defaults: train::data::Augment) -> Result<Option<train::data::Augment>> {
        if self.no_augment {
            return Ok(None);
        }
        let aug = train::data::Augment {
            transpose: self.transpose.unwrap_or(defaults.transpose),
            tempo: self.tempo_range.unwrap_or(defaults.tempo),
            velocity: self.velocity_range.unwrap_or(defaults.velocity),
            velocity_shift: self.velocity_shift.unwrap_or(defaults.velocity_shift),
        };
        aug.validate().map_err(|e| anyhow!("{e}"))?;
        Ok(Some(aug))
    }
}

fn dataset(
    common: &TrainCommon,
    cfg: &Config,
    augment: Option<train::data::Augment>,
) -> Result<train::data::Dataset> {
    let options = train::data::DatasetOptions {
        context_rows: common.context,
        val_fraction: common.val_fraction,
        seed: common.seed,
        augment,
        augment_copies: common.augment_copies,
        instrument: common.instrument,
    };
    let data = train::data::build_dataset(&common.data, cfg, options)
        .with_context(|| format!("cannot build a training set from {}", common.data.display()))?;
    let r = &data.report;
    eprintln!(
        "data: {} files, {} pieces, {} notes kept of {}; {} unreadable, {} too short, {} gaps split, {} durations clipped",
        r.files.len(), r.pieces, r.notes_kept, r.notes_read, r.unreadable, r.too_short, r.split_gaps, r.clipped_durations
    );
    for (path, why) in r.skipped() {
        eprintln!("  skipped {}: {why}", path.display());
    }
    eprintln!(
        "split: {} training files ({} samples per epoch), {} validation files ({} samples)",
        data.split.train_files.len(),
        data.split.train_samples_per_epoch,
        data.split.val_files.len(),
        data.split.val_samples
    );
    Ok(data)
}

impl TrainCommon {
    /// Every training number checked before any work: the same rules for both trainers.
    fn validate(&self, cfg: &Config) -> Result<()> {
        if self.epochs == 0 {
            bail!("--epochs must be at least 1");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            bail!("--lr {} must be a positive number", self.lr);
        }
        if !(self.gamma.is_finite() && self.gamma > 0.0) {
            bail!(
                "--gamma {} must be a positive number (1 keeps the rate)",
                self.gamma
            );
        }
        if self.batch_size == 0 {
            bail!("--batch-size must be at least 1");
        }
        check_context(self.context, cfg)?;
        if !(self.val_fraction.is_finite() && (0.0..1.0).contains(&self.val_fraction)) {
            bail!(
                "--val-fraction {} must be at least 0 and below 1 (some files must be left to train on)",
                self.val_fraction
            );
        }
        Ok(())
    }
}

/// `--context` rows: room for SOS, one note and EOS, and at most the model's `max_len`.
fn check_context(context: usize, cfg: &Config) -> Result<()> {
    if !(3..=cfg.max_len).contains(&context) {
        bail!(
            "--context {context} must be between 3 (SOS, one note, EOS) and the model's max_len {}",
            cfg.max_len
        );
    }
    Ok(())
}

/// The options and data a resumed run must share with the run it continues (`--epochs`
/// may grow, and `--out` is where the checkpoint is found).
fn recipe(
    common: &TrainCommon,
    data: &train::data::Dataset,
    trainable: train::run::Trainable,
    start: Option<&Path>,
) -> std::collections::BTreeMap<String, String> {
    let o = &data.options;
    [
        ("--data", common.data.display().to_string()),
        (
            "training files",
            format!(
                "{} (hash {:016x})",
                data.split.train_files.len(),
                train::data::split_hash(&data.split.train_files.join("\n"), 0)
            ),
        ),
        (
            "start weights",
            start.map_or("random".into(), |p| p.display().to_string()),
        ),
        ("trained", format!("{trainable:?}")),
        ("--lr", common.lr.to_string()),
        ("--gamma", common.gamma.to_string()),
        ("--context", o.context_rows.to_string()),
        ("--batch-size", common.batch_size.to_string()),
        ("--val-fraction", o.val_fraction.to_string()),
        ("--seed", o.seed.to_string()),
        ("augmentation", format!("{:?}", o.augment)),
        ("--augment-copies", o.augment_copies.to_string()),
        ("--instrument", format!("{:?}", o.instrument)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn train_config(
    common: &TrainCommon,
    trainable: train::run::Trainable,
    out: &Path,
    recipe: std::collections::BTreeMap<String, String>,
) -> train::run::TrainConfig {
    train::run::TrainConfig {
        trainable,
        epochs: common.epochs,
        lr: common.lr,
        gamma: common.gamma,
        batch_size: common.batch_size,
        context_rows: common.context,
        seed: common.seed,
        checkpoint: resume_path(out),
        resume: common.resume,
        progress: true,
        recipe,
        stop: stop_on_ctrl_c(),
        checkpoint_every: Some(std::time::Duration::from_secs(600)),
    }
}

/// A model file is never replaced without `--force`.
fn refuse_existing_model(out: &Path, force: bool) -> Result<()> {
    if out.exists() && !force {
        bail!(
            "--out {} already exists: use --force to replace it, or another file",
            out.display()
        );
    }
    Ok(())
}

/// `--resume` needs the checkpoint it names.
fn check_resume(resume: bool, out: &Path) -> Result<()> {
    let checkpoint = resume_path(out);
    if resume && !checkpoint.is_file() {
        bail!(
            "--resume: there is no checkpoint {} to continue from (run without --resume to start)",
            checkpoint.display()
        );
    }
    Ok(())
}

/// The resumable state of a run writing `out`: `<out>.resume` beside it.
fn resume_path(out: &Path) -> PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(".resume");
    PathBuf::from(name)
}

fn data_summary(data: &train::data::Dataset) -> serde_json::Value {
    serde_json::json!({
        "folder_files": data.report.files.len(),
        "train_files": data.split.train_files,
        "val_files": data.split.val_files,
        "notes": data.report.notes_kept,
        "samples_per_epoch": data.split.train_samples_per_epoch,
        "augmentation": data.options.augment,
        "augment_copies": data.options.augment_copies,
        "instrument": data.options.instrument,
        "context_rows": data.options.context_rows,
    })
}

struct StyleSink {
    path: PathBuf,
    card: StyleCard,
}

impl train::run::Sink for StyleSink {
    fn save_best(
        &mut self,
        _model: &Moonbeam,
        style: &Style,
        summary: &train::run::TrainSummary,
    ) -> Result<()> {
        let adapter = train::params::adapter_of(style).context("no adapter to save")?;
        let mut card = self.card.clone();
        card.metrics = serde_json::to_value(summary)?;
        style::save_style(&self.path, &adapter, &card)?;
        Ok(())
    }
}

fn train_style(args: TrainStyleArgs) -> Result<()> {
    if args.rank == 0 {
        bail!("--rank must be at least 1");
    }
    if !(args.alpha.is_finite() && args.alpha > 0.0) {
        bail!("--alpha {} must be a positive number", args.alpha);
    }
    Plan::new()
        .input_opt("--config", config_file(&args.config))
        .input("--weights", &args.weights)
        .input("--data", &args.common.data)
        .output("--out", &args.out)
        .check()?;
    check_resume(args.common.resume, &args.out)?;
    let cfg = load_config(&args.config)?;
    let Some(data) = dataset_unless_dry_run(&args.common, &cfg, train::data::Augment::default())?
    else {
        return Ok(());
    };
    let base = Moonbeam::load(&cfg, &args.weights, Precision::F32)
        .with_context(|| format!("cannot load base {}", args.weights.display()))?;
    let card = args.card.card(
        args.out.file_stem(),
        base.fingerprint(),
        args.rank,
        args.alpha,
        data_summary(&data),
    );
    let trainable = train::run::Trainable::Lora {
        rank: args.rank,
        alpha: args.alpha,
    };
    let recipe = recipe(&args.common, &data, trainable, Some(&args.weights));
    let tc = train_config(&args.common, trainable, &args.out, recipe);
    let mut sink = StyleSink {
        path: args.out.clone(),
        card,
    };
    let summary = train::run::train(
        &base,
        &tc,
        |e| data.epoch_samples(e as u64),
        &data.val_samples,
        &mut sink,
    )?;
    finish(&summary, &tc, &args.out);
    Ok(())
}

struct BaseSink {
    path: PathBuf,
    meta: serde_json::Value,
}

impl train::run::Sink for BaseSink {
    fn save_best(
        &mut self,
        model: &Moonbeam,
        _style: &Style,
        summary: &train::run::TrainSummary,
    ) -> Result<()> {
        let mut meta = self.meta.clone();
        meta["metrics"] = serde_json::to_value(summary)?;
        continuo_engine::model::weights::save_weights(model, &self.path, &meta)?;
        Ok(())
    }
}

fn train_base(args: TrainBaseArgs) -> Result<()> {
    Plan::new()
        .input_opt("--config", config_file(&args.config))
        .input_opt("--init", args.init.as_deref())
        .input("--data", &args.common.data)
        .output("--out", &args.out)
        .check()?;
    check_resume(args.common.resume, &args.out)?;
    if !args.common.resume {
        refuse_existing_model(&args.out, args.force)?;
    }
    let cfg = load_config(&args.config)?;
    let Some(data) = dataset_unless_dry_run(&args.common, &cfg, train::data::Augment::wide())?
    else {
        return Ok(());
    };
    let base = match &args.init {
        Some(path) => Moonbeam::load(&cfg, path, Precision::F32)?,
        None => Moonbeam::init_for_training(&cfg, args.common.seed)?,
    };
    eprintln!("training {} parameters", cfg.n_params());
    let meta = serde_json::json!({ "data": data_summary(&data), "config": args.config });
    let trainable = train::run::Trainable::Full;
    let recipe = recipe(&args.common, &data, trainable, args.init.as_deref());
    let tc = train_config(&args.common, trainable, &args.out, recipe);
    let mut sink = BaseSink {
        path: args.out.clone(),
        meta,
    };
    let summary = train::run::train(
        &base,
        &tc,
        |e| data.epoch_samples(e as u64),
        &data.val_samples,
        &mut sink,
    )?;
    finish(&summary, &tc, &args.out);
    Ok(())
}

/// Builds the training set, or, with `--dry-run`, prints its report and returns `None`.
fn dataset_unless_dry_run(
    common: &TrainCommon,
    cfg: &Config,
    augment_defaults: train::data::Augment,
) -> Result<Option<train::data::Dataset>> {
    common.validate(cfg)?;
    let augment = common.augment(augment_defaults)?;
    let data = dataset(common, cfg, augment)?;
    if common.dry_run {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"report": data.report, "split": data.split})
            )?
        );
        return Ok(None);
    }
    Ok(Some(data))
}

/// A finished run needs no resume state; then report.
fn finish(summary: &train::run::TrainSummary, tc: &train::run::TrainConfig, out: &Path) {
    let _ = std::fs::remove_file(&tc.checkpoint);
    report_summary(summary, out);
}

fn report_summary(summary: &train::run::TrainSummary, out: &Path) {
    eprintln!(
        "done: best validation loss {} at epoch {} (before training {}); {} notes in {:.1} s; peak RSS {:.0} MiB; wrote {}",
        summary.best_val_loss.map_or("-".into(), |v| format!("{v:.4}")),
        summary.best_epoch.map_or("-".into(), |e| e.to_string()),
        summary.initial_val_loss.map_or("-".into(), |v| format!("{v:.4}")),
        summary.notes_seen,
        summary.seconds,
        summary.peak_rss_mib,
        out.display()
    );
}

/// MIDI files of a data spec: a folder (recursive) or `manifest.json:SPLIT`.
fn data_files(spec: &str) -> Result<Vec<PathBuf>> {
    if let Some((manifest, split)) = spec.rsplit_once(':').filter(|(m, _)| m.ends_with(".json")) {
        let text =
            std::fs::read_to_string(manifest).with_context(|| format!("cannot read {manifest}"))?;
        let entries: Vec<serde_json::Value> =
            serde_json::from_str(&text).with_context(|| format!("{manifest} is not a manifest"))?;
        let root = Path::new(manifest).parent().unwrap_or(Path::new("."));
        let files: Vec<PathBuf> = entries
            .iter()
            .filter(|e| e["split"] == split)
            .filter_map(|e| e["file"].as_str().map(|f| root.join(f)))
            .collect();
        if files.is_empty() {
            bail!("{manifest} has no files in split {split:?}");
        }
        Ok(files)
    } else {
        let files = train::data::find_midi_files(Path::new(spec))
            .with_context(|| format!("cannot list {spec}"))?;
        if files.is_empty() {
            bail!("no MIDI files under {spec}");
        }
        Ok(files)
    }
}

fn run_eval(args: EvalArgs) -> Result<()> {
    model_plan(&args.model)
        .output_opt("--json", args.json.as_deref())
        .check()?;
    let sampling = args.sampling.sampling()?;
    let (model, style) = load_model(&args.model)?;
    let (held_out, report) = train::data::load_pieces(&data_files(&args.data)?, &model.cfg);
    eprintln!("held-out data: {report}");
    check_context(args.context, &model.cfg)?;
    let context = args.context;
    let samples: Vec<Vec<Note>> = held_out
        .iter()
        .flat_map(|p| train::data::windows(&p.notes, context))
        .collect();
    let train_pieces: Vec<Vec<Note>> = match &args.train_data {
        Some(spec) => train::data::load_pieces(&data_files(spec)?, &model.cfg)
            .0
            .into_iter()
            .map(|p| p.notes)
            .collect(),
        None => {
            eprintln!("warning: no --train-data; the baselines are fitted on the held-out data");
            held_out.iter().map(|p| p.notes.clone()).collect()
        }
    };
    let opts = continuo_engine::eval::EvalOptions {
        prompt_notes: args.prompt_notes,
        continuation_notes: args.notes,
        sampling,
        allow_stacked: args.sampling.allow_stacked,
        endless: args.sampling.no_end,
        max_prompts: args.max_prompts,
        seed: args.sampling.seed,
    };
    let pieces: Vec<Vec<Note>> = held_out.iter().map(|p| p.notes.clone()).collect();
    let r =
        continuo_engine::eval::evaluate(&model, &style, &samples, &pieces, &train_pieces, &opts)?;
    println!("{}", r.table());
    println!("generation: {:.2} ms per note", r.ms_per_generated_note);
    if let Some(path) = &args.json {
        write_json(path, &r)?;
    }
    Ok(())
}

/// Style files shipped in `lora-weights/` (any `.safetensors` below it), sorted by path.
fn shipped_styles(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.join("lora-weights")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "safetensors") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn run_demo(args: DemoArgs) -> Result<()> {
    let sampling = args.sampling.sampling_with(CHOSEN_SAMPLING)?;
    let root = args
        .root
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."));
    let config_path = root.join("assets/configs/continuo_base.json");
    let weights = root.join("assets/continuo_base.safetensors");
    let prompt_path = root.join("assets/examples/satie_gymnopedie_no1.mid");
    let cfg = Config::from_file(&config_path)
        .with_context(|| format!("cannot read the bundled config {}", config_path.display()))?;
    let t = Instant::now();
    let model = Moonbeam::load(&cfg, &weights, Precision::F32)
        .with_context(|| format!("cannot load the bundled model {}", weights.display()))?;
    eprintln!(
        "loaded the bundled model ({} parameters) in {:.2} s",
        cfg.n_params(),
        t.elapsed().as_secs_f64()
    );
    let prompt = read_prompt(&prompt_path, Some(args.prompt_notes))?;
    // The answers are written on the prompt file's grid (its tempo and metre).
    let timing = midi::read_midi_timing(&prompt_path)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let fingerprint = model.fingerprint();
    let mut styles: Vec<(String, Style)> = vec![("base".into(), Style::base())];
    for path in shipped_styles(&root) {
        match style::load_style(&path, &cfg, Some(&fingerprint)) {
            Ok((adapter, card)) => {
                styles.push((card.name.clone(), Style::single(Arc::new(adapter), 1.0)))
            }
            Err(e) => eprintln!("skipping style {}: {e}", path.display()),
        }
    }
    // One blend of the first two styles, half and half, as the plugin's Blend control makes.
    if let [_, (a, sa), (b, sb), ..] = &styles[..] {
        let parts = vec![(sa.parts[0].0.clone(), 0.5), (sb.parts[0].0.clone(), 0.5)];
        styles.push((format!("{a} 50 % + {b} 50 %"), Style { parts }));
    }
    let pace = |notes: &[Note]| {
        continuo_engine::eval::Profile::of(notes).map_or(0.0, |p| p.notes_per_second)
    };
    let prompt_pace = pace(&prompt);
    eprintln!(
        "prompt: {} notes of {}, {prompt_pace:.1} notes/s",
        prompt.len(),
        prompt_path.display()
    );
    for (name, st) in &styles {
        let opts = GenerateOptions {
            max_notes: args.notes,
            max_duration_ticks: None,
            sampling,
            allow_stacked: args.sampling.allow_stacked,
            endless: true,
        };
        let t = Instant::now();
        let mut first: Option<f64> = None;
        let gen = continue_notes(&model, st, &prompt, &opts, |_, _| {
            first.get_or_insert_with(|| t.elapsed().as_secs_f64() * 1e3);
        })?;
        let elapsed = t.elapsed().as_secs_f64() * 1e3;
        let continuation = gen.valid_notes();
        let slug = style::file_slug(name);
        let mid = args.out.join(format!("{slug}.mid"));
        let png = args.out.join(format!("{slug}.png"));
        let mut all = prompt.clone();
        all.extend(continuation.iter().copied());
        midi::write_midi_file_timed(&mid, &all, &timing)?;
        continuo_engine::pianoroll::render(
            &prompt,
            &continuation,
            &format!(
                "{name}: {} notes answering {} of {}",
                continuation.len(),
                prompt.len(),
                prompt_path.display()
            ),
            &png,
        )?;
        let per_note: f64 = gen
            .timings
            .iter()
            .map(|t| (t.transformer + t.head).as_secs_f64() * 1e3)
            .sum::<f64>()
            / gen.timings.len().max(1) as f64;
        let answer_pace = pace(&continuation);
        println!(
            "{name:<16} {:>3} notes ({} not playable), {answer_pace:.1} notes/s (x{:.2} the prompt's), first note after {:.1} ms, {:.2} ms per note, total {:.0} ms -> {} and {}",
            gen.rows.len(),
            gen.invalid.len(),
            answer_pace / prompt_pace.max(1e-9),
            first.unwrap_or(0.0),
            per_note,
            elapsed,
            mid.display(),
            png.display()
        );
    }
    Ok(())
}
