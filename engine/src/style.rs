//! The native style file: one `.safetensors` holding a LoRA adapter and its card.
//!
//! Tensors are named `<module>.lora_A` / `<module>.lora_B` after the base module they
//! adapt (for example `model.layers.0.self_attn.q_proj.lora_A`); the safetensors metadata
//! holds the card as JSON strings: name, description, author, the base model it was made
//! for (id and fingerprint), rank, alpha, targets, a data summary, training metrics and
//! the format version. Styles convert losslessly to and from peft adapter folders, so
//! styles trained with the official PyTorch recipe work here and ours work there.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::error::AdapterError;
use crate::lora::{Adapter, LoraPair, Target};
use crate::model::Moonbeam;

pub const STYLE_FORMAT_VERSION: u32 = 1;

/// A style's card, stored in the file's metadata.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StyleCard {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub author: String,
    /// A human-readable id of the base, e.g. `moonbeam-839M` or `continuo-base-v1`.
    #[serde(default)]
    pub base_model: String,
    /// [`Moonbeam::fingerprint`] of the base the style was made for (empty when unknown).
    #[serde(default)]
    pub base_fingerprint: String,
    pub rank: usize,
    pub alpha: f64,
    pub targets: Vec<String>,
    /// Free-form summary of the training data (files, notes, licences).
    #[serde(default)]
    pub data: serde_json::Value,
    /// Training metrics (losses, epochs, tokens).
    #[serde(default)]
    pub metrics: serde_json::Value,
    pub format_version: u32,
}

impl StyleCard {
    /// A card with a name and a description and nothing else yet: the rank, alpha and targets
    /// are taken from the adapter when the style is saved.
    pub fn new(name: impl Into<String>, description: impl Into<String>) -> Self {
        StyleCard {
            name: name.into(),
            description: description.into(),
            author: String::new(),
            base_model: String::new(),
            base_fingerprint: String::new(),
            rank: 0,
            alpha: 0.0,
            targets: Vec::new(),
            data: serde_json::Value::Null,
            metrics: serde_json::Value::Null,
            format_version: STYLE_FORMAT_VERSION,
        }
    }
}

/// Writes a style file. The card's rank, alpha and targets are taken from the adapter.
pub fn save_style(path: &Path, adapter: &Adapter, card: &StyleCard) -> Result<(), AdapterError> {
    let mut card = card.clone();
    card.rank = adapter.rank;
    card.alpha = adapter.alpha;
    let mut targets: Vec<Target> = adapter.pairs.keys().copied().collect();
    targets.sort_by_key(|t| t.module_name());
    card.targets = targets.iter().map(|t| t.module_name()).collect();
    card.format_version = STYLE_FORMAT_VERSION;
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    for t in &targets {
        let pair = &adapter.pairs[t];
        tensors.push((format!("{}.lora_A", t.module_name()), pair.a.clone()));
        tensors.push((format!("{}.lora_B", t.module_name()), pair.b.clone()));
    }
    let card_json =
        serde_json::to_string(&card).map_err(|e| AdapterError::Format(e.to_string()))?;
    let metadata: HashMap<String, String> = [
        ("continuo.style".to_string(), card_json),
        ("format".to_string(), "pt".to_string()),
    ]
    .into();
    let tmp = path.with_extension("safetensors.partial");
    let io = |source| AdapterError::Io {
        path: path.to_owned(),
        source,
    };
    // Written to a temporary file and renamed, so a crash never leaves a half-written style.
    safetensors::serialize_to_file(
        tensors.iter().map(|(n, t)| (n.as_str(), t)),
        Some(metadata),
        &tmp,
    )
    .map_err(|e| AdapterError::Format(format!("cannot write {}: {e}", tmp.display())))?;
    crate::files::set_default_permissions(&tmp).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(())
}

/// Reads every tensor of a style file and checks that each is whole and finite (a truncated
/// or corrupted file has a readable header but not its weights). Needs no base model.
pub fn verify_tensors(path: &Path) -> Result<(), AdapterError> {
    let bytes =
        crate::files::read_input(path, None, "style").map_err(|source| AdapterError::Io {
            path: path.to_owned(),
            source,
        })?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, &candle_core::Device::Cpu)
        .map_err(|e| AdapterError::Format(format!("{}: {e}", path.display())))?;
    for (name, t) in tensors {
        let values = t
            .to_dtype(candle_core::DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())?;
        if !values.iter().all(|v| v.is_finite()) {
            return Err(AdapterError::Format(format!(
                "{}: tensor `{name}` holds non-finite values",
                path.display()
            )));
        }
    }
    Ok(())
}

