//! Reading checkpoints: safetensors with the official parameter names, or the
//! official release container (`torch.save({'model_state_dict': ...})` with the
//! DDP `module.` prefix, bf16), read directly from the `.pt` file.
//!
//! Every tensor is checked against the shape the config implies before the model
//! is built, so a wrong file yields an error naming the tensor, never a panic.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use candle_core::{DType, Device, Tensor};

use crate::error::WeightsError;
use crate::model::linear::Weight;
use crate::quant::{QFormat, QMatrix};
use crate::style::FingerprintPart;

/// Locks `m`, whatever a panic elsewhere left in it (the store's state stays valid).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The tensors of a checkpoint, by their official name (without `module.`), read from the
/// file one at a time as the model asks for them: loading holds the model being built plus
/// the tensor in hand, never a second copy of the whole checkpoint (and no mapping of the
/// file, whose pages would count as the process's memory).
pub struct WeightStore {
    source: Source,
    /// Official name → the name in the file (the release checkpoint adds `module.`).
    names: HashMap<String, String>,
    /// The safetensors header's metadata (empty for `.pt` files).
    metadata: HashMap<String, String>,
    /// While recording ([`WeightStore::record_fingerprint`]), what every f32 tensor handed out
    /// contributes to the base fingerprint.
    recorded: Mutex<Option<Vec<FingerprintPart>>>,
}

enum Source {
    Memory(HashMap<String, Tensor>),
    Safetensors {
        path: PathBuf,
        file: Mutex<std::fs::File>,
        /// Where the tensor data starts in the file (after the header).
        data_start: u64,
        tensors: HashMap<String, StoredTensor>,
    },
    Pth(candle_core::pickle::PthTensors),
}

/// A tensor's entry in a safetensors header.
struct StoredTensor {
    /// `Err(name)`: a dtype this loader does not read.
    dtype: Result<DType, String>,
    shape: Vec<usize>,
    /// Byte range within the data section.
    range: (u64, u64),
}

