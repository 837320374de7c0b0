//! Reading checkpoints: safetensors with the official parameter names, or the
//! official release container (`torch.save({'model_state_dict': ...})` with the
//! DDP `module.` prefix, bf16), read directly from the `.pt` file.
//!
//! Every tensor is checked against the shape the config implies before the model
//! is built, so a wrong file yields an error naming the tensor, never a panic.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::error::WeightsError;
use crate::model::linear::Weight;
use crate::quant::{QFormat, QMatrix};

/// All tensors of a checkpoint, by their official name (without `module.`).
pub struct WeightStore {
    tensors: HashMap<String, Tensor>,
    /// The safetensors header's metadata (empty for `.pt` files).
    metadata: HashMap<String, String>,
}

impl WeightStore {
    /// Opens a `.safetensors` file or a PyTorch `.pt` checkpoint (detected by content, not extension).
    pub fn open(path: &Path) -> Result<Self, WeightsError> {
        let io = |source| WeightsError::Io {
            path: path.to_owned(),
            source,
        };
        crate::files::check_input(path, None, "weights").map_err(io)?;
        let mut head = [0u8; 9];
        let file_len = std::fs::metadata(path).map_err(io)?.len();
        {
            use std::io::Read;
            let f = std::fs::File::open(path).map_err(io)?;
            let n = f.take(9).read(&mut head).map_err(io)?;
            if n < 8 {
                return Err(WeightsError::Format {
                    path: path.to_owned(),
                    reason: format!("file is only {n} bytes long"),
                });
            }
        }
        // A safetensors file opens with its header's length and then the header's JSON. That
        // test comes first: a length whose low byte is 0x80 looks like a pickle's first byte.
        let header_len = u64::from_le_bytes([
            head[0], head[1], head[2], head[3], head[4], head[5], head[6], head[7],
        ]);
        let safetensors =
            header_len > 0 && header_len <= file_len.saturating_sub(8) && head[8] == b'{';
        // A zip container, or a legacy pickle (PROTO opcode 0x80 with protocol 2 to 5).
        let pickle = !safetensors
            && (head.starts_with(b"PK\x03\x04") || (head[0] == 0x80 && (2..=5).contains(&head[1])));
        let format_err = |reason: String| WeightsError::Format {
            path: path.to_owned(),
            reason,
        };
        let mut metadata = HashMap::new();
        let tensors: Vec<(String, Tensor)> = if pickle {
            // A torch.save pickle (zip container, or the legacy format).
            let with_key = candle_core::pickle::read_all_with_key(path, Some("model_state_dict"));
            match with_key {
                Ok(t) if !t.is_empty() => t,
                _ => candle_core::pickle::read_all(path)
                    .map_err(|e| format_err(format!("cannot read the PyTorch checkpoint: {e}")))?,
            }
        } else {
            if header_len == 0 || header_len > file_len.saturating_sub(8) {
                return Err(format_err(format!(
                    "the safetensors header claims {header_len} bytes but the file has {file_len}"
                )));
            }
            // SAFETY: the file is mapped read-only and copied into owned tensors before
            // this function returns; nothing else in this process writes to it.
            let mmap = unsafe { candle_core::safetensors::MmapedSafetensors::new(path) }
                .map_err(|e| format_err(format!("invalid safetensors: {e}")))?;
            metadata = read_metadata(path).map_err(format_err)?;
            let mut out = Vec::new();
            for (name, _) in mmap.tensors() {
                let t = mmap
                    .load(&name, &Device::Cpu)
                    .map_err(|e| format_err(format!("tensor `{name}`: {e}")))?;
                out.push((name, t));
            }
            out
        };
        if tensors.is_empty() {
            return Err(format_err("it holds no tensors".into()));
        }
        let tensors = tensors
            .into_iter()
            .map(|(name, t)| {
                (
                    name.strip_prefix("module.")
                        .map(str::to_owned)
                        .unwrap_or(name),
                    t,
                )
            })
            .collect();
        Ok(WeightStore { tensors, metadata })
    }

    pub fn from_tensors(tensors: HashMap<String, Tensor>) -> Self {
        WeightStore {
            tensors,
            metadata: HashMap::new(),
        }
    }

