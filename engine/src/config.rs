//! Model configuration: the official Moonbeam JSON schema and the plain config the engine uses.
//!
//! [`ConfigFile`] mirrors `model_config*.json` of the official repository (serde, with
//! `Option`s for keys that older files lack). It converts once, with validation, into
//! [`Config`], which the rest of the engine uses and which has no serde at all.

use std::path::Path;

use serde::Deserialize;

use crate::error::ConfigError;

/// One attribute's input embedding as written in the JSON (`{"method": "FME", "base": 199999}`).
#[derive(Debug, Clone, Deserialize)]
pub struct EmbeddingFile {
    pub method: String,
    pub base: Option<f64>,
    pub vocab_size: Option<usize>,
}

/// The `decoder` section: only the GRU width and depth are used by the model.
#[derive(Debug, Clone, Deserialize)]
pub struct DecoderFile {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    #[serde(rename = "_attn_implementation")]
    pub attn_implementation: Option<String>,
}

/// The official config file, field for field (unused keys are ignored).
#[derive(Debug, Clone, Deserialize)]
pub struct ConfigFile {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    pub num_hidden_layers: usize,
    pub rms_norm_eps: f64,
    pub hidden_act: Option<String>,
    pub attention_bias: Option<bool>,
    pub mlp_bias: Option<bool>,
    pub max_len: Option<usize>,
    pub rope_theta_onset: f64,
    pub rope_theta_dur: f64,
    pub rope_theta_octave: f64,
    pub rope_theta_pitch: f64,
    pub rope_theta_velocity: f64,
    pub onset_vocab_size: usize,
    pub dur_vocab_size: usize,
    pub octave_vocab_size: usize,
    pub pitch_class_vocab_size: usize,
    pub instrument_vocab_size: usize,
    pub velocity_vocab_size: usize,
    pub onset_embedding: EmbeddingFile,
    pub dur_embedding: EmbeddingFile,
    pub octave_embedding: EmbeddingFile,
    pub pitch_embedding: EmbeddingFile,
    pub instrument_embedding: EmbeddingFile,
    pub velocity_embedding: EmbeddingFile,
    pub decode_vocab_size: usize,
    pub decoder: DecoderFile,
    pub sos_token: Option<i64>,
    pub eos_token: Option<i64>,
}

/// The six attributes of a compound note, in column order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attribute {
    /// Input: absolute onset. Output: timeshift from the previous note.
    Onset = 0,
    Duration = 1,
    Octave = 2,
    PitchClass = 3,
    Instrument = 4,
    Velocity = 5,
}

impl Attribute {
    pub const ALL: [Attribute; 6] = [
        Attribute::Onset,
        Attribute::Duration,
        Attribute::Octave,
        Attribute::PitchClass,
        Attribute::Instrument,
        Attribute::Velocity,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Attribute::Onset => "timeshift",
            Attribute::Duration => "duration",
            Attribute::Octave => "octave",
            Attribute::PitchClass => "pitch_class",
            Attribute::Instrument => "instrument",
            Attribute::Velocity => "velocity",
        }
    }
}

/// The plain, validated model configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub n_layers: usize,
    pub rms_norm_eps: f64,
    /// Generation cap on the sequence length, SOS included.
    pub max_len: usize,
    /// Rotary bases for onset, duration, octave, pitch class, velocity.
    pub rope_theta: [f64; 5],
    /// Vocabulary sizes per attribute (timeshift/onset, duration, octave, pitch class, instrument, velocity).
    pub vocab: [usize; 6],
    /// FME bases for onset, duration, octave, pitch class, velocity (instrument is a lookup table).
    pub fme_base: [f64; 5],
    pub decode_vocab_size: usize,
    pub gru_hidden: usize,
    pub gru_layers: usize,
}

