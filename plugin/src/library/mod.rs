//! What the user can choose (styles, the base model, the user folder) and the loader thread
//! that loads it in the background.
//!
//! **Thread:** the loader thread, the only one that does file I/O (the generator thread only
//! loads the model it is told to). **May touch:** the files, the parameters, [`SharedStatus`],
//! and the hand-off slots it fills for the generator: [`ModelCache`] and [`StyleSlot`]
//! (`cache`). Beside it: [`factory`] (the shipped files, compiled in and written out once) and
//! [`capture`] (captured answers as `.mid` files).
//!
//! * **Catalog.** The style menu lists the shipped styles (those of `lora-weights/`, compiled
//!   in and written out by [`factory`], or the folder named by [`ENV_STYLES`]) and then the
//!   styles in the user's folder (native style files,
//!   `*.safetensors` with a Continuo card, and peft adapter folders), each by its preset name.
//!   Only the file headers are read to build it. Entry `i` of the catalog is value `i + 1` of
//!   the automatable `style` parameter; 0 is the plain base model.
//! * **Choice.** The chosen style is saved with the plugin state by path and name
//!   ([`StyleChoice`]), as are the user folder and the base model ([`ModelChoice`]). The path is
//!   what counts on restore (the menu order may have changed since). A style file that is gone
//!   is replaced by the shipped style of the same name if there is one (a project from another
//!   computer), else the base model plays; either way the editor says so.
//! * **Loader thread**, one per plugin instance, started when the editor opens or on
//!   `activate()`, and stopped on drop. It polls every [`POLL`] (and wakes at once on requests from the editor). It
//!   follows the `style` and `styleb` parameters (style slots A and B, which the generator
//!   blends by the `blend` parameter), loads the chosen styles for the running base (checking
//!   the base fingerprint and shapes) and hands them to the generator through [`StyleSlot`], which
//!   swaps it in between two decode steps. Loaded styles are kept (up to [`STYLE_CACHE`]) and
//!   the catalog's styles are preloaded one by one while nothing else is asked for, so a
//!   switch is usually a pointer swap. It also loads a newly chosen base model while the
//!   generator keeps playing with the previous one (a failure is reported and changes nothing),
//!   rescans the catalog and exports captured answers. Neither the audio thread nor the GUI
//!   thread ever waits for it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

mod cache;
pub mod capture;
pub mod factory;
pub mod quantized;

pub use cache::{
    locate_model, ConfigSpec, ModelCache, ModelLocation, ModelOrigin, NamedStyle, SlotStyle,
    StyleSlot, ENV_CONFIG, ENV_MODEL, ENV_QUANTIZE,
};

use continuo_engine::style::{load_any, read_card};
use continuo_engine::Moonbeam;
use continuo_engine::{Adapter, Style};

use crate::params::{ContinuoParams, ModelChoice, Slot, StyleChoice, MAX_STYLES};
use crate::status::SharedStatus;
use crate::sync::{lock, try_with};
use capture::{export_answer, export_stamp};

/// Names the folder of shipped styles (default: the styles compiled into the plugin).
pub const ENV_STYLES: &str = "CONTINUO_STYLES";
/// How often the loader thread looks at the `style` parameter.
pub const POLL: Duration = Duration::from_millis(15);
/// Loaded styles kept for instant switching.
pub const STYLE_CACHE: usize = 16;

impl ModelChoice {
    /// Where to load it from: the default ([`locate_model`]) or the chosen files.
    pub fn location(&self) -> Result<ModelLocation, String> {
        match &self.weights {
            None => locate_model(),
            Some(weights) => {
                if self.config.trim().is_empty() {
                    return Err(
                        "choose the model's config too: `small`, `medium` or a config JSON file"
                            .into(),
                    );
                }
                Ok(ModelLocation {
                    origin: ModelOrigin::User,
                    config: ConfigSpec::parse(&self.config),
                    weights: weights.clone(),
                    quantize: self.quantize,
                })
            }
        }
    }
}

/// Where a catalog entry comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StyleOrigin {
    Shipped,
    User,
}

/// One style of the menu.
#[derive(Debug, Clone, PartialEq)]
pub struct StyleEntry {
    /// The preset name (from the style's card).
    pub name: String,
    pub path: PathBuf,
    pub origin: StyleOrigin,
    pub description: String,
    /// The base it was made for, as its card says.
    pub base_model: String,
}

/// The style menu and what went wrong reading it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Catalog {
    pub entries: Vec<StyleEntry>,
    /// Files that looked like styles but could not be read, with the reason.
    pub problems: Vec<String>,
}

impl Catalog {
    /// The `style` parameter value of the entry at `path` (0 if it is not in the menu).
    pub fn index_of(&self, path: &Path) -> Option<usize> {
        self.entries
            .iter()
            .position(|e| e.path == path)
            .map(|i| i + 1)
    }

    /// The entry for a `style` parameter value (`None` for 0 or past the end).
    pub fn entry(&self, value: usize) -> Option<&StyleEntry> {
        value.checked_sub(1).and_then(|i| self.entries.get(i))
    }
}