    /// A value of the file's safetensors metadata.
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).map(String::as_str)
    }

    /// A linear layer's weight `name` of `shape` `(out, in)`: f32, or quantized where the file
    /// holds `{name}.q8` or `{name}.q4` codes and `{name}.scales` (see [`crate::quant`]).
    pub fn weight(&self, name: &str, shape: &[usize]) -> Result<Weight, WeightsError> {
        for format in [QFormat::Q8, QFormat::Q4] {
            let Some(codes) = self.tensors.get(&format!("{name}.{format}")) else {
                continue;
            };
            let bad = |reason: String| WeightsError::Format {
                path: Default::default(),
                reason: format!("quantized weight `{name}`: {reason}"),
            };
            let &[rows, cols] = shape else {
                return Err(bad(format!("a matrix was expected, not shape {shape:?}")));
            };
            if codes.dtype() != DType::U8 {
                return Err(bad(format!("codes are {:?}, not U8", codes.dtype())));
            }
            let scales = self.get(
                &format!("{name}.scales"),
                &[rows, cols / crate::quant::GROUP],
            )?;
            let codes = codes
                .flatten_all()
                .and_then(|t| t.to_vec1::<u8>())
                .map_err(|e| bad(e.to_string()))?;
            let scales = scales
                .flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(|e| bad(e.to_string()))?;
            let q = QMatrix::from_parts(format, rows, cols, codes, scales)
                .map_err(|e| bad(e.to_string()))?;
            return Ok(Weight::Quant(std::sync::Arc::new(q)));
        }
        Ok(Weight::F32(self.get(name, shape)?))
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// The tensor `name` as contiguous f32, checked against `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor, WeightsError> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| WeightsError::Missing {
                name: name.to_owned(),
                expected: shape.to_vec(),
            })?;
        if t.dims() != shape {
            return Err(WeightsError::Shape {
                name: name.to_owned(),
                expected: shape.to_vec(),
                got: t.dims().to_vec(),
            });
        }
        let t = match t.dtype() {
            DType::F32 => t.clone(),
            DType::BF16 | DType::F16 | DType::F64 => t.to_dtype(DType::F32)?,
            other => {
                return Err(WeightsError::Dtype {
                    name: name.to_owned(),
                    dtype: format!("{other:?}"),
                });
            }
        };
        let t = t.contiguous()?;
        let finite = crate::kernels::with_f32(&t, |data| Ok(data.iter().all(|v| v.is_finite())))?;
        if !finite {
            return Err(WeightsError::NonFinite {
                name: name.to_owned(),
            });
        }
        Ok(t)
    }
}

/// Writes a model's weights as safetensors with the official names, plus a JSON card in the
/// metadata (`continuo.model`) and, for a quantized model, its [`crate::model::Quantization`]
/// (`continuo.quant`; the layout is [`crate::model::Moonbeam::stored_tensors`]). Written to a temporary file and renamed, so a crash never
/// leaves a half-written checkpoint.
pub fn save_weights(
    model: &crate::model::Moonbeam,
    path: &Path,
    card: &serde_json::Value,
) -> Result<(), WeightsError> {
    let tensors = model.stored_tensors()?;
    let mut metadata: HashMap<String, String> = [
        ("continuo.model".to_string(), card.to_string()),
        ("format".to_string(), "pt".to_string()),
    ]
    .into();
    if let Some(q) = &model.quantization {
        let json = serde_json::to_string(q).map_err(|e| WeightsError::Format {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        metadata.insert(crate::model::QUANT_METADATA_KEY.to_string(), json);
    }
    let tmp = path.with_extension("safetensors.partial");
    safetensors::serialize_to_file(
        tensors.iter().map(|(n, t)| (n.as_str(), t)),
        Some(metadata),
        &tmp,
    )
    .map_err(|e| WeightsError::Format {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let io = |source| WeightsError::Io {
        path: path.to_owned(),
        source,
    };
    crate::files::set_default_permissions(&tmp).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(())
}

/// The `__metadata__` of a safetensors file's header.
fn read_metadata(path: &Path) -> Result<HashMap<String, String>, String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|e| e.to_string())?;
    let len = u64::from_le_bytes(len);
    let mut header = Vec::new();
    f.take(len)
        .read_to_end(&mut header)
        .map_err(|e| e.to_string())?;
    let json: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| format!("invalid safetensors header: {e}"))?;
    Ok(json
        .get("__metadata__")
        .and_then(|m| m.as_object())
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default())
}