impl WeightStore {
    /// Opens a `.safetensors` file or a PyTorch `.pt` checkpoint (detected by content, not
    /// extension). Reads the header (or the pickle's index) only; tensors are read on demand.
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
        let (source, file_names, metadata) = if pickle {
            // A torch.save pickle: the release checkpoint keeps its weights under
            // `model_state_dict`; a plain state dict has them at the top.
            let with_key = candle_core::pickle::PthTensors::new(path, Some("model_state_dict"));
            let pth = match with_key {
                Ok(t) if !t.tensor_infos().is_empty() => t,
                _ => candle_core::pickle::PthTensors::new(path, None)
                    .map_err(|e| format_err(format!("cannot read the PyTorch checkpoint: {e}")))?,
            };
            let names: Vec<String> = pth.tensor_infos().keys().cloned().collect();
            (Source::Pth(pth), names, HashMap::new())
        } else {
            if header_len == 0 || header_len > file_len.saturating_sub(8) {
                return Err(format_err(format!(
                    "the safetensors header claims {header_len} bytes but the file has {file_len}"
                )));
            }
            let (tensors, metadata) =
                read_header(path, header_len, file_len - 8 - header_len).map_err(format_err)?;
            let names = tensors.keys().cloned().collect();
            let file = std::fs::File::open(path).map_err(io)?;
            let source = Source::Safetensors {
                path: path.to_owned(),
                file: Mutex::new(file),
                data_start: 8 + header_len,
                tensors,
            };
            (source, names, metadata)
        };
        if file_names.is_empty() {
            return Err(format_err("it holds no tensors".into()));
        }
        let names = file_names
            .into_iter()
            .map(|name| {
                let official = name
                    .strip_prefix("module.")
                    .map(str::to_owned)
                    .unwrap_or_else(|| name.clone());
                (official, name)
            })
            .collect();
        Ok(WeightStore {
            source,
            names,
            metadata,
            recorded: Mutex::new(None),
        })
    }

    pub fn from_tensors(tensors: HashMap<String, Tensor>) -> Self {
        WeightStore {
            names: tensors.keys().map(|n| (n.clone(), n.clone())).collect(),
            source: Source::Memory(tensors),
            metadata: HashMap::new(),
            recorded: Mutex::new(None),
        }
    }

    /// From now on, notes what every f32 tensor handed out by [`Self::get`] contributes to the
    /// base fingerprint, so a model quantized while it loads still knows the fingerprint of
    /// the f32 weights ([`Self::recorded_fingerprint`]).
    pub(crate) fn record_fingerprint(&self) {
        *lock(&self.recorded) = Some(Vec::new());
    }

    /// The fingerprint of the f32 tensors handed out since [`Self::record_fingerprint`].
    pub(crate) fn recorded_fingerprint(&self) -> Option<String> {
        lock(&self.recorded)
            .take()
            .map(crate::style::fingerprint_of)
    }

    /// The tensor stored under the official `name`, as it is in the file; `None` if absent.
    fn raw(&self, name: &str) -> Result<Option<Tensor>, WeightsError> {
        let Some(file_name) = self.names.get(name) else {
            return Ok(None);
        };
        match &self.source {
            Source::Memory(tensors) => Ok(tensors.get(file_name).cloned()),
            Source::Pth(pth) => pth.get(file_name).map_err(|e| WeightsError::Format {
                path: Default::default(),
                reason: format!("tensor `{name}`: {e}"),
            }),
            Source::Safetensors {
                path,
                file,
                data_start,
                tensors,
            } => {
                let Some(stored) = tensors.get(file_name) else {
                    return Ok(None);
                };
                let dtype = stored.dtype.clone().map_err(|dtype| WeightsError::Dtype {
                    name: name.to_owned(),
                    dtype,
                })?;
                let (start, end) = stored.range;
                let read = |into: &mut [u8]| {
                    use std::io::{Read, Seek, SeekFrom};
                    let mut file = lock(file);
                    file.seek(SeekFrom::Start(data_start + start))
                        .and_then(|_| file.read_exact(into))
                        .map_err(|source| WeightsError::Io {
                            path: path.clone(),
                            source,
                        })
                };
                let len = (end - start) as usize;
                // f32 and u8 (most of the bytes) are read straight into the tensor's buffer;
                // other dtypes through one temporary copy.
                let tensor = match dtype {
                    DType::F32 if cfg!(target_endian = "little") => {
                        let mut values = vec![0f32; len / 4];
                        read(bytemuck::cast_slice_mut(&mut values))?;
                        Tensor::from_vec(values, stored.shape.as_slice(), &Device::Cpu)?
                    }
                    DType::U8 => {
                        let mut values = vec![0u8; len];
                        read(&mut values)?;
                        Tensor::from_vec(values, stored.shape.as_slice(), &Device::Cpu)?
                    }
                    _ => {
                        let mut bytes = vec![0u8; len];
                        read(&mut bytes)?;
                        Tensor::from_raw_buffer(&bytes, dtype, &stored.shape, &Device::Cpu)?
                    }
                };
                Ok(Some(tensor))
            }
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
            let Some(codes) = self.raw(&format!("{name}.{format}"))? else {
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
            let scales_name = format!("{name}.scales");
            let scales_shape = [rows, cols / crate::quant::GROUP];
            let scales = self
                .raw(&scales_name)?
                .ok_or_else(|| WeightsError::Missing {
                    name: scales_name.clone(),
                    expected: scales_shape.to_vec(),
                })?;
            if scales.dims() != scales_shape {
                return Err(WeightsError::Shape {
                    name: scales_name,
                    expected: scales_shape.to_vec(),
                    got: scales.dims().to_vec(),
                });
            }
            let codes = codes
                .flatten_all()
                .and_then(|t| t.to_vec1::<u8>())
                .map_err(|e| bad(e.to_string()))?;
            // f16 as written since 2026-12-07; files written before hold f32 scales, rounded
            // here to the nearest f16 (a relative change of at most 2^-11).
            let scales = match scales.dtype() {
                DType::F16 => scales.flatten_all().and_then(|t| t.to_vec1::<half::f16>()),
                DType::F32 => scales
                    .flatten_all()
                    .and_then(|t| t.to_vec1::<f32>())
                    .map(|v| v.into_iter().map(half::f16::from_f32).collect()),
                other => return Err(bad(format!("scales are {other:?}, not F16 or F32"))),
            }
            .map_err(|e| bad(e.to_string()))?;
            let q = QMatrix::from_parts(format, rows, cols, codes, scales)
                .map_err(|e| bad(e.to_string()))?;
            return Ok(Weight::Quant(std::sync::Arc::new(q)));
        }
        Ok(Weight::F32(self.get(name, shape)?))
    }

    /// The official names of the tensors in the file.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The tensor `name` as contiguous f32, checked against `shape`. Read from the file at
    /// each call: the model asks for each tensor once.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor, WeightsError> {
        let t = self.raw(name)?.ok_or_else(|| WeightsError::Missing {
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
        if let Some(parts) = lock(&self.recorded).as_mut() {
            parts.push(FingerprintPart::of(name, &t));
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

/// A safetensors header: the tensors by their name in the file, and the `__metadata__`.
type Header = (HashMap<String, StoredTensor>, HashMap<String, String>);

/// Reads a safetensors header of `header_len` bytes (after the 8-byte length) and checks every
/// tensor's byte range against its dtype and shape and against the `data_len` bytes that
/// follow.
fn read_header(path: &Path, header_len: u64, data_len: u64) -> Result<Header, String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    f.seek(SeekFrom::Start(8)).map_err(|e| e.to_string())?;
    let mut header = Vec::new();
    f.take(header_len)
        .read_to_end(&mut header)
        .map_err(|e| e.to_string())?;
    let json: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| format!("invalid safetensors header: {e}"))?;
    let mut tensors = HashMap::new();
    let mut metadata = HashMap::new();
    for (name, entry) in json {
        if name == "__metadata__" {
            let map = entry
                .as_object()
                .ok_or("invalid safetensors header: `__metadata__` is not an object")?;
            metadata = map
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect();
            continue;
        }
        let bad = |what: &str| format!("invalid safetensors header: tensor `{name}`: {what}");
        let dtype_name = entry
            .get("dtype")
            .and_then(|d| d.as_str())
            .ok_or_else(|| bad("no dtype"))?;
        let shape: Vec<usize> = entry
            .get("shape")
            .and_then(|s| serde_json::from_value(s.clone()).ok())
            .ok_or_else(|| bad("no shape"))?;
        let (start, end): (u64, u64) = entry
            .get("data_offsets")
            .and_then(|o| serde_json::from_value(o.clone()).ok())
            .ok_or_else(|| bad("no data offsets"))?;
        if start > end || end > data_len {
            return Err(bad(&format!(
                "data offsets {start}..{end} outside the {data_len} bytes of data"
            )));
        }
        let dtype = match dtype_name {
            "F32" => Ok(DType::F32),
            "F16" => Ok(DType::F16),
            "BF16" => Ok(DType::BF16),
            "F64" => Ok(DType::F64),
            "U8" => Ok(DType::U8),
            "U32" => Ok(DType::U32),
            "I64" => Ok(DType::I64),
            other => Err(other.to_owned()),
        };
        if let Ok(dtype) = &dtype {
            let bytes = shape
                .iter()
                .try_fold(dtype.size_in_bytes() as u64, |n, &d| {
                    n.checked_mul(d as u64)
                });
            if bytes != Some(end - start) {
                return Err(bad(&format!(
                    "{} bytes of data for {dtype:?} of shape {shape:?}",
                    end - start
                )));
            }
        }
        tensors.insert(
            name,
            StoredTensor {
                dtype,
                shape,
                range: (start, end),
            },
        );
    }
    Ok((tensors, metadata))
}
