//! The checkpoint's modules: the one place where each tensor's name and shape is written.
//!
//! Loading ([`crate::Moonbeam::from_store`]), the list of expected tensors, saving
//! ([`crate::Moonbeam::named_tensors`]) and the LoRA targets ([`crate::lora::Target`]) all
//! go through [`Module`], so a name can only be wrong everywhere at once, and the golden
//! checkpoint tests catch that. It depends on the config only, so both [`crate::model`] and
//! [`crate::lora`] build on it.

use crate::config::Config;

/// The FME attributes in checkpoint order: onset, duration, octave, pitch class, velocity.
pub const FME_NAMES: [&str; 5] = ["onset", "dur", "octave", "pitch", "velocity"];

/// A projection inside a decoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proj {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

/// One module of a checkpoint: a linear layer, a GRU layer or a single tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Module {
    /// FME attribute `k`'s translation bias, `(1, d)`.
    FmeBias(usize),
    /// FME attribute `k`'s linear map, `d → d` with bias.
    FmeLinear(usize),
    /// The instrument embedding table, `(instrument vocab, d)`.
    Instrument,
    /// SOS and EOS rows, `(2, hidden)`.
    Supplementary,
    MlpIn,
    MlpOut,
    /// A projection of decoder layer `i`.
    Proj(usize, Proj),
    InputNorm(usize),
    PostAttentionNorm(usize),
    /// The final norm.
    Norm,
    /// GRU layer `l` of the note head: input and hidden weights and biases, gates `[r; z; n]`.
    Gru(usize),
    FcOut,
    /// The note head's input embedding, `(decode vocab, gru hidden)`.
    DecoderEmbedding,
    SummaryProjection,
    LmHead,
}

/// What a module holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    Tensor(Vec<usize>),
    Linear {
        out: usize,
        input: usize,
        bias: bool,
    },
    /// A PyTorch GRU layer of `hidden` units fed `hidden` inputs.
    Gru {
        hidden: usize,
    },
}

impl Module {
    /// The modules of decoder layer `i`, in checkpoint order.
    pub fn layer(i: usize) -> [Module; 9] {
        use Proj::*;
        [
            Module::Proj(i, Q),
            Module::Proj(i, K),
            Module::Proj(i, V),
            Module::Proj(i, O),
            Module::Proj(i, Gate),
            Module::Proj(i, Up),
            Module::Proj(i, Down),
            Module::InputNorm(i),
            Module::PostAttentionNorm(i),
        ]
    }

    /// Every module of a checkpoint for `cfg`, in checkpoint order.
    pub fn all(cfg: &Config) -> Vec<Module> {
        let mut out = Vec::new();
        for k in 0..FME_NAMES.len() {
            out.extend([Module::FmeBias(k), Module::FmeLinear(k)]);
        }
        out.extend([
            Module::Instrument,
            Module::Supplementary,
            Module::MlpIn,
            Module::MlpOut,
        ]);
        for i in 0..cfg.n_layers {
            out.extend(Module::layer(i));
        }
        out.push(Module::Norm);
        out.extend((0..cfg.gru_layers).map(Module::Gru));
        out.extend([
            Module::FcOut,
            Module::DecoderEmbedding,
            Module::SummaryProjection,
            Module::LmHead,
        ]);
        out
    }

    /// The module's name in the official checkpoint: a linear layer's prefix (without
    /// `.weight`), a tensor's full name.
    pub fn name(self) -> String {
        match self {
            Module::FmeBias(k) => format!("model.{}_embedding.translation_bias", FME_NAMES[k]),
            Module::FmeLinear(k) => format!("model.{}_embedding.linear_fme", FME_NAMES[k]),
            Module::Instrument => "model.instrument_embedding.embedding.weight".into(),
            Module::Supplementary => "model.supplementary_embedding.weight".into(),
            Module::MlpIn => "model.supplementary_MLP.0".into(),
            Module::MlpOut => "model.supplementary_MLP.2".into(),
            Module::Proj(i, proj) => {
                let (block, name) = match proj {
                    Proj::Q => ("self_attn", "q_proj"),
                    Proj::K => ("self_attn", "k_proj"),
                    Proj::V => ("self_attn", "v_proj"),
                    Proj::O => ("self_attn", "o_proj"),
                    Proj::Gate => ("mlp", "gate_proj"),
                    Proj::Up => ("mlp", "up_proj"),
                    Proj::Down => ("mlp", "down_proj"),
                };
                format!("model.layers.{i}.{block}.{name}")
            }
            Module::InputNorm(i) => format!("model.layers.{i}.input_layernorm.weight"),
            Module::PostAttentionNorm(i) => {
                format!("model.layers.{i}.post_attention_layernorm.weight")
            }
            Module::Norm => "model.norm.weight".into(),
            Module::Gru(_) => "decoder.gru".into(),
            Module::FcOut => "decoder.fc_out".into(),
            Module::DecoderEmbedding => "decoder_embedding.weight".into(),
            Module::SummaryProjection => "summary_projection".into(),
            Module::LmHead => "lm_head".into(),
        }
    }

