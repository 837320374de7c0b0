//! The plugin's parameters.
//!
//! Parameter ids are host-facing data: at most 6 characters, and never renamed (hosts store
//! automation and presets by them). Stepped parameters (bool, int, enum) are given ranges and
//! defaults whose normalized value is exact in `f32`, because nice-plug reports a stepped
//! default to CLAP hosts as `normalized * step_count`, and hosts truncate it: a default of
//! 2 in `1..=16` would come out as 1.99999 and be read as 1 (the
//! `stepped_defaults_are_exact_for_clap` test guards this).
//! That is why the trigger note and controller run from -1 ("none") to 127: 128 steps make
//! every default exact, where the 127 steps of `0..=127` make none but 0 and 127 exact.

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};

use nice_plug::prelude::*;

use serde::{Deserialize, Serialize};

use crate::protocol::{GenParams, Quantize, Scale, PITCH_CLASS_NAMES};

/// The most styles the menu (and the `style` parameter) can hold.
pub const MAX_STYLES: usize = 64;

/// The chosen style, saved with the plugin state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StyleChoice {
    /// The style file or peft folder; `None` for the plain base model.
    pub path: Option<PathBuf>,
    /// Its preset name when it was chosen (shown if the file is gone).
    pub name: String,
}

/// One of the two style slots: A (the `style` parameter) and B (`styleb`); `blend` sets B's
/// share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub const BOTH: [Slot; 2] = [Slot::A, Slot::B];

    pub fn index(self) -> usize {
        match self {
            Slot::A => 0,
            Slot::B => 1,
        }
    }
}

/// The chosen base model, saved with the plugin state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelChoice {
    /// Weights (`.safetensors` or the release `.pt`); `None` for the default model.
    pub weights: Option<PathBuf>,
    /// `small`, `medium` or a config JSON file.
    pub config: String,
    /// Quantize the weights on load (kept in the user's cache after the first time);
    /// `None`: as stored. Missing in projects saved before 2026-12-04.
    #[serde(default)]
    pub quantize: Option<continuo_engine::quant::QFormat>,
}

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

/// Which MIDI input, besides the trigger button and the `trig` parameter (which always work),
/// asks for an answer. A MIDI trigger acts exactly like the button, in every mode: it replaces
/// an answer in progress, in call-and-response it answers at once instead of waiting for the
/// silence, and in continuous mode it regenerates. The trigger events themselves are consumed:
/// not passed through, not played, not part of the played context.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriggerSource {
    #[id = "button"]
    #[name = "Button only"]
    Button,
    /// A note-on of the trigger note, on any channel.
    #[id = "note"]
    #[name = "MIDI note"]
    Note,
    /// The trigger controller rising through 64 (a value of 64 or more after one below), on any
    /// channel.
    #[id = "cc"]
    #[name = "MIDI CC"]
    ControlChange,
    /// The sustain pedal (CC 64) going down.
    #[id = "sustn"]
    #[name = "Sustain pedal"]
    Sustain,
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
    /// The grid generated note starts snap to.
    #[id = "quant"]
    pub quantize: EnumParam<Quantize>,
    /// Swing of the 1/8 and 1/16 grids, 0 to 75 %.
    #[id = "swing"]
    pub swing: IntParam,
    /// The scale lock's root, C to B.
    #[id = "key"]
    pub scale_root: IntParam,
    /// The scale generated pitches are locked to.
    #[id = "scale"]
    pub scale: EnumParam<Scale>,
    /// Which MIDI input triggers an answer, besides the button.
    #[id = "trgsrc"]
    pub trigger_source: EnumParam<TriggerSource>,
    /// The trigger note, -1 = none.
    #[id = "trgnot"]
    pub trigger_note: IntParam,
    /// The trigger controller number, -1 = none.
    #[id = "trgcc"]
    pub trigger_cc: IntParam,
    /// The style: 0 = the plain base model, `n` = entry `n` of the style menu (see
    /// [`crate::library`]). The chosen style's path is saved apart ([`Self::style_choice`]) and
    /// wins on restore.
    #[id = "style"]
    pub style: IntParam,
    /// The second style slot (B), from the same menu as [`Self::style`]; 0 = the plain base.
    /// Its path is saved apart ([`Self::style_b_choice`]).
    #[id = "styleb"]
    pub style_b: IntParam,
    /// The share of style B: A plays at `1 - blend` and B at `blend`, each at its own strength
    /// (times the style strength). Moving it during an answer lands between two notes.
    #[id = "blend"]
    pub blend: FloatParam,

    /// The chosen style (slot A) by path and name.
    #[persist = "style-choice"]
    pub style_choice: Arc<Mutex<StyleChoice>>,
    /// The chosen style of slot B by path and name.
    #[persist = "style-b-choice"]
    pub style_b_choice: Arc<Mutex<StyleChoice>>,
    /// The user's folder of styles and exported answers; `None`: the default folder.
    #[persist = "user-folder"]
    pub user_folder: Arc<Mutex<Option<PathBuf>>>,
    /// The chosen base model.
    #[persist = "model"]
    pub model: Arc<Mutex<ModelChoice>>,
    /// The editor window's size in logical points ([`crate::editor::pack_size`]); 0 until the
    /// window was resized.
    #[persist = "editor-size"]
    pub editor_size: Arc<AtomicU64>,
    /// The style menu's names, for the `style` parameter's text. Filled by the loader thread.
    pub style_names: Arc<RwLock<Vec<String>>>,
}

