//! The plugin's parameters.
//!
//! Parameter ids are host-facing data: at most 6 characters, and never renamed (hosts store
//! automation and presets by them). Stepped parameters (bool, int, enum) are given ranges and
//! defaults whose normalized value is exact in `f32`, because nice-plug reports a stepped
//! default to CLAP hosts as `normalized * step_count`, and hosts truncate it: a default of
//! 2 in `1..=16` would come out as 1.99999 and be read as 1 (see shared/plugin-notes.md).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use nice_plug::prelude::*;

use crate::library::{ModelChoice, StyleChoice, MAX_STYLES};
use crate::protocol::GenParams;

/// What makes the plugin play.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Answer when the player has been silent for the silence threshold; stop when they play.
    #[id = "callr"]
    #[name = "Call and response"]
    CallResponse,
    /// Answer only when the trigger button or parameter is pressed.
    #[id = "manual"]
    #[name = "Manual trigger"]
    Manual,
    /// Keep generating ahead while the transport plays.
    #[id = "cont"]
    #[name = "Continuous"]
    Continuous,
}

#[derive(Params)]
pub struct ContinuoParams {
    /// Passes MIDI through unchanged and generates nothing.
    #[id = "bypass"]
    pub bypass: BoolParam,
    #[id = "mode"]
    pub mode: EnumParam<Mode>,
    /// Forwards the player's notes to the MIDI output.
    #[id = "thru"]
    pub thru: BoolParam,
    /// Plays the player's and the generated notes on the built-in voice.
    #[id = "voice"]
    pub voice: BoolParam,
    /// MIDI channel of the generated notes, 1 to 16.
    #[id = "outch"]
    pub out_channel: IntParam,
    /// Answer length in bars; 0 = as long as the phrase that was played.
    #[id = "bars"]
    pub answer_bars: IntParam,
    /// Silence, in beats, after which call-and-response answers.
    #[id = "silenc"]
    pub silence_beats: FloatParam,
    #[id = "temp"]
    pub temperature: FloatParam,
    #[id = "topp"]
    pub top_p: FloatParam,
    #[id = "seed"]
    pub seed: IntParam,
    /// How strongly the chosen style (LoRA) applies.
    #[id = "stystr"]
    pub style_strength: FloatParam,
    #[id = "velsc"]
    pub velocity_scale: FloatParam,
    #[id = "pitlo"]
    pub pitch_low: IntParam,
    #[id = "pithi"]
    pub pitch_high: IntParam,
    /// The most generated notes per beat.
    #[id = "dens"]
    pub density_cap: FloatParam,
    /// A rising edge asks for an answer now (also "regenerate" while an answer plays).
    #[id = "trig"]
    pub trigger: BoolParam,
    /// The style: 0 = the plain base model, `n` = entry `n` of the style menu (see
    /// [`crate::library`]). The chosen style's path is saved apart ([`Self::style_choice`]) and
    /// wins on restore.
    #[id = "style"]
    pub style: IntParam,

    /// The chosen style by path and name.
    #[persist = "style-choice"]
    pub style_choice: Arc<Mutex<StyleChoice>>,
    /// The user's folder of styles and exported answers; `None`: the default folder.
    #[persist = "user-folder"]
    pub user_folder: Arc<Mutex<Option<PathBuf>>>,
    /// The chosen base model.
    #[persist = "model"]
    pub model: Arc<Mutex<ModelChoice>>,
    /// The style menu's names, for the `style` parameter's text. Filled by the loader thread.
    pub style_names: Arc<RwLock<Vec<String>>>,
}

fn style_name(names: &RwLock<Vec<String>>, value: i32) -> String {
    if value <= 0 {
        return "Base model (no style)".to_string();
    }
    // Never waits: the loader holds the lock only to replace the list.
    match names.try_read() {
        Ok(names) => names
            .get(value as usize - 1)
            .cloned()
            .unwrap_or_else(|| format!("Style {value} (none)")),
        Err(_) => format!("Style {value}"),
    }
}

fn style_value(names: &RwLock<Vec<String>>, text: &str) -> Option<i32> {
    let text = text.trim();
    if text.to_lowercase().starts_with("base") {
        return Some(0);
    }
    if let Ok(names) = names.try_read() {
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(text)) {
            return Some(i as i32 + 1);
        }
    }
    text.trim_start_matches("Style").trim().parse().ok()
}

fn note_name(key: i32) -> String {
    const NAMES: [&str; 12] = [
        "C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B",
    ];
    format!(
        "{}{} ({key})",
        NAMES[key.rem_euclid(12) as usize],
        key.div_euclid(12) - 1
    )
}

