//! The training loop shared by `train-style` (LoRA on a frozen base) and `train-base`
//! (every parameter): packed batches, AdamW, a per-epoch learning-rate decay, validation
//! every epoch, the best checkpoint kept, and resumption after an interruption.
//!
//! Resumption is exact: the state after every step is a function of the options, the data
//! and the step alone (every random choice is seeded per epoch), so a run stopped at any
//! step and resumed gives the losses and weights of the run that never stopped. A checkpoint
//! records the options that must not change (`TrainConfig::recipe`) and is refused when they
//! differ.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor, Var};
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::data::{pack, Packed};
use super::loss::{packed_loss, PackedBatch};
use super::optim::AdamW;
use super::params;
use crate::lora::Style;
use crate::model::Moonbeam;
use crate::note::Note;

/// What is trained.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Trainable {
    /// Fresh LoRA pairs on every official target; the base stays frozen.
    Lora { rank: usize, alpha: f64 },
    /// Every parameter of the base.
    Full,
}

/// Training settings.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub trainable: Trainable,
    pub epochs: usize,
    pub lr: f64,
    /// Learning-rate factor applied after every epoch (the reference's `StepLR(gamma)`).
    pub gamma: f64,
    /// Packed sequences per optimizer step.
    pub batch_size: usize,
    /// Rows per packed sequence (SOS and EOS included).
    pub context_rows: usize,
    pub seed: u64,
    /// Where the resumable state is written after every epoch.
    pub checkpoint: PathBuf,
    /// Continue from `checkpoint` if it exists.
    pub resume: bool,
    /// Show a progress bar (on a terminal).
    pub progress: bool,
    /// The options and data a resumed run must share with the run it continues (name to
    /// value), stored in the checkpoint and compared on resume. Empty: nothing is checked.
    pub recipe: BTreeMap<String, String>,
    /// When set (by a Ctrl-C handler, say), training stops after the current step, writes
    /// the checkpoint and returns [`Interrupted`].
    pub stop: Option<Arc<AtomicBool>>,
    /// Also write the checkpoint within an epoch this often, so a crash loses at most this
    /// much work (the checkpoint is always written after every epoch).
    pub checkpoint_every: Option<Duration>,
}

/// The error [`train`] returns when [`TrainConfig::stop`] was set: the state up to the last
/// finished step is in `checkpoint`, and a run with `resume` continues from there.
#[derive(Debug, thiserror::Error)]
#[error("training stopped at epoch {epoch}, step {step}; the state is saved in {}", checkpoint.display())]
pub struct Interrupted {
    pub epoch: usize,
    pub step: usize,
    pub checkpoint: PathBuf,
}

/// Where a checkpoint stands: complete epochs, and steps done in the next one with their
/// running sums (stored bit-exactly, so that a resumed epoch reports the same loss).
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
struct Position {
    epochs_done: usize,
    steps_done: usize,
    loss_sum_bits: u64,
    notes: usize,
    seconds: f64,
}

/// Metrics of one epoch.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub train_loss: f64,
    pub val_loss: Option<f64>,
    pub notes: usize,
    pub notes_per_s: f64,
    pub seconds: f64,
    pub lr: f64,
}

/// The whole run's metrics, written into the output's card.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct TrainSummary {
    pub epochs: Vec<EpochMetrics>,
    /// Validation loss before any training.
    pub initial_val_loss: Option<f64>,
    pub best_val_loss: Option<f64>,
    pub best_epoch: Option<usize>,
    pub notes_seen: usize,
    pub seconds: f64,
    pub peak_rss_mib: f64,
    pub trainable_params: usize,
}

/// What the caller does with the trained parameters.
pub trait Sink {
    /// Called whenever validation improves (or after every epoch without validation data).
    fn save_best(
        &mut self,
        model: &Moonbeam,
        style: &Style,
        summary: &TrainSummary,
    ) -> anyhow::Result<()>;
}