/// A parameter that picks an entry of the style menu (0 = the plain base), shown by name.
fn style_menu_param(name: &str, names: &Arc<RwLock<Vec<String>>>) -> IntParam {
    let (to_text, from_text) = (names.clone(), names.clone());
    IntParam::new(
        name,
        0,
        IntRange::Linear {
            min: 0,
            max: MAX_STYLES as i32,
        },
    )
    .with_value_to_string(Arc::new(move |v| style_name(&to_text, v)))
    .with_string_to_value(Arc::new(move |t| style_value(&from_text, t)))
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
    // "Style 3", "Style 3 (none)" or "3".
    let number = text
        .strip_prefix("Style")
        .unwrap_or(text)
        .split_whitespace()
        .next()?;
    number.parse().ok()
}

/// The trigger note's default, C1 in the C4 = 60 naming used here (C0 in Yamaha's): the lowest
/// key of a 49- or 61-key keyboard (usually C2 up) shifted down an octave, and a key near the
/// bottom of a piano that melodies and most bass lines never use, so giving it up to triggering
/// costs nothing.
pub const DEFAULT_TRIGGER_NOTE: u8 = 24;
/// The trigger controller's default: CC 20, the first of the controllers the MIDI specification
/// leaves undefined (20 to 31), so no instrument reacts to it and nothing else is taken away.
pub const DEFAULT_TRIGGER_CC: u8 = 20;
/// The sustain pedal's controller number.
pub const SUSTAIN_CC: u8 = 64;

fn note_name(key: i32) -> String {
    format!(
        "{}{} ({key})",
        PITCH_CLASS_NAMES[key.rem_euclid(12) as usize],
        key.div_euclid(12) - 1
    )
}

/// Reads a pitch class name at the start of `text` (`C`, `c#`, `Db`), returning it and the rest.
fn split_pitch_class(text: &str) -> Option<(i32, &str)> {
    let mut chars = text.chars();
    let natural: i32 = match chars.next()?.to_ascii_uppercase() {
        'C' => 0,
        'D' => 2,
        'E' => 4,
        'F' => 5,
        'G' => 7,
        'A' => 9,
        'B' => 11,
        _ => return None,
    };
    let rest = chars.as_str();
    Some(if let Some(rest) = rest.strip_prefix('#') {
        ((natural + 1).rem_euclid(12), rest)
    } else if let Some(rest) = rest.strip_prefix('b') {
        ((natural - 1).rem_euclid(12), rest)
    } else {
        (natural, rest)
    })
}