impl ConfigFile {
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        serde_json::from_str(text).map_err(ConfigError::Json)
    }

    pub fn into_config(self) -> Result<Config, ConfigError> {
        let bad = |msg: String| Err(ConfigError::Invalid(msg));
        let n_kv_heads = self.num_key_value_heads.unwrap_or(self.num_attention_heads);
        if self.num_attention_heads != 12 || n_kv_heads != 6 {
            return bad(format!(
                "MRA needs 12 attention heads and 6 key/value heads (one pair per attribute group), got {} and {n_kv_heads}",
                self.num_attention_heads
            ));
        }
        if self.hidden_size == 0 || !self.hidden_size.is_multiple_of(12) {
            return bad(format!(
                "hidden_size {} must be a positive multiple of 12",
                self.hidden_size
            ));
        }
        if !(self.hidden_size / 12).is_multiple_of(2) {
            return bad(format!(
                "head dimension {} must be even for rotary",
                self.hidden_size / 12
            ));
        }
        if self.attention_bias == Some(true) || self.mlp_bias == Some(true) {
            return bad(
                "attention_bias and mlp_bias are not supported (the official models have none)"
                    .into(),
            );
        }
        if let Some(act) = &self.hidden_act {
            if act != "silu" {
                return bad(format!(
                    "hidden_act {act:?} is not supported, only \"silu\""
                ));
            }
        }
        let fme = [
            ("onset_embedding", &self.onset_embedding),
            ("dur_embedding", &self.dur_embedding),
            ("octave_embedding", &self.octave_embedding),
            ("pitch_embedding", &self.pitch_embedding),
            ("velocity_embedding", &self.velocity_embedding),
        ];
        let mut fme_base = [0.0; 5];
        for (i, (name, e)) in fme.iter().enumerate() {
            match (e.method.as_str(), e.base) {
                ("FME", Some(base)) if base > 1.0 => fme_base[i] = base,
                _ => {
                    return bad(format!(
                        "{name} must be {{\"method\": \"FME\", \"base\": > 1}}, got {e:?}"
                    ))
                }
            }
        }
        if self.instrument_embedding.method != "WE" {
            return bad(format!(
                "instrument_embedding must use method \"WE\", got {:?}",
                self.instrument_embedding.method
            ));
        }
        let vocab = [
            self.onset_vocab_size,
            self.dur_vocab_size,
            self.octave_vocab_size,
            self.pitch_class_vocab_size,
            self.instrument_vocab_size,
            self.velocity_vocab_size,
        ];
        let minimum = [3, 3, 13, 14, 131, 130];
        for (i, (&v, &min)) in vocab.iter().zip(minimum.iter()).enumerate() {
            if v < min {
                return bad(format!(
                    "{} vocabulary {v} is below the minimum {min}",
                    Attribute::ALL[i].name()
                ));
            }
        }
        let expected_decode = 1 + vocab.iter().sum::<usize>();
        if self.decode_vocab_size != expected_decode {
            return bad(format!(
                "decode_vocab_size {} does not equal 1 + the sum of the attribute vocabularies ({expected_decode})",
                self.decode_vocab_size
            ));
        }
        if let Some(imp) = &self.decoder.attn_implementation {
            if imp != "GRU" {
                return bad(format!(
                    "decoder._attn_implementation {imp:?} is not supported, only \"GRU\""
                ));
            }
        }
        if self.decoder.hidden_size == 0 || self.decoder.num_hidden_layers == 0 {
            return bad("the GRU decoder needs a positive width and depth".into());
        }
        if self.sos_token.unwrap_or(-1) != -1 || self.eos_token.unwrap_or(-2) != -2 {
            return bad("sos_token must be -1 and eos_token -2".into());
        }
        if self.num_hidden_layers == 0 || self.intermediate_size == 0 {
            return bad(format!(
                "the transformer needs at least one layer and a positive intermediate_size, got \
                 {} layers and {}",
                self.num_hidden_layers, self.intermediate_size
            ));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return bad(format!(
                "rms_norm_eps {} must be a small positive number (the official configs use 1e-5)",
                self.rms_norm_eps
            ));
        }
        for (name, theta) in [
            ("rope_theta_onset", self.rope_theta_onset),
            ("rope_theta_dur", self.rope_theta_dur),
            ("rope_theta_octave", self.rope_theta_octave),
            ("rope_theta_pitch", self.rope_theta_pitch),
            ("rope_theta_velocity", self.rope_theta_velocity),
        ] {
            if !(theta.is_finite() && theta > 1.0) {
                return bad(format!("{name} {theta} must be a finite number above 1"));
            }
        }
        if self.max_len.is_some_and(|m| m < 3) {
            return bad("max_len must hold at least SOS, one note and EOS (3)".into());
        }
        Ok(Config {
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            n_heads: self.num_attention_heads,
            n_kv_heads,
            n_layers: self.num_hidden_layers,
            rms_norm_eps: self.rms_norm_eps,
            max_len: self.max_len.unwrap_or(1024).max(2),
            rope_theta: [
                self.rope_theta_onset,
                self.rope_theta_dur,
                self.rope_theta_octave,
                self.rope_theta_pitch,
                self.rope_theta_velocity,
            ],
            vocab,
            fme_base,
            decode_vocab_size: self.decode_vocab_size,
            gru_hidden: self.decoder.hidden_size,
            gru_layers: self.decoder.num_hidden_layers,
        })
    }
}