/// The folder of shipped styles: [`ENV_STYLES`], else the styles compiled into the plugin,
/// written out once ([`crate::library::factory`]).
pub fn shipped_styles_dir() -> Result<PathBuf, String> {
    match std::env::var_os(ENV_STYLES).filter(|v| !v.is_empty()) {
        Some(dir) => Ok(PathBuf::from(dir)),
        None => factory::installed().map(|dir| dir.join(factory::STYLES)),
    }
}

/// The default user folder: `$XDG_DATA_HOME/continuo` or `~/.local/share/continuo` on Linux,
/// `~/Library/Application Support/Continuo` on macOS, `%APPDATA%\Continuo` on Windows.
/// Styles are looked for in it, and answers are exported to its `answers` subfolder.
pub fn default_user_folder() -> PathBuf {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if cfg!(target_os = "windows") {
        if let Some(appdata) = var("APPDATA") {
            return appdata.join("Continuo");
        }
    } else if cfg!(target_os = "macos") {
        if let Some(home) = var("HOME") {
            return home.join("Library/Application Support/Continuo");
        }
    } else if let Some(data) = var("XDG_DATA_HOME") {
        return data.join("continuo");
    } else if let Some(home) = var("HOME") {
        return home.join(".local/share/continuo");
    }
    std::env::temp_dir().join("continuo")
}

/// Where exported answers go.
pub fn answers_folder(user_folder: &Path) -> PathBuf {
    user_folder.join("answers")
}

/// Candidate style files and peft folders under `dir`, up to two levels deep (the shipped
/// layout is `lora-weights/<name>/<name>.safetensors`).
fn candidates(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    let Ok(read) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = read.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            if path.join("adapter_config.json").is_file() {
                out.push(path);
            } else if depth > 0 {
                candidates(&path, depth - 1, out);
            }
        } else if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
        {
            out.push(path);
        }
    }
}

fn entry_for(path: &Path, origin: StyleOrigin) -> Result<StyleEntry, String> {
    if path.is_dir() {
        let name = path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        return Ok(StyleEntry {
            name,
            path: path.to_owned(),
            origin,
            description: "peft adapter".into(),
            base_model: String::new(),
        });
    }
    let card = read_card(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(StyleEntry {
        name: card.name,
        path: path.to_owned(),
        origin,
        description: card.description,
        base_model: card.base_model,
    })
}

/// Builds the menu: the shipped styles, then the user's, each sorted by name; at most
/// [`MAX_STYLES`]. Files that are not styles (e.g. model weights in the user folder) are
/// listed as problems, not entries.
pub fn scan(shipped: Option<&Path>, user: Option<&Path>) -> Catalog {
    let mut catalog = Catalog::default();
    for (dir, origin) in [(shipped, StyleOrigin::Shipped), (user, StyleOrigin::User)] {
        let Some(dir) = dir else { continue };
        let mut paths = Vec::new();
        candidates(dir, 2, &mut paths);
        let mut entries: Vec<StyleEntry> = Vec::new();
        for path in paths {
            if catalog.entries.iter().any(|e| e.path == path) {
                continue;
            }
            match entry_for(&path, origin) {
                Ok(entry) => entries.push(entry),
                Err(problem) => catalog.problems.push(problem),
            }
        }
        entries.sort_by_key(|e| e.name.to_lowercase());
        catalog.entries.extend(entries);
    }
    if catalog.entries.len() > MAX_STYLES {
        catalog.problems.push(format!(
            "only the first {MAX_STYLES} of {} styles are in the menu",
            catalog.entries.len()
        ));
        catalog.entries.truncate(MAX_STYLES);
    }
    catalog
}

/// Requests from the editor to the loader thread.
#[derive(Debug, Default)]
struct Requests {
    /// Load this base model.
    model: Option<ModelChoice>,
    /// Read the catalog again.
    rescan: bool,
    /// Export the captured answer with this number.
    exports: Vec<u64>,
}

/// What the editor shows about styles and the loader's last message.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LibraryView {
    pub catalog: Catalog,
    /// The style of slot A (its preset name), or "base model".
    pub active_style: String,
    /// The style of slot B (its preset name), or "base model".
    pub active_style_b: String,
    /// The last thing the loader did or could not do, for the editor (e.g. a fallback on
    /// restore, an exported file).
    pub message: String,
    /// Whether a base model is being loaded.
    pub loading_model: bool,
}

/// State shared by the plugin, its editor and its loader thread. Never touched by the audio
/// thread.
#[derive(Debug)]
pub struct Library {
    requests: Mutex<Requests>,
    view: Mutex<LibraryView>,
    /// The menu's names, for the `style` parameter's text (read with `try_read`).
    names: Arc<RwLock<Vec<String>>>,
    stop: AtomicBool,
    thread: Mutex<Option<std::thread::Thread>>,
}