/// Reads only a style file's card (cheap: the header).
///
/// Only the safetensors header is read (8 bytes of length, then the JSON header), so listing
/// a folder of styles does not read their weights.
pub fn read_card(path: &Path) -> Result<StyleCard, AdapterError> {
    use std::io::Read;
    let io = |source| AdapterError::Io {
        path: path.to_owned(),
        source,
    };
    crate::files::check_input(path, None, "style").map_err(io)?;
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut len = [0_u8; 8];
    file.read_exact(&mut len).map_err(|_| {
        AdapterError::Format(format!(
            "{}: not a safetensors file (too short)",
            path.display()
        ))
    })?;
    let len = u64::from_le_bytes(len);
    let file_len = file.metadata().map_err(io)?.len();
    if len > 100_000_000 || len > file_len.saturating_sub(8) {
        return Err(AdapterError::Format(format!(
            "{}: not a safetensors file (bad header length {len})",
            path.display()
        )));
    }
    let mut header = vec![0_u8; len as usize];
    file.read_exact(&mut header).map_err(io)?;
    let header: serde_json::Value = serde_json::from_slice(&header).map_err(|e| {
        AdapterError::Format(format!("{}: not a safetensors file ({e})", path.display()))
    })?;
    let json = header
        .get("__metadata__")
        .and_then(|m| m.get("continuo.style"))
        .and_then(|c| c.as_str())
        .ok_or_else(|| AdapterError::Format("the file has no Continuo style card (is it a peft adapter? use `continuo style import`)".into()))?;
    card_from_json(json)
}

fn card_from_bytes(bytes: &[u8]) -> Result<StyleCard, AdapterError> {
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| AdapterError::Format(format!("not a safetensors file: {e}")))?;
    let json = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("continuo.style"))
        .ok_or_else(|| AdapterError::Format("the file has no Continuo style card (is it a peft adapter? use `continuo style import`)".into()))?;
    card_from_json(json)
}

fn card_from_json(json: &str) -> Result<StyleCard, AdapterError> {
    let card: StyleCard = serde_json::from_str(json)
        .map_err(|e| AdapterError::Format(format!("bad style card: {e}")))?;
    if card.format_version > STYLE_FORMAT_VERSION {
        return Err(AdapterError::Format(format!(
            "style format version {} is newer than this build understands ({STYLE_FORMAT_VERSION})",
            card.format_version
        )));
    }
    Ok(card)
}

/// Reads and validates a style file for a base model.
///
/// `base_fingerprint` is the running base's [`Moonbeam::fingerprint`]; a style whose card
/// names another fingerprint is refused. Shapes are always checked against `cfg`.
pub fn load_style(
    path: &Path,
    cfg: &Config,
    base_fingerprint: Option<&str>,
) -> Result<(Adapter, StyleCard), AdapterError> {
    let bytes =
        crate::files::read_input(path, None, "style").map_err(|source| AdapterError::Io {
            path: path.to_owned(),
            source,
        })?;
    let card = card_from_bytes(&bytes)?;
    if let Some(fp) = base_fingerprint {
        if !card.base_fingerprint.is_empty() && card.base_fingerprint != fp {
            return Err(AdapterError::BaseMismatch(format!(
                "style `{}` was made for base `{}` (fingerprint {}), the loaded base has fingerprint {fp}",
                card.name, card.base_model, card.base_fingerprint
            )));
        }
    }
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .map_err(|e| AdapterError::Format(format!("{}: {e}", path.display())))?;
    let mut halves: HashMap<Target, (Option<Tensor>, Option<Tensor>)> = HashMap::new();
    for (name, t) in tensors {
        let (module, which) = name
            .rsplit_once('.')
            .ok_or_else(|| AdapterError::Format(format!("unexpected tensor `{name}`")))?;
        let target = Target::from_module_name(module)
            .filter(|t| match t {
                Target::Q(i) | Target::K(i) | Target::V(i) | Target::O(i) => *i < cfg.n_layers,
                _ => true,
            })
            .ok_or_else(|| {
                AdapterError::Format(format!(
                    "tensor `{name}` targets a module this base does not have"
                ))
            })?;
        let slot = halves.entry(target).or_default();
        match which {
            "lora_A" => slot.0 = Some(t),
            "lora_B" => slot.1 = Some(t),
            _ => return Err(AdapterError::Format(format!("unexpected tensor `{name}`"))),
        }
    }
    let mut pairs = HashMap::new();
    for (target, (a, b)) in halves {
        match (a, b) {
            (Some(a), Some(b)) => {
                pairs.insert(target, LoraPair { a, b });
            }
            _ => {
                return Err(AdapterError::Format(format!(
                    "{} has only one of its two LoRA matrices",
                    target.module_name()
                )))
            }
        }
    }
    let adapter = Adapter {
        rank: card.rank,
        alpha: card.alpha,
        pairs,
        lm_head_base: None,
    }
    .validated(cfg)?;
    Ok((adapter, card))
}