impl Default for ContinuoParams {
    fn default() -> Self {
        let style_names: Arc<RwLock<Vec<String>>> = Arc::default();
        Self {
            bypass: BoolParam::new("Bypass", false).make_bypass(),
            mode: EnumParam::new("Mode", Mode::CallResponse),
            thru: BoolParam::new("Thru", true),
            voice: BoolParam::new("Built-in voice", true),
            out_channel: IntParam::new("Output channel", 1, IntRange::Linear { min: 1, max: 16 }),
            answer_bars: IntParam::new("Answer length", 2, IntRange::Linear { min: 0, max: 16 })
                .with_value_to_string(Arc::new(|bars| match bars {
                    0 => "as played".to_string(),
                    1 => "1 bar".to_string(),
                    n => format!("{n} bars"),
                }))
                .with_string_to_value(Arc::new(|s| {
                    let s = s.trim();
                    if s.starts_with("as") {
                        Some(0)
                    } else {
                        s.split_whitespace().next()?.parse().ok()
                    }
                })),
            silence_beats: FloatParam::new(
                "Silence threshold",
                1.0,
                FloatRange::Linear {
                    min: 0.25,
                    max: 8.0,
                },
            )
            .with_step_size(0.25)
            .with_unit(" beats"),
            temperature: FloatParam::new(
                "Temperature",
                1.0,
                FloatRange::Linear { min: 0.1, max: 2.0 },
            )
            .with_step_size(0.01),
            top_p: FloatParam::new(
                "Top-p",
                0.95,
                FloatRange::Linear {
                    min: 0.05,
                    max: 1.0,
                },
            )
            .with_step_size(0.01),
            seed: IntParam::new(
                "Seed",
                0,
                IntRange::Linear {
                    min: 0,
                    max: 65_535,
                },
            ),
            style_strength: FloatParam::new(
                "Style strength",
                1.0,
                FloatRange::Linear { min: 0.0, max: 1.5 },
            )
            .with_step_size(0.01),
            velocity_scale: FloatParam::new(
                "Velocity scale",
                1.0,
                FloatRange::Linear { min: 0.0, max: 2.0 },
            )
            .with_step_size(0.01),
            pitch_low: IntParam::new("Lowest note", 0, IntRange::Linear { min: 0, max: 127 })
                .with_value_to_string(Arc::new(note_name)),
            pitch_high: IntParam::new("Highest note", 127, IntRange::Linear { min: 0, max: 127 })
                .with_value_to_string(Arc::new(note_name)),
            density_cap: FloatParam::new(
                "Density cap",
                8.0,
                FloatRange::Linear {
                    min: 0.5,
                    max: 16.0,
                },
            )
            .with_step_size(0.5)
            .with_unit(" notes/beat"),
            trigger: BoolParam::new("Trigger", false),
            style: {
                let (to_text, from_text) = (style_names.clone(), style_names.clone());
                IntParam::new(
                    "Style",
                    0,
                    IntRange::Linear {
                        min: 0,
                        max: MAX_STYLES as i32,
                    },
                )
                .with_value_to_string(Arc::new(move |v| style_name(&to_text, v)))
                .with_string_to_value(Arc::new(move |t| style_value(&from_text, t)))
            },
            style_choice: Arc::default(),
            user_folder: Arc::default(),
            model: Arc::default(),
            style_names,
        }
    }
}

/// A plain copy of the parameter values for one block. Read on the audio thread.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    pub bypass: bool,
    pub mode: Mode,
    pub thru: bool,
    pub voice: bool,
    /// Zero-based MIDI channel of generated notes.
    pub out_channel: u8,
    pub answer_bars: u32,
    pub silence_beats: f64,
    pub trigger: bool,
    pub gen: GenParams,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            bypass: false,
            mode: Mode::CallResponse,
            thru: true,
            voice: true,
            out_channel: 0,
            answer_bars: 2,
            silence_beats: 1.0,
            trigger: false,
            gen: GenParams::default(),
        }
    }
}

impl ContinuoParams {
    /// Reads every parameter. Called on the audio thread; does not allocate.
    pub fn settings(&self) -> Settings {
        Settings {
            bypass: self.bypass.value(),
            mode: self.mode.value(),
            thru: self.thru.value(),
            voice: self.voice.value(),
            out_channel: (self.out_channel.value().clamp(1, 16) - 1) as u8,
            answer_bars: self.answer_bars.value().max(0) as u32,
            silence_beats: f64::from(self.silence_beats.value()),
            trigger: self.trigger.value(),
            gen: GenParams {
                temperature: self.temperature.value(),
                top_p: self.top_p.value(),
                seed: self.seed.value().max(0) as u32,
                style_strength: self.style_strength.value(),
                velocity_scale: self.velocity_scale.value(),
                pitch_low: self.pitch_low.value().clamp(0, 127) as u8,
                pitch_high: self.pitch_high.value().clamp(0, 127) as u8,
                density_cap_per_beat: self.density_cap.value(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_settings_default() {
        assert_eq!(ContinuoParams::default().settings(), Settings::default());
    }

    #[test]
    fn ids_are_short_and_unique() {
        let params = ContinuoParams::default();
        let ids: Vec<String> = params
            .param_map()
            .into_iter()
            .map(|(id, _, _)| id)
            .collect();
        assert_eq!(ids.len(), 17);
        for id in &ids {
            assert!(id.len() <= 6, "{id}");
        }
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), ids.len());
    }

    #[test]
    fn stepped_defaults_are_exact_for_clap() {
        // The same computation nice-plug's CLAP wrapper does for `clap_param_info.default_value`.
        let params = ContinuoParams::default();
        for (id, ptr, _) in params.param_map() {
            // SAFETY: the pointers come from `params`, which outlives this loop.
            let (steps, default) = unsafe { (ptr.step_count(), ptr.default_normalized_value()) };
            if let Some(steps) = steps {
                let clap_default = f64::from(default) * steps as f64;
                assert_eq!(clap_default, clap_default.round(), "{id}: {clap_default}");
            }
        }
    }
}