impl Library {
    pub fn new(names: Arc<RwLock<Vec<String>>>) -> Self {
        Self {
            requests: Mutex::new(Requests {
                rescan: true,
                ..Requests::default()
            }),
            view: Mutex::new(LibraryView {
                active_style: "base model".into(),
                active_style_b: "base model".into(),
                ..LibraryView::default()
            }),
            names,
            stop: AtomicBool::new(false),
            thread: Mutex::new(None),
        }
    }

    fn wake(&self) {
        if let Some(thread) = lock(&self.thread).as_ref() {
            thread.unpark();
        }
    }

    fn request(&self, f: impl FnOnce(&mut Requests)) {
        f(&mut lock(&self.requests));
        self.wake();
    }

    /// Asks for another base model (loaded in the background).
    pub fn request_model(&self, choice: ModelChoice) {
        self.request(|r| r.model = Some(choice));
    }

    /// Asks for the catalog to be read again (e.g. after the user folder changed).
    pub fn request_rescan(&self) {
        self.request(|r| r.rescan = true);
    }

    /// Asks for a captured answer to be written into the user folder.
    pub fn request_export(&self, number: u64) {
        self.request(|r| r.exports.push(number));
    }

    /// A copy of what the editor shows; `None` if the loader is writing it (never blocks).
    pub fn try_view(&self) -> Option<LibraryView> {
        try_with(&self.view, LibraryView::clone)
    }

    /// A copy of what the editor shows (blocks briefly; for tests and the loader).
    pub fn view(&self) -> LibraryView {
        lock(&self.view).clone()
    }

    fn set_message(&self, message: impl Into<String>) {
        lock(&self.view).message = message.into();
    }
}

/// The loader: see the module docs. [`Loader::tick`] does one round of work; the thread calls
/// it every [`POLL`], tests call it directly.
pub struct Loader {
    params: Arc<ContinuoParams>,
    library: Arc<Library>,
    models: Arc<ModelCache>,
    styles: Arc<StyleSlot>,
    status: Arc<SharedStatus>,
    /// The `style` and `styleb` parameter values last acted on (by [`Slot::index`]).
    seen_index: [i32; 2],
    /// The saved choices last acted on. A saved choice that differs was restored from a
    /// project (nice-plug has no hook for that), and is acted on.
    applied_choice: [Option<StyleChoice>; 2],
    applied_model: Option<ModelChoice>,
    applied_folder: Option<Option<PathBuf>>,
    /// The model version the style in the slot was made for.
    style_model_version: Option<u64>,
    /// The chosen style must be (re)loaded and handed to the generator.
    style_dirty: bool,
    /// Loaded adapters by path, for the model version in `cache_version`.
    cache: HashMap<PathBuf, Arc<Adapter>>,
    cache_version: u64,
    /// Styles that failed to load for this model version (not retried by preloading).
    failed: Vec<PathBuf>,
    /// The shipped styles' folder, if not [`shipped_styles_dir`] (tests).
    shipped_dir: Option<PathBuf>,
}

impl Loader {
    pub fn new(
        params: Arc<ContinuoParams>,
        library: Arc<Library>,
        models: Arc<ModelCache>,
        styles: Arc<StyleSlot>,
        status: Arc<SharedStatus>,
    ) -> Self {
        let seen_index = Slot::BOTH.map(|slot| params.style_param(slot).value());
        let applied_choice =
            Slot::BOTH.map(|slot| Some(lock(params.style_choice_of(slot)).clone()));
        Self {
            params,
            library,
            models,
            styles,
            status,
            seen_index,
            applied_choice,
            applied_model: None,
            applied_folder: None,
            style_model_version: None,
            style_dirty: true,
            cache: HashMap::new(),
            cache_version: 0,
            failed: Vec::new(),
            shipped_dir: None,
        }
    }

    /// Lists the shipped styles from `dir` instead of [`shipped_styles_dir`].
    pub fn with_shipped_dir(mut self, dir: PathBuf) -> Self {
        self.shipped_dir = Some(dir);
        self.library.request_rescan();
        self
    }

    fn user_folder(&self) -> PathBuf {
        lock(&self.params.user_folder)
            .clone()
            .unwrap_or_else(default_user_folder)
    }

    fn catalog(&self) -> Catalog {
        lock(&self.library.view).catalog.clone()
    }

