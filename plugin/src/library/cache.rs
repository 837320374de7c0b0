//! The model and style caches: where the model comes from, the loaded `Arc<Moonbeam>` of one
//! plugin instance (shared between instances that use the same file), and the slot through
//! which the loader thread hands the generator its style.
//!
//! **Threads:** the generator thread loads the first model ([`ModelCache::get_or_load`] in its
//! `start`) and reads the style slot between decode steps; the loader thread loads the models
//! and styles the user chooses. Never touched by the audio thread.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use continuo_engine::quant::QFormat;
use continuo_engine::Style;
use continuo_engine::{Config, Moonbeam, Precision};

use super::factory;
use crate::sync::{lock, try_with};

/// Environment variable naming a model file (`.safetensors` or an official `.pt` checkpoint).
pub const ENV_MODEL: &str = "CONTINUO_MODEL";
/// Environment variable naming the model's config: a JSON file, `small` or `medium`.
pub const ENV_CONFIG: &str = "CONTINUO_CONFIG";
/// Environment variable asking for [`ENV_MODEL`] to be quantized on load: `q8` or `q4`.
pub const ENV_QUANTIZE: &str = "CONTINUO_QUANTIZE";

/// A model config: an official preset or a JSON file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSpec {
    Small,
    Medium,
    File(PathBuf),
}

impl ConfigSpec {
    /// `small`, `medium` or a path.
    pub fn parse(text: &str) -> Self {
        match text.trim() {
            "small" => Self::Small,
            "medium" => Self::Medium,
            path => Self::File(PathBuf::from(path)),
        }
    }

    pub fn load(&self) -> Result<Config, String> {
        match self {
            Self::Small => Ok(Config::small()),
            Self::Medium => Ok(Config::medium()),
            Self::File(path) => Config::from_file(path).map_err(|e| e.to_string()),
        }
    }

    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Small => "small".into(),
            Self::Medium => "medium".into(),
            Self::File(path) => file_name(path),
        }
    }
}

/// Why a model was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelOrigin {
    /// Named by [`ENV_MODEL`] and [`ENV_CONFIG`].
    Environment,
    /// The bundled default model.
    Bundled,
    /// The tiny golden test model of the source tree (random weights), for tests.
    #[cfg(test)]
    TinyTest,
    /// Chosen in the editor (saved with the plugin state).
    User,
}

/// A model to load: its config and weights, and whether to quantize them on load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelLocation {
    pub origin: ModelOrigin,
    pub config: ConfigSpec,
    pub weights: PathBuf,
    /// Quantize f32 (or bf16) weights to this format when loading them, through the cache of
    /// quantized copies ([`super::quantized`]); `None`: as stored.
    pub quantize: Option<QFormat>,
}

impl ModelLocation {
    /// What the editor shows.
    pub fn label(&self) -> String {
        let label = self.source_label();
        match self.quantize {
            Some(format) => format!("{label}, quantized to {format} on load"),
            None => label,
        }
    }