/// Writes a peft adapter folder (`adapter_config.json` + `adapter_model.safetensors`) that the
/// official recipe's `PeftModel.from_pretrained` reads.
pub fn export_peft(dir: &Path, adapter: &Adapter) -> Result<(), AdapterError> {
    std::fs::create_dir_all(dir).map_err(|source| AdapterError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    let mut modules = std::collections::BTreeSet::new();
    for (t, pair) in &adapter.pairs {
        let m = t.module_name();
        let short = m.rsplit('.').next().unwrap_or(&m).to_owned();
        modules.insert(short);
        let (a, b) = match t {
            Target::DecoderEmbedding => (
                format!("{m}.lora_embedding_A"),
                format!("{m}.lora_embedding_B"),
            ),
            _ => (format!("{m}.lora_A.weight"), format!("{m}.lora_B.weight")),
        };
        tensors.push((format!("base_model.model.{a}"), pair.a.clone()));
        tensors.push((format!("base_model.model.{b}"), pair.b.clone()));
    }
    let weights = dir.join("adapter_model.safetensors");
    let metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    safetensors::serialize_to_file(
        tensors.iter().map(|(n, t)| (n.as_str(), t)),
        Some(metadata),
        &weights,
    )
    .map_err(|e| AdapterError::Format(format!("cannot write {}: {e}", weights.display())))?;
    crate::files::set_default_permissions(&weights).map_err(|source| AdapterError::Io {
        path: weights.clone(),
        source,
    })?;
    let config = serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": adapter.rank,
        "lora_alpha": adapter.alpha,
        "lora_dropout": 0.05,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "use_rslora": false,
        "use_dora": false,
        "target_modules": modules.into_iter().collect::<Vec<_>>(),
        "base_model_name_or_path": "",
        "modules_to_save": null,
    });
    let path = dir.join("adapter_config.json");
    crate::files::write_atomic(
        &path,
        serde_json::to_string_pretty(&config)
            .unwrap_or_default()
            .as_bytes(),
    )
    .map_err(|source| AdapterError::Io { path, source })?;
    Ok(())
}

/// A style name as a file name: lower-case ASCII letters and digits, with every run of other
/// characters turned into one dash (`"Bach Chorale"` → `bach-chorale`).
pub fn file_slug(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    out.trim_end_matches('-').to_string()
}

/// Loads a style from either a native style file or a peft folder.
pub fn load_any(
    path: &Path,
    cfg: &Config,
    base_fingerprint: Option<&str>,
) -> Result<(Adapter, StyleCard), AdapterError> {
    if path.is_dir() {
        let adapter = Adapter::from_peft_dir(path, cfg)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let card = StyleCard {
            rank: adapter.rank,
            alpha: adapter.alpha,
            targets: adapter.pairs.keys().map(|t| t.module_name()).collect(),
            ..StyleCard::new(name, "imported peft adapter")
        };
        Ok((adapter, card))
    } else {
        load_style(path, cfg, base_fingerprint)
    }
}

impl Moonbeam {
    /// A content fingerprint of the base weights: FNV-1a over every tensor's name, shape and
    /// a strided sample of up to 4096 of its values. It tells bases apart (another
    /// checkpoint, another training run) at a cost of microseconds, not a full hash of gigabytes.
    ///
    /// A quantized model answers with the fingerprint of the f32 weights it was made from.
    pub fn fingerprint(&self) -> String {
        if let Some(q) = &self.quantization {
            return q.base_fingerprint.clone();
        }
        fingerprint_of(
            self.named_tensors()
                .iter()
                .map(|(name, t)| FingerprintPart::of(name, t))
                .collect(),
        )
    }
}

/// What [`Moonbeam::fingerprint`] reads of one tensor: its name, its shape and a strided
/// sample of up to 4096 of its f32 values (as bits).
#[derive(Debug, Clone, PartialEq)]
pub struct FingerprintPart {
    name: String,
    dims: Vec<usize>,
    samples: Vec<u32>,
}

impl FingerprintPart {
    pub fn of(name: &str, t: &candle_core::Tensor) -> Self {
        let mut samples = Vec::new();
        let _ = crate::kernels::with_f32(t, |data| {
            let step = (data.len() / 4096).max(1);
            samples.extend(data.iter().step_by(step).map(|v| v.to_bits()));
            Ok(())
        });
        FingerprintPart {
            name: name.to_owned(),
            dims: t.dims().to_vec(),
            samples,
        }
    }
}

/// FNV-1a over the parts in name order: the base fingerprint of a model with these tensors,
/// whether they were read from a model or noted one by one while loading it.
pub fn fingerprint_of(mut parts: Vec<FingerprintPart>) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    parts.sort_by(|a, b| a.name.cmp(&b.name));
    for part in parts {
        eat(part.name.as_bytes());
        for d in &part.dims {
            eat(&(*d as u64).to_le_bytes());
        }
        for v in &part.samples {
            eat(&v.to_le_bytes());
        }
    }
    format!("{h:016x}")
}