    /// One round of work. Returns whether it did anything.
    pub fn tick(&mut self) -> bool {
        let requests = std::mem::take(&mut *lock(&self.library.requests));
        let mut busy = false;
        let folder = lock(&self.params.user_folder).clone();
        if requests.rescan || self.applied_folder.as_ref() != Some(&folder) {
            self.applied_folder = Some(folder);
            self.rescan();
            busy = true;
        }
        // A restored project: load its model (in the background; the default one until then).
        let saved_model = lock(&self.params.model).clone();
        if self.applied_model.as_ref() != Some(&saved_model) {
            let first = self.applied_model.is_none();
            self.applied_model = Some(saved_model.clone());
            if !(first && saved_model.weights.is_none()) {
                self.load_model(&saved_model, true);
            }
            busy = true;
        }
        if let Some(model) = requests.model {
            self.load_model(&model, false);
            busy = true;
        }
        // The saved path wins over the parameter value when both change (a restored project).
        for slot in Slot::BOTH {
            let i = slot.index();
            let saved_choice = lock(self.params.style_choice_of(slot)).clone();
            let index = self.params.style_param(slot).value();
            if self.applied_choice[i].as_ref() != Some(&saved_choice) {
                self.seen_index[i] = index;
                self.style_dirty = true;
            } else if index != self.seen_index[i] {
                self.seen_index[i] = index;
                self.choose_index(slot, index);
                busy = true;
            }
        }
        let version = self.models.version();
        if self.style_model_version != Some(version) && self.models.current().is_some() {
            self.style_dirty = true;
        }
        if self.style_dirty {
            busy |= self.apply_choice();
        }
        for number in requests.exports {
            self.export(number);
            busy = true;
        }
        if !busy {
            busy = self.preload_one();
        }
        busy
    }

    fn rescan(&mut self) {
        let user = self.user_folder();
        let shipped = match &self.shipped_dir {
            Some(dir) => Ok(dir.clone()),
            None => shipped_styles_dir(),
        };
        let mut catalog = scan(shipped.as_deref().ok(), Some(&user));
        if let Err(problem) = shipped {
            catalog.problems.insert(0, problem);
        }
        if let Ok(mut names) = self.library.names.write() {
            *names = catalog.entries.iter().map(|e| e.name.clone()).collect();
        }
        lock(&self.library.view).catalog = catalog;
    }

    /// The `style` (or `styleb`) parameter moved: choose that entry for `slot` (0 = base).
    fn choose_index(&mut self, slot: Slot, index: i32) {
        let catalog = self.catalog();
        let choice = match catalog.entry(index.max(0) as usize) {
            Some(entry) => StyleChoice {
                path: Some(entry.path.clone()),
                name: entry.name.clone(),
            },
            None if index > 0 => {
                self.library.set_message(format!(
                    "style {index} is not in the menu ({} styles); playing the base model",
                    catalog.entries.len()
                ));
                StyleChoice::default()
            }
            None => StyleChoice::default(),
        };
        *lock(self.params.style_choice_of(slot)) = choice;
        self.style_dirty = true;
    }

    fn adapter(&mut self, model: &Moonbeam, path: &Path) -> Result<Arc<Adapter>, String> {
        let version = self.models.version();
        if self.cache_version != version {
            self.cache.clear();
            self.failed.clear();
            self.cache_version = version;
        }
        if let Some(adapter) = self.cache.get(path) {
            return Ok(adapter.clone());
        }
        let fingerprint = model.fingerprint();
        match load_any(path, &model.cfg, Some(&fingerprint)) {
            Ok((adapter, _card)) => {
                let adapter = Arc::new(adapter);
                if self.cache.len() >= STYLE_CACHE {
                    self.cache.clear();
                }
                self.cache.insert(path.to_owned(), adapter.clone());
                Ok(adapter)
            }
            Err(e) => {
                self.failed.push(path.to_owned());
                Err(e.to_string())
            }
        }
    }

    /// Hands the chosen styles of both slots to the generator, loading them if needed.
    /// Returns whether it did.
    fn apply_choice(&mut self) -> bool {
        let Some(model) = self.models.current() else {
            // No base yet: the generator is still loading it.
            return false;
        };
        let version = self.models.version();
        let [a, b] = Slot::BOTH.map(|slot| self.resolve(&model, slot));
        let active = |slot: &Option<SlotStyle>| {
            slot.as_ref()
                .map_or_else(|| "base model".to_string(), |s| s.name.clone())
        };
        {
            let mut view = lock(&self.library.view);
            view.active_style = active(&a);
            view.active_style_b = active(&b);
        }
        self.styles.set_pair_for(&model, a, b);
        self.applied_choice =
            Slot::BOTH.map(|slot| Some(lock(self.params.style_choice_of(slot)).clone()));
        self.style_model_version = Some(version);
        self.style_dirty = false;
        true
    }

    /// `slot`'s chosen style, loaded for `model`; `None` for the plain base, also when the
    /// choice cannot be played (then reported, and the choice reset to the base).
    fn resolve(&mut self, model: &Arc<Moonbeam>, slot: Slot) -> Option<SlotStyle> {
        let params = self.params.clone();
        let saved = params.style_choice_of(slot);
        let mut choice = lock(saved).clone();
        // A project saved on another computer (or by another version) names a shipped style
        // by a path that is not here: the shipped style of the same name stands in for it.
        if let Some(path) = choice.path.as_ref().filter(|p| !p.exists()) {
            let catalog = self.catalog();
            let shipped = catalog
                .entries
                .iter()
                .find(|e| e.origin == StyleOrigin::Shipped && e.name == choice.name);
            if let Some(entry) = shipped {
                self.library.set_message(format!(
                    "style “{}” was saved from {}; using the shipped one",
                    choice.name,
                    path.display()
                ));
                choice.path = Some(entry.path.clone());
                *lock(saved) = choice.clone();
            }
        }
        // `Err(message)`: the chosen style cannot be played; fall back to the base.
        let outcome = match &choice.path {
            None => Ok(None),
            Some(path) if !path.exists() => Err(format!(
                "style “{}” is missing ({}); playing the base model",
                choice.name,
                path.display()
            )),
            Some(path) => self.adapter(model, path).map(Some).map_err(|e| {
                format!(
                    "style “{}” cannot be used: {e}; playing the base model",
                    choice.name
                )
            }),
        };
        match outcome {
            Ok(adapter) => adapter.map(|adapter| SlotStyle {
                name: choice.name.clone(),
                style: Style::single(adapter, 1.0),
            }),
            Err(message) => {
                self.status.set_last_error(&message);
                self.library.set_message(message);
                *lock(saved) = StyleChoice::default();
                None
            }
        }
    }