    fn source_label(&self) -> String {
        match self.origin {
            ModelOrigin::Environment => format!(
                "{} (config {}, from {ENV_MODEL})",
                file_name(&self.weights),
                self.config.describe()
            ),
            ModelOrigin::Bundled => format!("bundled {}", file_name(&self.weights)),
            ModelOrigin::User => format!(
                "{} (config {})",
                file_name(&self.weights),
                self.config.describe()
            ),
            #[cfg(test)]
            ModelOrigin::TinyTest => "tiny test model (random weights)".into(),
        }
    }
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// Where the model is, in order: [`ENV_MODEL`] with [`ENV_CONFIG`]; the bundled model, which is
/// compiled into the plugin and written out once ([`crate::library::factory`]). This is the one place to
/// change when the default model changes.
pub fn locate_model() -> Result<ModelLocation, String> {
    let mut location = locate_model_in(
        std::env::var_os(ENV_MODEL),
        std::env::var_os(ENV_CONFIG),
        factory::installed,
    )?;
    if location.origin == ModelOrigin::Environment {
        location.quantize = match std::env::var(ENV_QUANTIZE).as_deref().map(str::trim) {
            Err(_) | Ok("") => None,
            Ok("q8") => Some(QFormat::Q8),
            Ok("q4") => Some(QFormat::Q4),
            Ok(other) => return Err(format!("{ENV_QUANTIZE} is `{other}`: use `q8` or `q4`")),
        };
    }
    Ok(location)
}

/// [`locate_model`] with the environment's values and the factory folder given; `factory` is
/// only called when the environment names no model.
fn locate_model_in(
    model: Option<OsString>,
    config: Option<OsString>,
    factory: impl FnOnce() -> Result<PathBuf, String>,
) -> Result<ModelLocation, String> {
    if let Some(model) = model.filter(|m| !m.is_empty()) {
        let Some(config) = config.filter(|c| !c.is_empty()) else {
            return Err(format!(
                "{ENV_MODEL} is set but {ENV_CONFIG} is not: set it to `small`, `medium` or a config JSON file"
            ));
        };
        return Ok(ModelLocation {
            origin: ModelOrigin::Environment,
            config: ConfigSpec::parse(&config.to_string_lossy()),
            weights: PathBuf::from(model),
            quantize: None,
        });
    }
    let dir = factory()?;
    Ok(ModelLocation {
        origin: ModelOrigin::Bundled,
        config: ConfigSpec::File(dir.join(factory::MODEL_CONFIG)),
        weights: dir.join(factory::MODEL_WEIGHTS),
        quantize: None,
    })
}

fn load_model(location: &ModelLocation) -> Result<Moonbeam, String> {
    let config = location
        .config
        .load()
        .map_err(|e| format!("cannot use the model config: {e}"))?;
    match location.quantize {
        // A cache that cannot be written only costs time at the next load.
        Some(format) => super::quantized::load(
            &config,
            &location.weights,
            format,
            &super::quantized::cache_dir(),
        )
        .map(|loaded| loaded.model),
        None => Moonbeam::load(&config, &location.weights, Precision::F32)
            .map_err(|e| format!("cannot load {}: {e}", location.weights.display())),
    }
}

/// Models loaded by any instance in this process, so instances using the same file share it.
static LOADED: Mutex<Vec<(ModelLocation, Weak<Moonbeam>)>> = Mutex::new(Vec::new());

/// The model of one plugin instance, kept across activations so reactivating does not reload it.
/// The generator thread loads the first one ([`ModelCache::get_or_load`] in its `start`); the
/// loader thread ([`crate::library`]) loads the ones the user chooses later
/// ([`ModelCache::load`]). Every installed model bumps [`ModelCache::version`], which is how the
/// generator notices a new one and switches to it between answers. Anyone may read
/// [`ModelCache::current`] (e.g. to load styles for it). Never touched by the audio thread.
#[derive(Debug, Default)]
pub struct ModelCache {
    slot: Mutex<Option<(ModelLocation, Arc<Moonbeam>)>>,
    version: AtomicU64,
    /// What the generator loads when it starts; `None`: [`locate_model`].
    wanted: Mutex<Option<ModelLocation>>,
}

impl ModelCache {
    /// The loaded model, if any.
    pub fn current(&self) -> Option<Arc<Moonbeam>> {
        lock(&self.slot).as_ref().map(|(_, model)| model.clone())
    }

    /// Where the loaded model came from, if any.
    pub fn current_location(&self) -> Option<ModelLocation> {
        lock(&self.slot)
            .as_ref()
            .map(|(location, _)| location.clone())
    }

    /// Increases every time a model is installed.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// The model the generator should start with.
    pub fn start_location(&self) -> Result<ModelLocation, String> {
        match lock(&self.wanted).clone() {
            Some(location) => Ok(location),
            None => locate_model(),
        }
    }