/// A key from text: a number, a name with its octave (`C4` = 60, `Db-1` = 1), or what
/// [`note_name`] shows (`C4 (60)`).
fn parse_note(text: &str) -> Option<i32> {
    let text = text.trim();
    if let Some((_, number)) = text.split_once('(') {
        return number.trim_end_matches(')').trim().parse().ok();
    }
    if let Ok(number) = text.parse() {
        return Some(number);
    }
    let (pitch_class, octave) = split_pitch_class(text)?;
    let octave: i32 = octave.trim().parse().ok()?;
    // `B#4` and `Cb4` cross the octave line.
    let natural_octave = match (text.as_bytes()[0].to_ascii_uppercase(), pitch_class) {
        (b'B', 0) => octave + 1,
        (b'C', 11) => octave - 1,
        _ => octave,
    };
    Some((natural_octave + 1) * 12 + pitch_class)
}

/// `-1` is shown as "none"; anything else through `show`.
fn none_or(value: i32, show: impl Fn(i32) -> String) -> String {
    if value < 0 {
        "none".to_string()
    } else {
        show(value)
    }
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
            // Temperature 1.0 and top-p 0.95: the closest continuations of the settings measured
            // on the bundled model's validation split (assets/MODEL_CARD.md, "Sampling").
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
                .with_value_to_string(Arc::new(note_name))
                .with_string_to_value(Arc::new(parse_note)),
            pitch_high: IntParam::new("Highest note", 127, IntRange::Linear { min: 0, max: 127 })
                .with_value_to_string(Arc::new(note_name))
                .with_string_to_value(Arc::new(parse_note)),
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
            quantize: EnumParam::new("Quantize", Quantize::Off),
            swing: IntParam::new(
                "Swing",
                0,
                IntRange::Linear {
                    min: 0,
                    max: i32::from(crate::protocol::MAX_SWING_PERCENT),
                },
            )
            .with_unit(" %"),
            scale_root: IntParam::new("Key", 0, IntRange::Linear { min: 0, max: 11 })
                .with_value_to_string(Arc::new(|pc| {
                    PITCH_CLASS_NAMES[pc.rem_euclid(12) as usize].to_string()
                }))
                .with_string_to_value(Arc::new(|s| {
                    let s = s.trim();
                    match split_pitch_class(s) {
                        Some((pc, "")) => Some(pc),
                        _ => s.parse().ok(),
                    }
                })),
            scale: EnumParam::new("Scale", Scale::Off),
            trigger_source: EnumParam::new("Trigger source", TriggerSource::Button),
            trigger_note: IntParam::new(
                "Trigger note",
                i32::from(DEFAULT_TRIGGER_NOTE),
                IntRange::Linear { min: -1, max: 127 },
            )
            .with_value_to_string(Arc::new(|key| none_or(key, note_name)))
            .with_string_to_value(Arc::new(|s| {
                if s.trim().eq_ignore_ascii_case("none") {
                    Some(-1)
                } else {
                    parse_note(s)
                }
            })),
            trigger_cc: IntParam::new(
                "Trigger CC",
                i32::from(DEFAULT_TRIGGER_CC),
                IntRange::Linear { min: -1, max: 127 },
            )
            .with_value_to_string(Arc::new(|cc| none_or(cc, |cc| format!("CC {cc}"))))
            .with_string_to_value(Arc::new(|s| {
                let s = s.trim();
                if s.eq_ignore_ascii_case("none") {
                    return Some(-1);
                }
                let number = s
                    .strip_prefix("CC")
                    .or_else(|| s.strip_prefix("cc"))
                    .unwrap_or(s);
                number.trim().parse().ok()
            })),
            style: style_menu_param("Style", &style_names),
            style_b: style_menu_param("Style B", &style_names),
            blend: FloatParam::new("Blend", 0.0, FloatRange::Linear { min: 0.0, max: 1.0 })
                .with_step_size(0.01)
                .with_unit(" %")
                .with_value_to_string(formatters::v2s_f32_percentage(0))
                .with_string_to_value(formatters::s2v_f32_percentage()),
            style_choice: Arc::default(),
            style_b_choice: Arc::default(),
            user_folder: Arc::default(),
            model: Arc::default(),
            editor_size: Arc::default(),
            style_names,
        }
    }
}