    /// Loads a base model in the background; the generator switches to it between answers.
    /// On failure nothing changes but the message. `restoring`: a saved choice that fails
    /// falls back to the default model.
    fn load_model(&mut self, choice: &ModelChoice, restoring: bool) {
        let location = match choice.location() {
            Ok(location) => location,
            Err(e) => {
                self.model_failed(&e, restoring);
                return;
            }
        };
        if self.models.current_location().as_ref() == Some(&location) {
            self.save_model(choice);
            return;
        }
        lock(&self.library.view).loading_model = true;
        self.status
            .set_model_label(&format!("loading {}…", location.label()));
        let loaded = self.models.load(&location);
        lock(&self.library.view).loading_model = false;
        match loaded {
            Ok(_) => {
                self.save_model(choice);
                self.library
                    .set_message(format!("loaded {}", location.label()));
                self.status.set_last_error("");
                self.style_dirty = true;
            }
            Err(e) => self.model_failed(&e, restoring),
        }
    }

    fn save_model(&mut self, choice: &ModelChoice) {
        *lock(&self.params.model) = choice.clone();
        self.applied_model = Some(choice.clone());
    }

    fn model_failed(&mut self, error: &str, restoring: bool) {
        let message = if restoring {
            self.save_model(&ModelChoice::default());
            format!("the saved model cannot be loaded ({error}); using the default model")
        } else {
            format!("model not changed: {error}")
        };
        self.status.set_last_error(&message);
        self.library.set_message(message);
        if let Some(location) = self.models.current_location() {
            self.status.set_model_label(&location.label());
        } else if restoring {
            let _ = self.models.load_default();
        }
    }

    fn export(&mut self, number: u64) {
        let message = match self.status.captures.get(number) {
            None => format!("answer #{number} is no longer kept"),
            Some(answer) => match export_answer(
                &answer,
                &answers_folder(&self.user_folder()),
                &export_stamp(),
            ) {
                Ok(path) => format!("exported answer #{number} to {}", path.display()),
                Err(e) => {
                    let message = format!("could not export answer #{number}: {e}");
                    self.status.set_last_error(&message);
                    message
                }
            },
        };
        self.library.set_message(message);
    }

    /// Loads one catalog style not loaded yet, so switching to it later is instant.
    fn preload_one(&mut self) -> bool {
        let Some(model) = self.models.current() else {
            return false;
        };
        let catalog = self.catalog();
        let next = catalog
            .entries
            .iter()
            .take(STYLE_CACHE)
            .map(|e| e.path.clone())
            .find(|p| {
                self.cache_version != self.models.version()
                    || (!self.cache.contains_key(p) && !self.failed.contains(p))
            });
        match next {
            Some(path) => {
                // Errors are reported when (if) the style is chosen.
                let _ = self.adapter(&model, &path);
                true
            }
            None => false,
        }
    }
}

/// The loader thread of one plugin instance.
pub struct LoaderThread {
    library: Arc<Library>,
    handle: Option<JoinHandle<()>>,
}

impl LoaderThread {
    pub fn spawn(mut loader: Loader) -> std::io::Result<Self> {
        let library = loader.library.clone();
        library.stop.store(false, Ordering::Release);
        let handle = std::thread::Builder::new()
            .name("continuo-loader".into())
            .spawn(move || {
                let library = loader.library.clone();
                while !library.stop.load(Ordering::Acquire) {
                    if !loader.tick() {
                        std::thread::park_timeout(POLL);
                    }
                }
            })?;
        *lock(&library.thread) = Some(handle.thread().clone());
        Ok(Self {
            library,
            handle: Some(handle),
        })
    }

    /// Stops and joins the thread (waits for a model load in progress to finish).
    pub fn stop(&mut self) {
        self.library.stop.store(true, Ordering::Release);
        self.library.wake();
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
        *lock(&self.library.thread) = None;
    }
}

impl Drop for LoaderThread {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::status::{CapturedAnswer, CapturedNote};
    use continuo_engine::style::{save_style, StyleCard};
    use continuo_engine::Config;
    use nice_plug::prelude::Param;

