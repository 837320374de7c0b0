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

use continuo_engine::Style;
use continuo_engine::{Config, Moonbeam, Precision};

use super::factory;
use crate::sync::{lock, try_with};

/// Environment variable naming a model file (`.safetensors` or an official `.pt` checkpoint).
pub const ENV_MODEL: &str = "CONTINUO_MODEL";
/// Environment variable naming the model's config: a JSON file, `small` or `medium`.
pub const ENV_CONFIG: &str = "CONTINUO_CONFIG";

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

/// A model to load: its config and weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelLocation {
    pub origin: ModelOrigin,
    pub config: ConfigSpec,
    pub weights: PathBuf,
}

impl ModelLocation {
    /// What the editor shows.
    pub fn label(&self) -> String {
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
    locate_model_in(
        std::env::var_os(ENV_MODEL),
        std::env::var_os(ENV_CONFIG),
        factory::installed,
    )
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
        });
    }
    let dir = factory()?;
    Ok(ModelLocation {
        origin: ModelOrigin::Bundled,
        config: ConfigSpec::File(dir.join(factory::MODEL_CONFIG)),
        weights: dir.join(factory::MODEL_WEIGHTS),
    })
}

fn load_model(location: &ModelLocation) -> Result<Moonbeam, String> {
    let config = location
        .config
        .load()
        .map_err(|e| format!("cannot use the model config: {e}"))?;
    Moonbeam::load(&config, &location.weights, Precision::F32)
        .map_err(|e| format!("cannot load {}: {e}", location.weights.display()))
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

/// A style and its name.
#[derive(Debug, Clone)]
pub struct NamedStyle {
    pub name: String,
    pub style: Style,
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
    /// Asks for `style` (made for the loaded base, see [`ModelCache::current`]; its adapters'
    /// strengths are further scaled by the style strength parameter).
    pub fn set(&self, name: impl Into<String>, style: Style) {
        self.put(NamedStyle {
            name: name.into(),
            style,
            model: None,
        });
    }

    /// Asks for `style`, made for `model`; the generator uses it only with that model.
    pub fn set_for(&self, model: &Arc<Moonbeam>, name: impl Into<String>, style: Style) {
        self.put(NamedStyle {
            name: name.into(),
            style,
            model: Some(Arc::downgrade(model)),
        });
    }

    pub(crate) fn put(&self, style: NamedStyle) {
        *lock(&self.style) = Some(style);
        self.version.fetch_add(1, Ordering::Release);
    }

    /// The name of the style asked for (`None`: the plain base), and the base it was made for.
    pub fn requested(&self) -> Option<(String, Option<Weak<Moonbeam>>)> {
        lock(&self.style)
            .as_ref()
            .map(|named| (named.name.clone(), named.model.clone()))
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