    pub(crate) fn install(&self, location: &ModelLocation, model: Arc<Moonbeam>) {
        *lock(&self.slot) = Some((location.clone(), model));
        self.version.fetch_add(1, Ordering::AcqRel);
    }

    /// The model at `location`: another instance's, or freshly loaded. Slow when it loads.
    pub(crate) fn shared(location: &ModelLocation) -> Result<Arc<Moonbeam>, String> {
        // Held while loading, so two instances asking for the same file load it once.
        let mut shared = lock(&LOADED);
        shared.retain(|(_, weak)| weak.strong_count() > 0);
        if let Some(model) = shared
            .iter()
            .find(|(loaded, _)| loaded == location)
            .and_then(|(_, weak)| weak.upgrade())
        {
            return Ok(model);
        }
        let model = Arc::new(load_model(location)?);
        shared.push((location.clone(), Arc::downgrade(&model)));
        Ok(model)
    }

    /// The model at `location`: this instance's, another instance's, or freshly loaded. Slow
    /// when it loads; call it on the generator thread only.
    pub fn get_or_load(&self, location: &ModelLocation) -> Result<Arc<Moonbeam>, String> {
        if let Some((loaded, model)) = &*lock(&self.slot) {
            if loaded == location {
                return Ok(model.clone());
            }
        }
        let model = Self::shared(location)?;
        self.install(location, model.clone());
        Ok(model)
    }

    /// Loads the model at `location` and makes it this instance's; the generator switches to
    /// it between answers. On failure nothing changes. Slow; call it on the loader thread.
    pub fn load(&self, location: &ModelLocation) -> Result<Arc<Moonbeam>, String> {
        let previous = lock(&self.wanted).replace(location.clone());
        match Self::shared(location) {
            Ok(model) => {
                self.install(location, model.clone());
                Ok(model)
            }
            Err(e) => {
                *lock(&self.wanted) = previous;
                Err(e)
            }
        }
    }

    /// Loads the default model ([`locate_model`]).
    pub fn load_default(&self) -> Result<Arc<Moonbeam>, String> {
        let location = locate_model()?;
        self.load(&location)?;
        *lock(&self.wanted) = None;
        self.current().ok_or_else(|| "the model is gone".into())
    }
}

// ---------------------------------------------------------------------------------------------
// The style hook
// ---------------------------------------------------------------------------------------------

/// A style of one slot and its name.
#[derive(Debug, Clone)]
pub struct SlotStyle {
    pub name: String,
    pub style: Style,
}

/// What the two style slots hold: A, and B, which plays at the `blend` share (A at the rest).
/// `None` in a slot is the plain base model.
#[derive(Debug, Clone)]
pub struct NamedStyle {
    pub a: Option<SlotStyle>,
    pub b: Option<SlotStyle>,
    /// The base it was made for; the generator uses the style only with that base (a style
    /// for a previous model waits for the loader to bring one for the new model). `None`: any
    /// base of the right shapes.
    pub model: Option<Weak<Moonbeam>>,
}

impl NamedStyle {
    pub(crate) fn fits(&self, model: &Arc<Moonbeam>) -> bool {
        self.model
            .as_ref()
            .is_none_or(|made_for| std::ptr::eq(made_for.as_ptr(), Arc::as_ptr(model)))
    }