    use crate::testing::{golden, source_path, temp_dir, tiny_test_model};

    /// Writes a native style for the tiny golden model: the golden peft adapter with its alpha
    /// multiplied by `alpha_factor`, under `name`.
    pub(crate) fn tiny_style(path: &Path, name: &str, alpha_factor: f64) {
        let cfg = Config::from_file(&golden().join("tiny_config.json")).unwrap();
        let mut adapter = Adapter::from_peft_dir(&golden().join("lora_adapter"), &cfg).unwrap();
        adapter.alpha *= alpha_factor;
        let card = StyleCard {
            base_model: "tiny".into(),
            ..StyleCard::new(name, "test style")
        };
        save_style(path, &adapter, &card).unwrap();
    }

    /// A user folder with two tiny styles ("Alpha", "Zed"), model weights that are not a style,
    /// and a peft folder.
    fn user_folder(tag: &str) -> PathBuf {
        let dir = temp_dir(tag);
        tiny_style(&dir.join("zed.safetensors"), "Zed", 3.0);
        tiny_style(&dir.join("a.safetensors"), "Alpha", 1.0);
        std::fs::copy(
            golden().join("tiny_model.safetensors"),
            dir.join("weights.safetensors"),
        )
        .unwrap();
        let peft = dir.join("more/peft-style");
        std::fs::create_dir_all(&peft).unwrap();
        for file in ["adapter_config.json", "adapter_model.safetensors"] {
            std::fs::copy(golden().join("lora_adapter").join(file), peft.join(file)).unwrap();
        }
        dir
    }

    fn shipped() -> PathBuf {
        source_path("lora-weights")
    }