impl Config {
    /// Reads and validates an official-schema JSON config.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let io = |source| ConfigError::Io {
            path: path.to_owned(),
            source,
        };
        let bytes = crate::files::read_input(path, Some(crate::files::MAX_CONFIG_BYTES), "config")
            .map_err(io)?;
        let text = String::from_utf8(bytes).map_err(|_| {
            io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "it is not UTF-8 text",
            ))
        })?;
        ConfigFile::from_json(&text)?.into_config()
    }

    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        ConfigFile::from_json(text)?.into_config()
    }

    /// Moonbeam Small (309M), `model_config_small.json`.
    pub fn small() -> Self {
        Self::official(1536, 5376, 9, 1026, 1024, 2)
    }

    /// Moonbeam Medium (839M), `model_config.json`.
    pub fn medium() -> Self {
        Self::official(1920, 6720, 15, 4099, 1536, 4)
    }

    fn official(
        hidden_size: usize,
        intermediate_size: usize,
        n_layers: usize,
        time_vocab: usize,
        gru_hidden: usize,
        gru_layers: usize,
    ) -> Self {
        let vocab = [time_vocab, time_vocab, 13, 14, 131, 130];
        Config {
            hidden_size,
            intermediate_size,
            n_heads: 12,
            n_kv_heads: 6,
            n_layers,
            rms_norm_eps: 1e-5,
            max_len: 1024,
            rope_theta: [199999.0, 1031.0, 19.0, 20.0, 131.0],
            vocab,
            fme_base: [199999.0, 1031.0, 19.0, 20.0, 131.0],
            decode_vocab_size: 1 + vocab.iter().sum::<usize>(),
            gru_hidden,
            gru_layers,
        }
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.n_heads
    }

    /// Width of one attribute's slice of the input embedding (`hidden / 6`).
    pub fn attr_dim(&self) -> usize {
        self.hidden_size / 6
    }

    /// Offsets of each attribute inside the flat decoder vocabulary (spec §1.4).
    pub fn decode_offsets(&self) -> [usize; 6] {
        let mut offsets = [0; 6];
        let mut next = 1;
        for (i, v) in self.vocab.iter().enumerate() {
            offsets[i] = next;
            next += v;
        }
        offsets
    }

    /// The SOS code of attribute `i` (`V - 2`).
    pub fn sos_code(&self, i: usize) -> i64 {
        self.vocab[i] as i64 - 2
    }

    /// The EOS code of attribute `i` (`V - 1`).
    pub fn eos_code(&self, i: usize) -> i64 {
        self.vocab[i] as i64 - 1
    }

    /// Whether decoded values hold an EOS code in any attribute (the end of the piece).
    pub fn is_eos(&self, values: &[i64; 6]) -> bool {
        (0..6).any(|a| values[a] == self.eos_code(a))
    }

    /// Number of parameters a checkpoint of this config holds.
    pub fn n_params(&self) -> usize {
        let h = self.hidden_size;
        let d = self.attr_dim();
        let kv = self.n_kv_heads * self.head_dim();
        let g = self.gru_hidden;
        let fme = 5 * (d + d * d + d);
        let instr = self.vocab[4] * d;
        let supp = 2 * h + (h * (h / 2) + h / 2) + (h / 2 * h + h);
        let layer = 2 * h * h + 2 * h * kv + 3 * h * self.intermediate_size + 2 * h;
        let gru = self.gru_layers * (2 * 3 * g * g + 2 * 3 * g) + g * g + g;
        fme + instr
            + supp
            + self.n_layers * layer
            + h
            + gru
            + 2 * self.decode_vocab_size * g
            + g * h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_parameter_counts_match_the_spec() {
        assert_eq!(Config::small().n_params(), 309_424_128);
        assert_eq!(Config::medium().n_params(), 838_847_744);
        assert_eq!(Config::small().decode_vocab_size, 2341);
        assert_eq!(Config::medium().decode_vocab_size, 8487);
    }

    #[test]
    fn medium_offsets_match_the_spec() {
        assert_eq!(
            Config::medium().decode_offsets(),
            [1, 4100, 8199, 8212, 8226, 8357]
        );
        assert_eq!(
            Config::small().decode_offsets(),
            [1, 1027, 2053, 2066, 2080, 2211]
        );
    }
}