    /// What the module holds for `cfg`.
    pub fn shape(self, cfg: &Config) -> Shape {
        let h = cfg.hidden_size;
        let d = cfg.attr_dim();
        let kv = cfg.n_kv_heads * cfg.head_dim();
        let g = cfg.gru_hidden;
        let m = cfg.intermediate_size;
        let linear = |out, input, bias| Shape::Linear { out, input, bias };
        match self {
            Module::FmeBias(_) => Shape::Tensor(vec![1, d]),
            Module::FmeLinear(_) => linear(d, d, true),
            Module::Instrument => Shape::Tensor(vec![cfg.vocab[4], d]),
            Module::Supplementary => Shape::Tensor(vec![2, h]),
            Module::MlpIn => linear(h / 2, h, true),
            Module::MlpOut => linear(h, h / 2, true),
            Module::Proj(_, proj) => match proj {
                Proj::Q | Proj::O => linear(h, h, false),
                Proj::K | Proj::V => linear(kv, h, false),
                Proj::Gate | Proj::Up => linear(m, h, false),
                Proj::Down => linear(h, m, false),
            },
            Module::InputNorm(_) | Module::PostAttentionNorm(_) | Module::Norm => {
                Shape::Tensor(vec![h])
            }
            Module::Gru(_) => Shape::Gru { hidden: g },
            Module::FcOut => linear(g, g, true),
            Module::DecoderEmbedding => Shape::Tensor(vec![cfg.decode_vocab_size, g]),
            Module::SummaryProjection => linear(g, h, false),
            Module::LmHead => linear(cfg.decode_vocab_size, g, false),
        }
    }

    /// The name and shape of each tensor of the module, in checkpoint order: a linear's
    /// weight `(out, in)` then its bias; a GRU's `weight_ih`, `weight_hh`, `bias_ih`, `bias_hh`.
    pub fn tensors(self, cfg: &Config) -> Vec<(String, Vec<usize>)> {
        let name = self.name();
        match self.shape(cfg) {
            Shape::Tensor(shape) => vec![(name, shape)],
            Shape::Linear { out, input, bias } => {
                let mut t = vec![(format!("{name}.weight"), vec![out, input])];
                if bias {
                    t.push((format!("{name}.bias"), vec![out]));
                }
                t
            }
            Shape::Gru { hidden: g } => {
                let Module::Gru(l) = self else {
                    unreachable!("only GRU modules have a GRU shape")
                };
                vec![
                    (format!("{name}.weight_ih_l{l}"), vec![3 * g, g]),
                    (format!("{name}.weight_hh_l{l}"), vec![3 * g, g]),
                    (format!("{name}.bias_ih_l{l}"), vec![3 * g]),
                    (format!("{name}.bias_hh_l{l}"), vec![3 * g]),
                ]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_shapes_match_the_config() {
        let cfg = Config::small();
        let tensors: Vec<_> = Module::all(&cfg)
            .into_iter()
            .flat_map(|m| m.tensors(&cfg))
            .collect();
        let names: std::collections::HashSet<_> = tensors.iter().map(|(n, _)| n).collect();
        assert_eq!(names.len(), tensors.len(), "a tensor name is written twice");
        let q = &tensors
            .iter()
            .find(|(n, _)| n == "model.layers.3.self_attn.q_proj.weight")
            .expect("layer 3's q_proj")
            .1;
        assert_eq!(q, &vec![cfg.hidden_size, cfg.hidden_size]);
        assert!(names.contains(&"decoder.gru.bias_hh_l0".to_string()));
    }
}