    #[test]
    fn catalog_lists_shipped_then_user_styles_by_name() {
        let user = user_folder("scan");
        let catalog = scan(Some(&shipped()), Some(&user));
        let names: Vec<&str> = catalog.entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "Bach Chorale",
                "Irish Folk Tune",
                "Ragtime",
                "Alpha",
                "peft-style",
                "Zed"
            ]
        );
        assert!(catalog.entries[..3]
            .iter()
            .all(|e| e.origin == StyleOrigin::Shipped));
        assert!(catalog.entries[3..]
            .iter()
            .all(|e| e.origin == StyleOrigin::User));
        assert_eq!(catalog.problems.len(), 1, "{:?}", catalog.problems);
        assert!(catalog.problems[0].contains("weights.safetensors"));
        assert_eq!(catalog.index_of(&user.join("zed.safetensors")), Some(6));
        assert_eq!(catalog.entry(0), None);
        assert_eq!(catalog.entry(4).unwrap().name, "Alpha");
        // A missing folder is an empty one.
        assert!(scan(Some(&user.join("nothing")), None).entries.is_empty());
        // Without shipped styles (their folder could not be written), the user's are still
        // the user's: only shipped ones stand in for a saved style by name.
        let alone = scan(None, Some(&user));
        assert_eq!(alone.entries.len(), 3);
        assert!(alone.entries.iter().all(|e| e.origin == StyleOrigin::User));
        std::fs::remove_dir_all(&user).unwrap();
    }

    struct Rig {
        params: Arc<ContinuoParams>,
        library: Arc<Library>,
        models: Arc<ModelCache>,
        styles: Arc<StyleSlot>,
        status: Arc<SharedStatus>,
        loader: Loader,
        user: PathBuf,
    }

    impl Rig {
        /// A rig whose menu lists the source tree's shipped styles.
        fn new(tag: &str) -> Self {
            Self::with_shipped(tag, shipped())
        }

        fn with_shipped(tag: &str, shipped: PathBuf) -> Self {
            let params = Arc::new(ContinuoParams::default());
            let user = user_folder(tag);
            *lock(&params.user_folder) = Some(user.clone());
            let library = Arc::new(Library::new(params.style_names.clone()));
            let models = Arc::new(ModelCache::default());
            models.get_or_load(&tiny_test_model()).unwrap();
            let styles = Arc::new(StyleSlot::default());
            let status = Arc::new(SharedStatus::default());
            let loader = Loader::new(
                params.clone(),
                library.clone(),
                models.clone(),
                styles.clone(),
                status.clone(),
            )
            .with_shipped_dir(shipped);
            Self {
                params,
                library,
                models,
                styles,
                status,
                loader,
                user,
            }
        }

        fn set_style_param(&self, value: i32) {
            self.set_slot_param(Slot::A, value);
        }

        fn set_slot_param(&self, slot: Slot, value: i32) {
            let param = self.params.style_param(slot);
            let normalized = param.preview_normalized(value);
            // SAFETY: the pointer comes from `self.params`, which is alive.
            unsafe { param.as_ptr()._internal_set_normalized_value(normalized) };
            assert_eq!(param.value(), value);
        }

        /// The names of the styles asked for in slots A and B.
        fn requested_pair(&self) -> (Option<String>, Option<String>) {
            let (a, b, _) = self.styles.requested();
            (a, b)
        }

        /// Ticks until the loader is idle.
        fn settle(&mut self) {
            for _ in 0..100 {
                if !self.loader.tick() {
                    return;
                }
            }
            panic!("the loader never settled");
        }

        /// The name of slot A's style asked for.
        fn requested(&self) -> Option<String> {
            self.styles.requested().0
        }
    }

    impl Drop for Rig {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.user);
        }
    }

    #[test]
    fn loader_follows_the_style_parameter() {
        let mut rig = Rig::new("param");
        rig.settle();
        assert_eq!(rig.requested(), None);
        assert_eq!(rig.library.view().catalog.entries.len(), 6);
        // The parameter's text comes from the menu.
        assert_eq!(
            rig.params
                .style
                .normalized_value_to_string(rig.params.style.preview_normalized(4), false),
            "Alpha"
        );

        rig.set_style_param(6);
        rig.settle();
        assert_eq!(rig.requested().as_deref(), Some("Zed"));
        let choice = lock(&rig.params.style_choice).clone();
        assert_eq!(choice.path, Some(rig.user.join("zed.safetensors")));
        assert_eq!(choice.name, "Zed");
        assert_eq!(rig.library.view().active_style, "Zed");
        // Made for the loaded base.
        let (_, _, made_for) = rig.styles.requested();
        assert!(std::ptr::eq(
            made_for.unwrap().as_ptr(),
            Arc::as_ptr(&rig.models.current().unwrap())
        ));

        rig.set_style_param(0);
        rig.settle();
        assert_eq!(rig.requested(), None);
        assert_eq!(*lock(&rig.params.style_choice), StyleChoice::default());
    }

    /// Slot B follows its own parameter from the same menu, is saved apart, and falls back to
    /// the base on its own when its file is gone (slot A keeps playing).
    #[test]
    fn slot_b_follows_its_parameter_and_falls_back_on_its_own() {
        let mut rig = Rig::new("slotb");
        rig.settle();
        rig.set_slot_param(Slot::A, 4);
        rig.set_slot_param(Slot::B, 6);
        rig.settle();
        assert_eq!(
            rig.requested_pair(),
            (Some("Alpha".into()), Some("Zed".into()))
        );
        assert_eq!(
            lock(&rig.params.style_b_choice).path,
            Some(rig.user.join("zed.safetensors"))
        );
        let view = rig.library.view();
        assert_eq!(
            (view.active_style.as_str(), view.active_style_b.as_str()),
            ("Alpha", "Zed")
        );
        // Both were loaded once and are kept: choosing them again loads nothing.
        assert!(rig
            .loader
            .cache
            .contains_key(&rig.user.join("a.safetensors")));
        assert!(rig
            .loader
            .cache
            .contains_key(&rig.user.join("zed.safetensors")));

        *lock(&rig.params.style_b_choice) = StyleChoice {
            path: Some(rig.user.join("gone.safetensors")),
            name: "Gone".into(),
        };
        rig.settle();
        assert_eq!(rig.requested_pair(), (Some("Alpha".into()), None));
        assert_eq!(*lock(&rig.params.style_b_choice), StyleChoice::default());
        assert!(rig.library.view().message.contains("“Gone” is missing"));
        assert_eq!(rig.library.view().active_style_b, "base model");

        // B alone, A the plain base.
        rig.set_slot_param(Slot::A, 0);
        rig.set_slot_param(Slot::B, 4);
        rig.settle();
        assert_eq!(rig.requested_pair(), (None, Some("Alpha".into())));
        rig.set_slot_param(Slot::B, 0);
        rig.settle();
        assert_eq!(rig.requested_pair(), (None, None));
    }

    /// The shipped styles belong to the bundled base; with the tiny model they are refused
    /// (base fingerprint), reported, and the base model plays.
    #[test]
    fn a_style_for_another_base_is_refused_with_a_message() {
        let mut rig = Rig::new("refuse");
        rig.settle();
        rig.set_style_param(4);
        rig.settle();
        assert_eq!(rig.requested().as_deref(), Some("Alpha"));
        rig.set_style_param(1);
        rig.settle();
        assert_eq!(rig.requested(), None);
        let view = rig.library.view();
        assert!(
            view.message.contains("Bach Chorale") && view.message.contains("fingerprint"),
            "{}",
            view.message
        );
        assert_eq!(view.active_style, "base model");
        assert_eq!(*lock(&rig.params.style_choice), StyleChoice::default());
        assert!(rig
            .status
            .try_engine_info()
            .unwrap()
            .last_error
            .contains("Bach Chorale"));
    }

    /// A restored project names its style by path: the path wins over the parameter, and a
    /// file that is gone falls back to the base model with a message.
    #[test]
    fn restored_choice_wins_and_a_missing_file_falls_back() {
        let mut rig = Rig::new("restore");
        rig.settle();
        rig.set_style_param(2);
        *lock(&rig.params.style_choice) = StyleChoice {
            path: Some(rig.user.join("a.safetensors")),
            name: "Alpha".into(),
        };
        rig.settle();
        assert_eq!(rig.requested().as_deref(), Some("Alpha"));

        *lock(&rig.params.style_choice) = StyleChoice {
            path: Some(rig.user.join("gone.safetensors")),
            name: "Gone".into(),
        };
        rig.settle();
        assert_eq!(rig.requested(), None);
        let view = rig.library.view();
        assert!(
            view.message.contains("“Gone” is missing"),
            "{}",
            view.message
        );
        assert_eq!(view.active_style, "base model");
        assert_eq!(*lock(&rig.params.style_choice), StyleChoice::default());
    }

    /// A project from another computer names a shipped style by a path that is not here: the
    /// shipped style of the same name plays, and the choice now names it.
    #[test]
    fn a_shipped_style_saved_elsewhere_is_found_by_name() {
        let shipped = temp_dir("shipped");
        std::fs::create_dir_all(shipped.join("tiny")).unwrap();
        tiny_style(&shipped.join("tiny/tiny.safetensors"), "Tiny Shipped", 2.0);
        let mut rig = Rig::with_shipped("elsewhere", shipped.clone());
        rig.settle();
        *lock(&rig.params.style_choice) = StyleChoice {
            path: Some(PathBuf::from("/another/computer/tiny.safetensors")),
            name: "Tiny Shipped".into(),
        };
        rig.settle();
        assert_eq!(rig.requested().as_deref(), Some("Tiny Shipped"));
        assert_eq!(
            lock(&rig.params.style_choice).path,
            Some(shipped.join("tiny/tiny.safetensors"))
        );
        let message = rig.library.view().message;
        assert!(message.contains("using the shipped one"), "{message}");
        // A user style of that name would not stand in: only shipped ones do.
        *lock(&rig.params.style_choice) = StyleChoice {
            path: Some(PathBuf::from("/another/computer/a.safetensors")),
            name: "Alpha".into(),
        };
        rig.settle();
        assert_eq!(rig.requested(), None);
        assert!(rig.library.view().message.contains("“Alpha” is missing"));
        std::fs::remove_dir_all(&shipped).unwrap();
    }

    #[test]
    fn a_failed_model_load_changes_nothing() {
        let mut rig = Rig::new("badmodel");
        rig.settle();
        rig.set_style_param(4);
        rig.settle();
        let before = (
            rig.models.version(),
            rig.models.current_location(),
            lock(&rig.params.model).clone(),
        );
        rig.library.request_model(ModelChoice {
            weights: Some(rig.user.join("missing.safetensors")),
            config: "small".into(),
            quantize: None,
        });
        rig.settle();
        assert_eq!(
            (
                rig.models.version(),
                rig.models.current_location(),
                lock(&rig.params.model).clone()
            ),
            before
        );
        assert!(
            rig.library.view().message.starts_with("model not changed"),
            "{}",
            rig.library.view().message
        );
        assert_eq!(rig.requested().as_deref(), Some("Alpha"));
    }

    /// Another base (the tiny model's release `.pt` container) loads in the background; the
    /// style is loaded again for it and the choice is saved.
    #[test]
    fn a_new_model_gets_the_style_again() {
        let mut rig = Rig::new("newmodel");
        rig.settle();
        rig.set_style_param(4);
        rig.settle();
        let old = rig.models.current().unwrap();
        let choice = ModelChoice {
            weights: Some(golden().join("tiny_model_release_format_bf16.pt")),
            config: golden().join("tiny_config.json").display().to_string(),
            quantize: None,
        };
        rig.library.request_model(choice.clone());
        rig.settle();
        let new = rig.models.current().unwrap();
        assert!(!Arc::ptr_eq(&old, &new));
        assert_eq!(*lock(&rig.params.model), choice);
        let (name, _, made_for) = rig.styles.requested();
        assert_eq!(name.as_deref(), Some("Alpha"));
        assert!(std::ptr::eq(made_for.unwrap().as_ptr(), Arc::as_ptr(&new)));
        assert!(rig.library.view().message.starts_with("loaded"));
    }

    #[test]
    fn captured_answers_are_exported_into_the_user_folder() {
        let mut rig = Rig::new("export");
        rig.status.captures.file(CapturedAnswer {
            number: 0,
            style: "Zed".into(),
            tempo_bpm: 100.0,
            channel: 0,
            notes: vec![CapturedNote {
                start_beats: 0.0,
                end_beats: 1.0,
                key: 60,
                velocity: 0.8,
            }],
        });
        rig.library.request_export(1);
        rig.library.request_export(7);
        rig.settle();
        // One file, named after the style and the time, for answer #1.
        let written: Vec<_> = std::fs::read_dir(answers_folder(&rig.user))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(written.len(), 1, "{written:?}");
        let written = &written[0];
        let name = written.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with("continuo_zed_20") && name.ends_with("_answer-1.mid"),
            "{name}"
        );
        let notes = continuo_engine::midi::read_midi_file(written).unwrap();
        assert_eq!(notes.len(), 1);
        assert!(rig.library.view().message.contains("#7 is no longer kept"));
    }
}