    /// The style that plays at `blend` (clamped to `0..=1`; not finite: 0) and `strength`: A's
    /// adapters at `(1 - blend) * strength` times their own, B's at `blend * strength` times
    /// theirs. Adapters at strength 0 are left out.
    pub fn blended(&self, blend: f32, strength: f32) -> Style {
        let blend = if blend.is_finite() {
            blend.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let slots = [(&self.a, 1.0 - blend), (&self.b, blend)];
        Style {
            parts: slots
                .into_iter()
                .filter_map(|(slot, share)| slot.as_ref().map(|s| (s, share * strength)))
                .flat_map(|(slot, scale)| {
                    slot.style
                        .parts
                        .iter()
                        .map(move |(adapter, own)| (adapter.clone(), own * scale))
                })
                .filter(|(_, s)| *s != 0.0)
                .collect(),
        }
    }

    /// What the editor and the captured answers call it at `blend`: `None` for the plain base,
    /// one name when the blend is all one slot (to the percent), else
    /// "A 70 % + B 30 %" (a slot without a style is "base").
    pub fn label(&self, blend: f32) -> Option<String> {
        let percent_b = if blend.is_finite() {
            (blend.clamp(0.0, 1.0) * 100.0).round() as u32
        } else {
            0
        };
        let name = |slot: &Option<SlotStyle>| slot.as_ref().map(|s| s.name.clone());
        match percent_b {
            0 => name(&self.a),
            100 => name(&self.b),
            _ if self.a.is_none() && self.b.is_none() => None,
            _ => {
                let a = name(&self.a).unwrap_or_else(|| "base".into());
                let b = name(&self.b).unwrap_or_else(|| "base".into());
                Some(format!("{a} {} % + {b} {percent_b} %", 100 - percent_b))
            }
        }
    }
}

/// The style the generator should use. The style menu (or anything else) calls
/// [`StyleSlot::set`]; the generator thread picks the change up between two decode steps and
/// swaps it into its session. Never touched by the audio thread.
#[derive(Debug, Default)]
pub struct StyleSlot {
    /// Increases with every change, so the generator can tell a change without locking.
    version: AtomicU64,
    style: Mutex<Option<NamedStyle>>,
}

impl StyleSlot {
    /// Asks for `style` in slot A, slot B empty (made for the loaded base, see
    /// [`ModelCache::current`]; its adapters' strengths are further scaled by the style
    /// strength parameter).
    pub fn set(&self, name: impl Into<String>, style: Style) {
        self.put(NamedStyle {
            a: Some(SlotStyle {
                name: name.into(),
                style,
            }),
            b: None,
            model: None,
        });
    }

    /// Asks for `style` in slot A, made for `model`; the generator uses it only with that model.
    pub fn set_for(&self, model: &Arc<Moonbeam>, name: impl Into<String>, style: Style) {
        self.set_pair_for(
            model,
            Some(SlotStyle {
                name: name.into(),
                style,
            }),
            None,
        );
    }

    /// Asks for both slots, made for `model` (both `None`: the plain base).
    pub fn set_pair_for(&self, model: &Arc<Moonbeam>, a: Option<SlotStyle>, b: Option<SlotStyle>) {
        if a.is_none() && b.is_none() {
            return self.clear();
        }
        self.put(NamedStyle {
            a,
            b,
            model: Some(Arc::downgrade(model)),
        });
    }

    pub(crate) fn put(&self, style: NamedStyle) {
        *lock(&self.style) = Some(style);
        self.version.fetch_add(1, Ordering::Release);
    }

    /// The names of the styles asked for in slots A and B (`None`: the plain base), and the
    /// base they were made for (`None` when both slots are empty).
    pub fn requested(&self) -> (Option<String>, Option<String>, Option<Weak<Moonbeam>>) {
        let named = lock(&self.style);
        let name = |slot: &Option<SlotStyle>| slot.as_ref().map(|s| s.name.clone());
        match named.as_ref() {
            Some(named) => (name(&named.a), name(&named.b), named.model.clone()),
            None => (None, None, None),
        }
    }

    /// Back to the plain base model.
    pub fn clear(&self) {
        *lock(&self.style) = None;
        self.version.fetch_add(1, Ordering::Release);
    }