/// Trains on `train_samples(epoch)` (notes of each sample, regenerated per epoch so that
/// augmentation varies) and validates on `val`.
///
/// With [`Trainable::Lora`], `base` comes out bit-identical (checked with a hash of every bit
/// of every weight, an error if not): the styles it writes are only valid for that exact base.
pub fn train(
    base: &Moonbeam,
    cfg: &TrainConfig,
    mut train_samples: impl FnMut(usize) -> Vec<Vec<Note>>,
    val: &[Vec<Note>],
    sink: &mut dyn Sink,
) -> anyhow::Result<TrainSummary> {
    let started = Instant::now();
    // A style is only valid for the exact base it was trained on: prove the base is untouched.
    let base_before = matches!(cfg.trainable, Trainable::Lora { .. })
        .then(|| bits_hash(base))
        .transpose()?;
    let (vars, model, style): (Vec<(String, Var)>, Moonbeam, Style) = match cfg.trainable {
        Trainable::Lora { rank, alpha } => {
            let (vars, style) = params::new_lora(base, rank, alpha, cfg.seed)?;
            (vars, base.clone(), style)
        }
        Trainable::Full => {
            let (vars, model) = params::full(base)?;
            (vars, model, Style::base())
        }
    };
    let trainable_params = vars.iter().map(|(_, v)| v.as_tensor().elem_count()).sum();
    let mut opt = AdamW::new(vars, cfg.lr, 0.0)?;
    let val_packed = pack(val, cfg.context_rows, None)?;
    let mut summary = TrainSummary {
        trainable_params,
        ..Default::default()
    };
    let mut position = Position::default();
    if cfg.resume && cfg.checkpoint.exists() {
        let (state, meta) = read_checkpoint(&cfg.checkpoint)?;
        check_recipe(&cfg.recipe, meta.get("recipe"), &cfg.checkpoint)?;
        position = match meta.get("position") {
            Some(p) => serde_json::from_str(p)?,
            None => Position {
                epochs_done: meta
                    .get("epochs_done")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
                ..Default::default()
            },
        };
        let step: u64 = meta.get("step").and_then(|v| v.parse().ok()).unwrap_or(0);
        opt.restore(&state, step)?;
        if let Some(s) = meta.get("summary") {
            summary = serde_json::from_str(s)?;
        }
        if position.steps_done > 0 {
            eprintln!(
                "resuming at epoch {}, step {} from {}",
                position.epochs_done + 1,
                position.steps_done,
                cfg.checkpoint.display()
            );
        } else {
            eprintln!(
                "resuming after epoch {} from {}",
                position.epochs_done,
                cfg.checkpoint.display()
            );
        }
    } else if !val_packed.is_empty() {
        summary.initial_val_loss = Some(evaluate(&model, &style, &val_packed, cfg.batch_size)?);
        eprintln!(
            "validation loss before training: {:.4}",
            summary.initial_val_loss.unwrap_or(f64::NAN)
        );
    }
    let run_started = Instant::now();
    let mut run_steps_done = 0usize;
    for epoch in position.epochs_done..cfg.epochs {
        opt.lr = cfg.lr * cfg.gamma.powi(epoch as i32);
        let t = Instant::now();
        let samples = train_samples(epoch);
        let mut packed = pack(
            &samples,
            cfg.context_rows,
            Some(cfg.seed.wrapping_add(epoch as u64)),
        )?;
        // Seeded per epoch (not one stream over the run), so a resumed run shuffles alike.
        let mut rng = rand::rngs::StdRng::seed_from_u64(
            (cfg.seed ^ 0x5eed).wrapping_add((epoch as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
        );
        packed.shuffle(&mut rng);
        let steps = packed.len().div_ceil(cfg.batch_size.max(1));
        let bar = progress_bar(cfg.progress, steps, epoch, cfg.epochs);
        // A checkpoint written within this epoch continues it after its last step.
        let resumed = std::mem::take(&mut position);
        let skip = if resumed.epochs_done == epoch {
            resumed.steps_done
        } else {
            0
        };
        let (mut loss_sum, mut notes) = if skip > 0 {
            (f64::from_bits(resumed.loss_sum_bits), resumed.notes)
        } else {
            (0.0f64, 0usize)
        };
        let earlier_seconds = if skip > 0 { resumed.seconds } else { 0.0 };
        if let Some(b) = &bar {
            b.set_position(skip as u64);
        }
        // Without a terminal (a background run writing a log) the bar is hidden: a line a
        // minute instead, so the log shows the run is alive and how fast it goes.
        let mut logged = Instant::now();
        let mut saved = Instant::now();
        let log_lines = cfg.progress && bar.as_ref().is_none_or(|b| b.is_hidden());
        let mut epoch_notes_now = 0usize;
        for (step, chunk) in packed.chunks(cfg.batch_size.max(1)).enumerate().skip(skip) {
            let batch = batch_of(chunk);
            let (loss, n) = packed_loss(&model, &style, &batch)?;
            let value = loss.to_scalar::<f32>()? as f64;
            if !value.is_finite() {
                anyhow::bail!(
                    "the training loss became {value} at epoch {epoch}; try a lower --lr"
                );
            }
            opt.backward_step(&loss)?;
            loss_sum += value * n as f64;
            notes += n;
            epoch_notes_now += n;
            run_steps_done += 1;
            let here = Position {
                epochs_done: epoch,
                steps_done: step + 1,
                loss_sum_bits: loss_sum.to_bits(),
                notes,
                seconds: earlier_seconds + t.elapsed().as_secs_f64(),
            };
            let stopping = cfg.stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed));
            let due = cfg
                .checkpoint_every
                .is_some_and(|every| saved.elapsed() >= every);
            if (stopping || due) && step + 1 < steps {
                write_checkpoint(&cfg.checkpoint, &opt, here, &summary, &cfg.recipe)?;
                saved = Instant::now();
            }
            if stopping && step + 1 < steps {
                if let Some(b) = &bar {
                    b.abandon();
                }
                return Err(Interrupted {
                    epoch: epoch + 1,
                    step: step + 1,
                    checkpoint: cfg.checkpoint.clone(),
                }
                .into());
            }
            if let Some(b) = &bar {
                let rate = notes as f64 / t.elapsed().as_secs_f64().max(1e-9);
                b.set_message(format!(
                    "loss {:.4}  {:.0} notes/s",
                    loss_sum / notes.max(1) as f64,
                    rate
                ));
                b.inc(1);
            }
            if log_lines && logged.elapsed().as_secs() >= 60 {
                logged = Instant::now();
                // Every epoch has about as many steps as this one.
                let left = (steps - step - 1) + steps * (cfg.epochs - epoch - 1);
                let per_step = run_started.elapsed().as_secs_f64() / run_steps_done as f64;
                eprintln!(
                    "epoch {}/{}: step {}/{steps}, loss {:.4}, {:.0} notes/s, about {} left in the run",
                    epoch + 1,
                    cfg.epochs,
                    step + 1,
                    loss_sum / notes.max(1) as f64,
                    epoch_notes_now as f64 / t.elapsed().as_secs_f64().max(1e-9),
                    duration_words(per_step * left as f64)
                );
            }
        }
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        let val_loss = if val_packed.is_empty() {
            None
        } else {
            Some(evaluate(&model, &style, &val_packed, cfg.batch_size)?)
        };
        let seconds = earlier_seconds + t.elapsed().as_secs_f64();
        let m = EpochMetrics {
            epoch: epoch + 1,
            train_loss: loss_sum / notes.max(1) as f64,
            val_loss,
            notes,
            notes_per_s: notes as f64 / seconds.max(1e-9),
            seconds,
            lr: opt.lr,
        };
        eprintln!(
            "epoch {}/{}: train loss {:.4}, validation loss {}, {:.0} notes/s, {:.1} s",
            m.epoch,
            cfg.epochs,
            m.train_loss,
            m.val_loss.map_or("-".into(), |v| format!("{v:.4}")),
            m.notes_per_s,
            m.seconds
        );
        summary.notes_seen += notes;
        summary.epochs.push(m);
        summary.seconds += seconds;
        summary.peak_rss_mib = crate::memory::peak_rss_bytes() as f64 / (1024.0 * 1024.0);
        let improved = match (val_loss, summary.best_val_loss) {
            (Some(v), Some(best)) => v < best,
            (Some(_), None) => true,
            (None, _) => true,
        };
        if improved {
            summary.best_val_loss = val_loss;
            summary.best_epoch = Some(epoch + 1);
            sink.save_best(&model, &style, &summary)?;
        }
        let done = Position {
            epochs_done: epoch + 1,
            ..Default::default()
        };
        write_checkpoint(&cfg.checkpoint, &opt, done, &summary, &cfg.recipe)?;
        let stopping = cfg.stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed));
        if stopping && epoch + 1 < cfg.epochs {
            return Err(Interrupted {
                epoch: epoch + 1,
                step: steps,
                checkpoint: cfg.checkpoint.clone(),
            }
            .into());
        }
    }
    let _ = started;
    if let Some(before) = base_before {
        if before != bits_hash(base)? {
            anyhow::bail!("internal error: the base weights changed during style training");
        }
    }
    Ok(summary)
}