impl ContinuoParams {
    /// The parameter that picks `slot`'s style from the menu.
    pub fn style_param(&self, slot: Slot) -> &IntParam {
        match slot {
            Slot::A => &self.style,
            Slot::B => &self.style_b,
        }
    }

    /// `slot`'s saved choice by path and name.
    pub fn style_choice_of(&self, slot: Slot) -> &Mutex<StyleChoice> {
        match slot {
            Slot::A => &self.style_choice,
            Slot::B => &self.style_b_choice,
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
    pub trigger_source: TriggerSource,
    /// The trigger note; `None` when set to none.
    pub trigger_note: Option<u8>,
    /// The trigger controller; `None` when set to none.
    pub trigger_cc: Option<u8>,
    pub gen: GenParams,
}

impl Settings {
    /// The key whose note-ons trigger (on any channel), if the trigger source is a note.
    pub fn trigger_key(&self) -> Option<u8> {
        match self.trigger_source {
            TriggerSource::Note => self.trigger_note,
            _ => None,
        }
    }

    /// The controller whose rising edges trigger (on any channel), if the source is one.
    pub fn trigger_controller(&self) -> Option<u8> {
        match self.trigger_source {
            TriggerSource::ControlChange => self.trigger_cc,
            TriggerSource::Sustain => Some(SUSTAIN_CC),
            _ => None,
        }
    }
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
            trigger_source: TriggerSource::Button,
            trigger_note: Some(DEFAULT_TRIGGER_NOTE),
            trigger_cc: Some(DEFAULT_TRIGGER_CC),
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
            trigger_source: self.trigger_source.value(),
            trigger_note: u8::try_from(self.trigger_note.value())
                .ok()
                .map(|k| k.min(127)),
            trigger_cc: u8::try_from(self.trigger_cc.value())
                .ok()
                .map(|cc| cc.min(127)),
            gen: GenParams {
                temperature: self.temperature.value(),
                top_p: self.top_p.value(),
                seed: self.seed.value().max(0) as u32,
                style_strength: self.style_strength.value(),
                blend: self.blend.value(),
                velocity_scale: self.velocity_scale.value(),
                pitch_low: self.pitch_low.value().clamp(0, 127) as u8,
                pitch_high: self.pitch_high.value().clamp(0, 127) as u8,
                density_cap_per_beat: self.density_cap.value(),
                quantize: self.quantize.value(),
                swing_percent: self.swing.value().clamp(0, 100) as u8,
                scale_root: self.scale_root.value().rem_euclid(12) as u8,
                scale: self.scale.value(),
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
        assert_eq!(ids.len(), 26);
        for id in &ids {
            assert!(id.len() <= 6, "{id}");
        }
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), ids.len());
    }