    /// The style asked for, if it changed since `seen` (which is then updated). Never blocks:
    /// if the slot is being written, the change is picked up at a later call.
    pub(crate) fn take_change(&self, seen: &mut u64) -> Option<Option<NamedStyle>> {
        let version = self.version.load(Ordering::Acquire);
        if version == *seen {
            return None;
        }
        let style = try_with(&self.style, Option::clone)?;
        *seen = version;
        Some(style)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A blend plays A's adapters at `1 - blend` and B's at `blend`, times their own strength
    /// and the style strength, and is named after what plays.
    #[test]
    fn blends_scale_each_slot_and_name_what_plays() {
        let cfg =
            continuo_engine::Config::from_file(&crate::testing::golden().join("tiny_config.json"))
                .unwrap();
        let adapter = Arc::new(
            continuo_engine::Adapter::from_peft_dir(
                &crate::testing::golden().join("lora_adapter"),
                &cfg,
            )
            .unwrap(),
        );
        let slot = |name: &str, own: f32| SlotStyle {
            name: name.into(),
            style: Style::single(adapter.clone(), own),
        };
        let pair = NamedStyle {
            a: Some(slot("Ragtime", 0.75)),
            b: Some(slot("Folk", 1.0)),
            model: None,
        };
        let strengths = |style: Style| style.parts.iter().map(|(_, s)| *s).collect::<Vec<_>>();
        assert_eq!(strengths(pair.blended(0.3, 1.0)), [0.75 * 0.7, 0.3]);
        assert_eq!(strengths(pair.blended(0.3, 0.5)), [0.75 * 0.7 * 0.5, 0.15]);
        assert_eq!(strengths(pair.blended(0.0, 1.0)), [0.75]);
        assert_eq!(strengths(pair.blended(1.0, 1.0)), [1.0]);
        assert_eq!(strengths(pair.blended(7.0, 1.0)), [1.0]);
        assert_eq!(strengths(pair.blended(f32::NAN, 1.0)), [0.75]);
        assert_eq!(pair.label(0.3).as_deref(), Some("Ragtime 70 % + Folk 30 %"));
        assert_eq!(pair.label(0.001).as_deref(), Some("Ragtime"));
        assert_eq!(pair.label(1.0).as_deref(), Some("Folk"));
        let to_base = NamedStyle {
            b: None,
            ..pair.clone()
        };
        assert_eq!(strengths(to_base.blended(0.3, 1.0)), [0.75 * 0.7]);
        assert_eq!(
            to_base.label(0.3).as_deref(),
            Some("Ragtime 70 % + base 30 %")
        );
        assert_eq!(to_base.label(1.0), None);
        assert!(to_base.blended(1.0, 1.0).is_base());
    }

    #[test]
    fn locates_the_model_in_order() {
        let factory = || Ok(PathBuf::from("/factory"));
        // The bundled model, from the factory folder.
        let bundled = locate_model_in(None, None, factory).unwrap();
        assert_eq!(bundled.origin, ModelOrigin::Bundled);
        assert_eq!(
            bundled.weights,
            Path::new("/factory").join(factory::MODEL_WEIGHTS)
        );
        assert_eq!(
            bundled.config,
            ConfigSpec::File(Path::new("/factory").join(factory::MODEL_CONFIG))
        );
        // A factory folder that cannot be written is the error.
        let blocked = || Err("read-only".to_string());
        assert_eq!(
            locate_model_in(None, None, blocked).unwrap_err(),
            "read-only"
        );
        // The environment wins (the factory is not even asked), and needs a config.
        let env = locate_model_in(Some("/m/x.pt".into()), Some("medium".into()), blocked).unwrap();
        assert_eq!(env.origin, ModelOrigin::Environment);
        assert_eq!(env.config, ConfigSpec::Medium);
        assert_eq!(env.weights, PathBuf::from("/m/x.pt"));
        assert!(locate_model_in(Some("/m/x.pt".into()), None, factory)
            .unwrap_err()
            .contains(ENV_CONFIG));
        // An empty variable counts as unset.
        assert_eq!(
            locate_model_in(Some("".into()), None, factory)
                .unwrap()
                .origin,
            ModelOrigin::Bundled
        );
    }
}