/// Mean validation loss per counted note.
pub fn evaluate(
    model: &Moonbeam,
    style: &Style,
    packed: &[Packed],
    batch_size: usize,
) -> anyhow::Result<f64> {
    let (mut sum, mut n) = (0.0f64, 0usize);
    for chunk in packed.chunks(batch_size.max(1)) {
        let batch = batch_of(chunk);
        let (loss, count) = packed_loss(model, style, &batch)?;
        let loss = loss.detach();
        sum += loss.to_scalar::<f32>()? as f64 * count as f64;
        n += count;
    }
    Ok(sum / n.max(1) as f64)
}

fn batch_of(chunk: &[Packed]) -> PackedBatch<'_> {
    PackedBatch {
        rows: chunk.iter().map(|p| p.rows.as_slice()).collect(),
        segments: chunk.iter().map(|p| p.segments.clone()).collect(),
        loss_mask: chunk.iter().map(|p| p.loss_mask.clone()).collect(),
    }
}

fn progress_bar(
    enabled: bool,
    steps: usize,
    epoch: usize,
    epochs: usize,
) -> Option<indicatif::ProgressBar> {
    if !enabled {
        return None;
    }
    let bar = indicatif::ProgressBar::new(steps as u64);
    let style = indicatif::ProgressStyle::with_template(
        "epoch {prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(format!("{}/{}", epoch + 1, epochs));
    Some(bar)
}

/// "3 h 20 min", "12 min", "40 s".
fn duration_words(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        _ => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}

/// Refuses to continue a run whose recorded options differ from this one's.
fn check_recipe(
    now: &BTreeMap<String, String>,
    recorded: Option<&String>,
    checkpoint: &Path,
) -> anyhow::Result<()> {
    let Some(recorded) = recorded else {
        if !now.is_empty() {
            eprintln!(
                "warning: {} records no options (an older version wrote it); continuing without checking them",
                checkpoint.display()
            );
        }
        return Ok(());
    };
    let then: BTreeMap<String, String> = serde_json::from_str(recorded)?;
    let differ: Vec<String> = now
        .iter()
        .filter_map(|(k, v)| {
            let old = then.get(k).map_or("(not set)", String::as_str);
            (old != v).then(|| format!("{k}: {old} in the checkpoint, {v} now"))
        })
        .collect();
    if !differ.is_empty() {
        anyhow::bail!(
            "--resume: {} was written by a run with other options ({}); resume with the same options, or start a new run without --resume",
            checkpoint.display(),
            differ.join("; ")
        );
    }
    Ok(())
}

fn write_checkpoint(
    path: &Path,
    opt: &AdamW,
    position: Position,
    summary: &TrainSummary,
    recipe: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let state = opt.state();
    let meta: HashMap<String, String> = [
        ("epochs_done".to_string(), position.epochs_done.to_string()),
        ("position".to_string(), serde_json::to_string(&position)?),
        ("step".to_string(), opt.step.to_string()),
        ("summary".to_string(), serde_json::to_string(summary)?),
        ("recipe".to_string(), serde_json::to_string(recipe)?),
    ]
    .into();
    let tmp = crate::files::partial_path(path);
    safetensors::serialize_to_file(state.iter().map(|(n, t)| (n.as_str(), t)), Some(meta), &tmp)?;
    // safetensors writes through a private temporary file (0600): give it the usual mode.
    crate::files::set_default_permissions(&tmp)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn read_checkpoint(
    path: &Path,
) -> anyhow::Result<(HashMap<String, Tensor>, HashMap<String, String>)> {
    let bytes = std::fs::read(path)?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)?;
    let meta = meta.metadata().clone().unwrap_or_default();
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)?;
    Ok((tensors, meta))
}

/// A hash of every bit of every weight of `model` (FNV-1a over 32-bit words): unlike
/// [`Moonbeam::fingerprint`], which samples, it changes when any single weight does.
fn bits_hash(model: &Moonbeam) -> candle_core::Result<u64> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (_, t) in model.named_tensors() {
        crate::kernels::with_f32(&t, |data| {
            for v in data {
                h = (h ^ u64::from(v.to_bits())).wrapping_mul(0x0000_0100_0000_01b3);
            }
            Ok(())
        })?;
    }
    Ok(h)
}