    #[test]
    fn trigger_ranges_start_at_none_so_their_defaults_are_exact() {
        // With 0..=127 (127 steps) the CLAP default of 24 would be 23.9999999, which hosts
        // truncate to 23; -1..=127 has 128 steps, and k / 128 is exact in f32.
        let clap_default = |range: IntRange, value: i32| {
            f64::from(range.normalize(value)) * range.step_count() as f64
        };
        let full = IntRange::Linear { min: 0, max: 127 };
        assert_ne!(clap_default(full, 24), 24.0);
        let with_none = IntRange::Linear { min: -1, max: 127 };
        for value in -1..=127 {
            assert_eq!(clap_default(with_none, value), f64::from(value + 1));
        }
        let params = ContinuoParams::default();
        let settings = params.settings();
        assert_eq!(settings.trigger_note, Some(24));
        assert_eq!(settings.trigger_cc, Some(20));
        assert_eq!(settings.trigger_source, TriggerSource::Button);
        assert_eq!(
            (settings.trigger_key(), settings.trigger_controller()),
            (None, None)
        );
        let with = |source| Settings {
            trigger_source: source,
            ..settings
        };
        assert_eq!(with(TriggerSource::Note).trigger_key(), Some(24));
        assert_eq!(
            with(TriggerSource::ControlChange).trigger_controller(),
            Some(20)
        );
        assert_eq!(with(TriggerSource::Sustain).trigger_controller(), Some(64));
        assert_eq!(with(TriggerSource::Sustain).trigger_key(), None);
        let none = Settings {
            trigger_note: None,
            trigger_cc: None,
            ..settings
        };
        assert_eq!(
            Settings {
                trigger_source: TriggerSource::Note,
                ..none
            }
            .trigger_key(),
            None
        );
    }

    #[test]
    fn new_parameters_show_and_read_their_values() {
        let params = ContinuoParams::default();
        let shown = |param: &IntParam, value: i32| {
            param.normalized_value_to_string(param.preview_normalized(value), true)
        };
        let read = |param: &IntParam, text: &str| {
            param
                .string_to_normalized_value(text)
                .map(|n| param.preview_plain(n))
        };
        assert_eq!(shown(&params.trigger_note, 24), "C1 (24)");
        assert_eq!(shown(&params.trigger_note, -1), "none");
        assert_eq!(shown(&params.trigger_cc, 20), "CC 20");
        assert_eq!(shown(&params.trigger_cc, -1), "none");
        assert_eq!(shown(&params.scale_root, 1), "C#");
        assert_eq!(shown(&params.swing, 50), "50 %");
        for (text, key) in [
            ("C1 (24)", 24),
            ("C4", 60),
            ("c#4", 61),
            ("Db4", 61),
            ("C-1", 0),
            ("B#3", 60),
            ("Cb4", 59),
            ("G9", 127),
            ("36", 36),
            ("none", -1),
        ] {
            assert_eq!(read(&params.trigger_note, text), Some(key), "{text}");
        }
        assert_eq!(read(&params.trigger_note, "H2"), None);
        assert_eq!(read(&params.trigger_cc, "CC 64"), Some(64));
        assert_eq!(read(&params.trigger_cc, "11"), Some(11));
        assert_eq!(read(&params.trigger_cc, "None"), Some(-1));
        assert_eq!(read(&params.scale_root, "F#"), Some(6));
        assert_eq!(read(&params.scale_root, "Bb"), Some(10));
        assert_eq!(read(&params.scale_root, "7"), Some(7));
    }

    /// What clap-validator's `param-conversions` checks: every parameter's text (as a host
    /// shows it, with the unit) reads back to a value that shows the same text.
    #[test]
    fn every_shown_value_reads_back() {
        let params = ContinuoParams::default();
        for (id, ptr, _) in params.param_map() {
            for i in 0..=200 {
                let normalized = i as f32 / 200.0;
                // SAFETY: the pointers come from `params`, which outlives this loop.
                let (text, again) = unsafe {
                    let text = ptr.normalized_value_to_string(normalized, true);
                    let back = ptr.string_to_normalized_value(&text);
                    let again = back.map(|n| ptr.normalized_value_to_string(n, true));
                    (text, again)
                };
                assert_eq!(
                    again.as_deref(),
                    Some(text.as_str()),
                    "{id} at {normalized}"
                );
            }
        }
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
