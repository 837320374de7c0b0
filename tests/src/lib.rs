//! End-to-end test support for Continuo: a small but real CLAP host (clack-host) that loads the
//! built `Continuo.clap` bundle and drives it block by block, the way a DAW does.
//!
//! The bundle must be built first with `cargo xtask bundle continuo` (debug, so nice-plug's
//! allocation check aborts on any allocation in `process()`). [`bundle_path`] finds it next to
//! the test binary's target directory and refuses a missing or stale one with a message saying
//! what to run; it does not build it itself, because the outer `cargo test` holds the build
//! directory lock while tests run.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use anyhow::{bail, ensure, Context, Result};
use clack_extensions::audio_ports::{AudioPortInfoBuffer, PluginAudioPorts};
use clack_extensions::note_ports::PluginNotePorts;
use clack_extensions::params::{ParamInfoBuffer, PluginParams};
use clack_extensions::state::PluginState;
use clack_host::events::event_types::{
    NoteChokeEvent, NoteOffEvent, NoteOnEvent, ParamValueEvent, TransportEvent, TransportFlags,
};
use clack_host::events::spaces::CoreEventSpace;
use clack_host::events::{EventFlags, EventHeader, Match};
use clack_host::prelude::*;
use clack_host::utils::BeatTime;

/// The plugin id the bundle exports.
pub const CLAP_ID: &str = "com.continuo.continuo";

/// Where the bundle is, overridable with `CONTINUO_CLAP_BUNDLE`.
///
/// Fails with instructions if the bundle is missing or older than the plugin's sources.
pub fn bundle_path() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("CONTINUO_CLAP_BUNDLE") {
        return Ok(PathBuf::from(path));
    }
    let target_dir = target_dir()?;
    let path = target_dir.join("bundled").join("Continuo.clap");
    let build = format!(
        "run `CARGO_TARGET_DIR={} cargo xtask bundle continuo` (a debug build) first",
        target_dir.display()
    );
    ensure!(path.exists(), "{} does not exist: {build}", path.display());
    let bundle_time = std::fs::metadata(&path)?.modified()?;
    let plugin_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugin");
    if let Some(newest) = newest_modification(&plugin_dir)? {
        ensure!(
            newest <= bundle_time,
            "{} is older than the plugin sources in {}: {build}",
            path.display(),
            plugin_dir.display()
        );
    }
    Ok(path)
}

/// The cargo target directory this test binary was built into: `<target>/<profile>/deps/<exe>`.
fn target_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let from_exe = exe.parent().and_then(Path::parent).and_then(Path::parent);
    match from_exe {
        Some(dir) if dir.join("CACHEDIR.TAG").exists() || dir.join("bundled").exists() => {
            Ok(dir.to_path_buf())
        }
        _ => Ok(std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))),
    }
}

fn newest_modification(dir: &Path) -> Result<Option<SystemTime>> {
    let mut newest = None;
    for entry in
        std::fs::read_dir(dir).with_context(|| format!("Could not read {}", dir.display()))?
    {
        let entry = entry?;
        let modified = if entry.file_type()?.is_dir() {
            newest_modification(&entry.path())?
        } else {
            Some(entry.metadata()?.modified()?)
        };
        newest = newest.max(modified);
    }
    Ok(newest)
}

/// nice-plug's parameter hash: CLAP parameter ids are derived from the string ids.
pub fn param_id(string_id: &str) -> ClapId {
    let mut hash: u32 = 0;
    for byte in string_id.bytes() {
        hash = hash.wrapping_mul(31).wrapping_add(u32::from(byte));
    }
    ClapId::new(hash & !(1 << 31))
}

pub struct TestHostShared {
    callback_requested: AtomicBool,
}

impl SharedHandler<'_> for TestHostShared {
    fn request_restart(&self) {}
    fn request_process(&self) {}
    fn request_callback(&self) {
        self.callback_requested.store(true, Ordering::Release);
    }
}

pub struct TestHost;

impl HostHandlers for TestHost {
    type Shared<'a> = TestHostShared;
    type MainThread<'a> = ();
    type AudioProcessor<'a> = ();
}

/// An input event for [`Harness::process`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum In {
    On {
        time: u32,
        channel: u16,
        key: u16,
        velocity: f64,
    },
    Off {
        time: u32,
        channel: u16,
        key: u16,
    },
    Choke {
        time: u32,
        channel: u16,
        key: u16,
    },
    /// A parameter change; `value` is the CLAP plain value (the step index for stepped params).
    Param {
        time: u32,
        id: &'static str,
        value: f64,
    },
}

impl In {
    pub fn on(time: u32, key: u16) -> Self {
        Self::On {
            time,
            channel: 0,
            key,
            velocity: 0.8,
        }
    }

    pub fn off(time: u32, key: u16) -> Self {
        Self::Off {
            time,
            channel: 0,
            key,
        }
    }

    pub fn param(time: u32, id: &'static str, value: f64) -> Self {
        Self::Param { time, id, value }
    }

    pub fn time(&self) -> u32 {
        match *self {
            Self::On { time, .. }
            | Self::Off { time, .. }
            | Self::Choke { time, .. }
            | Self::Param { time, .. } => time,
        }
    }
}

/// See [`Harness::gui_facts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuiFacts {
    pub can_resize: bool,
    pub both_axes: bool,
    pub size: Option<(u32, u32)>,
}

/// A note event the plugin sent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Out {
    pub time: u32,
    pub is_on: bool,
    pub channel: i16,
    pub key: i16,
    pub note_id: i32,
    pub velocity: f64,
}

/// The host's transport, advanced by every processed block while playing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HostTransport {
    pub playing: bool,
    pub tempo_bpm: f64,
    pub pos_beats: f64,
}

/// Room in the host's output event buffer. The host side must never grow it during `process()`:
/// that allocation would happen inside the plugin's allocation check.
const OUT_EVENT_CAPACITY: usize = 1 << 16;

/// One loaded plugin instance, activated or not.
pub struct Harness {
    // NOTE: Field order is drop order: the processor and instance go before the entry.
    processor: Option<StartedPluginAudioProcessor<TestHost>>,
    instance: PluginInstance<TestHost>,
    _entry: PluginEntry,
    pub sample_rate: f64,
    max_frames: u32,
    left: Vec<f32>,
    right: Vec<f32>,
    in_events: EventBuffer,
    out_events: EventBuffer,
    steady_time: u64,
    pub transport: Option<HostTransport>,
    /// Running count of note-ons minus note-offs sent by the plugin, per (channel, key).
    pub sounding: BTreeMap<(i16, i16), i64>,
    /// Note-offs the plugin sent for notes that were not sounding.
    pub unmatched_note_offs: u64,
    /// Largest absolute sample seen in the audio output.
    pub audio_peak: f32,
}

/// The golden files (`engine/testdata/golden`), whose tiny model and adapter the host tests load.
pub fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../engine/testdata/golden")
}

/// Points the plugin's model variables at the tiny golden test model unless `CONTINUO_MODEL` is
/// set. Every test sets the same values, so tests running in parallel agree.
fn use_tiny_model_unless_set() {
    if std::env::var_os("CONTINUO_MODEL").is_some_and(|m| !m.is_empty()) {
        return;
    }
    let golden = golden_dir();
    std::env::set_var("CONTINUO_MODEL", golden.join("tiny_model.safetensors"));
    std::env::set_var("CONTINUO_CONFIG", golden.join("tiny_config.json"));
}

/// Preset names of the test styles [`use_test_styles`] makes, in menu order (`style` values 1
/// and 2).
pub const TEST_STYLES: [&str; 2] = ["Tiny A", "Tiny B"];

/// Makes two styles for the tiny golden model (the golden peft adapter, at two strengths) in a
/// temporary folder, points the plugin's shipped-styles folder (`CONTINUO_STYLES`) at it and its
/// user folder (`XDG_DATA_HOME`) at an empty one, unless `CONTINUO_STYLES` is set. The shipped
/// styles belong to the bundled base and would be refused by the tiny model. Returns the folder.
pub fn use_test_styles() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("CONTINUO_STYLES").filter(|d| !d.is_empty()) {
            return PathBuf::from(dir);
        }
        let root = std::env::temp_dir().join(format!("continuo-tests-{}", std::process::id()));
        let styles = root.join("styles");
        std::fs::create_dir_all(&styles).expect("temp folder");
        std::fs::create_dir_all(root.join("data")).expect("temp folder");
        let golden = golden_dir();
        let cfg = continuo_engine::Config::from_file(&golden.join("tiny_config.json"))
            .expect("tiny config");
        for (i, name) in TEST_STYLES.iter().enumerate() {
            let mut adapter =
                continuo_engine::Adapter::from_peft_dir(&golden.join("lora_adapter"), &cfg)
                    .expect("golden adapter");
            adapter.alpha *= 1.0 + 2.0 * i as f64;
            let card = continuo_engine::StyleCard {
                base_model: "tiny".into(),
                ..continuo_engine::StyleCard::new(*name, "a test style for the tiny golden model")
            };
            let path = styles.join(format!("tiny-{i}.safetensors"));
            continuo_engine::style::save_style(&path, &adapter, &card).expect("test style");
        }
        std::env::set_var("CONTINUO_STYLES", &styles);
        std::env::set_var("XDG_DATA_HOME", root.join("data"));
        styles
    })
    .clone()
}

impl Harness {
    /// Loads the bundle and instantiates the plugin (not yet activated).
    ///
    /// The plugin's generator thread runs Moonbeam. Unless `CONTINUO_MODEL` is already set, the
    /// tests pin it to the tiny golden test model (random weights, fast in a debug build), so they
    /// do not depend on whether the bundled model exists; set `CONTINUO_MODEL` and
    /// `CONTINUO_CONFIG` to drive the bundle with another model.
    pub fn load() -> Result<Self> {
        use_tiny_model_unless_set();
        use_test_styles();
        let path = bundle_path()?;
        // SAFETY: loading a CLAP bundle runs its initialisation code; this is the bundle built
        // from this workspace.
        let entry = unsafe { PluginEntry::load(&path) }
            .with_context(|| format!("Could not load {}", path.display()))?;
        let host_info = HostInfo::new(
            "continuo-tests",
            "Continuo",
            "https://example.invalid",
            "0.1",
        )?;
        let id = CString::new(CLAP_ID)?;
        let instance = PluginInstance::<TestHost>::new(
            |_| TestHostShared {
                callback_requested: AtomicBool::new(false),
            },
            |_| (),
            &entry,
            &id,
            &host_info,
        )?;
        Ok(Self {
            processor: None,
            instance,
            _entry: entry,
            sample_rate: 48_000.0,
            max_frames: 0,
            left: Vec::new(),
            right: Vec::new(),
            in_events: EventBuffer::with_capacity(4096),
            out_events: EventBuffer::with_capacity(OUT_EVENT_CAPACITY),
            steady_time: 0,
            transport: None,
            sounding: BTreeMap::new(),
            unmatched_note_offs: 0,
            audio_peak: 0.0,
        })
    }

    /// Loads and activates with the given sample rate and maximum block size.
    pub fn start(sample_rate: f64, max_frames: u32) -> Result<Self> {
        let mut harness = Self::load()?;
        harness.activate(sample_rate, max_frames)?;
        Ok(harness)
    }

    pub fn activate(&mut self, sample_rate: f64, max_frames: u32) -> Result<()> {
        ensure!(self.processor.is_none(), "already active");
        let stopped = self.instance.activate(
            |_, _| (),
            PluginAudioConfiguration {
                sample_rate,
                min_frames_count: 1,
                max_frames_count: max_frames,
            },
        )?;
        self.processor = Some(
            stopped
                .start_processing()
                .map_err(|e| anyhow::anyhow!("{e:?}"))?,
        );
        self.sample_rate = sample_rate;
        self.max_frames = max_frames;
        self.left = vec![0.0; max_frames as usize];
        self.right = vec![0.0; max_frames as usize];
        self.service_main_thread();
        Ok(())
    }

    pub fn deactivate(&mut self) {
        if let Some(processor) = self.processor.take() {
            let stopped = processor.stop_processing();
            self.instance.deactivate(stopped);
        }
        self.service_main_thread();
    }

    /// Runs the plugin's main-thread callback if it asked for one.
    pub fn service_main_thread(&mut self) {
        let requested = self.instance.access_shared_handler(|shared| {
            shared.callback_requested.swap(false, Ordering::AcqRel)
        });
        if requested {
            self.instance.call_on_main_thread_callback();
        }
    }

    /// Processes one block of `frames` samples with the given (time-sorted) input events and
    /// returns the note events the plugin sent, checking that they are in time order and inside
    /// the block, and keeping [`Harness::sounding`] up to date.
    pub fn process(&mut self, frames: u32, events: &[In]) -> Result<Vec<Out>> {
        ensure!(
            frames >= 1 && frames <= self.max_frames,
            "bad block size {frames}"
        );
        self.in_events.clear();
        for event in events {
            match *event {
                In::On {
                    time,
                    channel,
                    key,
                    velocity,
                } => self.in_events.push(&NoteOnEvent::new(
                    time,
                    Pckn::new(0u16, channel, key, Match::All),
                    velocity,
                )),
                In::Off { time, channel, key } => self.in_events.push(&NoteOffEvent::new(
                    time,
                    Pckn::new(0u16, channel, key, Match::All),
                    0.0,
                )),
                In::Choke { time, channel, key } => self.in_events.push(&NoteChokeEvent::new(
                    time,
                    Pckn::new(0u16, channel, key, Match::All),
                )),
                In::Param { time, id, value } => self.in_events.push(&ParamValueEvent::new(
                    time,
                    param_id(id),
                    Pckn::match_all(),
                    value,
                )),
            }
        }
        self.in_events.sort();
        self.out_events.clear();
        let transport = self.transport.map(|t| transport_event(t, self.sample_rate));
        let processor = self.processor.as_mut().context("not active")?;
        let input = InputAudioBuffers::empty();
        let left = &mut self.left[..frames as usize];
        let right = &mut self.right[..frames as usize];
        let mut ports = AudioPorts::with_capacity(2, 1);
        let mut output = ports.with_output_buffers([AudioPortBuffer {
            latency: 0,
            channels: AudioPortBufferType::f32_output_only([left, right].into_iter()),
        }]);
        processor
            .process(
                &input,
                &mut output,
                &InputEvents::from_buffer(&self.in_events),
                &mut OutputEvents::from_buffer(&mut self.out_events),
                Some(self.steady_time),
                transport.as_ref(),
            )
            .map_err(|e| anyhow::anyhow!("process failed: {e:?}"))?;
        self.steady_time += u64::from(frames);
        if let Some(t) = &mut self.transport {
            if t.playing {
                t.pos_beats += f64::from(frames) / self.sample_rate * t.tempo_bpm / 60.0;
            }
        }
        self.audio_peak = self.left[..frames as usize]
            .iter()
            .chain(&self.right[..frames as usize])
            .fold(self.audio_peak, |peak, x| {
                if x.is_finite() {
                    peak.max(x.abs())
                } else {
                    f32::INFINITY
                }
            });
        ensure!(
            (self.out_events.len() as usize) < OUT_EVENT_CAPACITY / 2,
            "the plugin sent {} events in one block",
            self.out_events.len()
        );

        let mut out = Vec::new();
        let mut last_time = 0;
        for event in self.out_events.iter() {
            let time = event.header().time();
            ensure!(
                time >= last_time,
                "output events out of order: {time} after {last_time}"
            );
            ensure!(
                time < frames,
                "output event at {time} in a block of {frames}"
            );
            last_time = time;
            let (is_on, pckn, velocity) = match event.as_core_event() {
                Some(CoreEventSpace::NoteOn(e)) => (true, e.pckn(), e.velocity()),
                Some(CoreEventSpace::NoteOff(e)) => (false, e.pckn(), e.velocity()),
                _ => continue,
            };
            let note = Out {
                time,
                is_on,
                channel: pckn.raw_channel(),
                key: pckn.raw_key(),
                note_id: pckn.raw_note_id(),
                velocity,
            };
            let count = self.sounding.entry((note.channel, note.key)).or_default();
            if is_on {
                *count += 1;
            } else if *count > 0 {
                *count -= 1;
            } else {
                self.unmatched_note_offs += 1;
            }
            out.push(note);
        }
        self.service_main_thread();
        Ok(out)
    }

    /// Processes `blocks` empty blocks of `frames` samples and returns all output, with times
    /// counted from the first of them.
    pub fn run(&mut self, blocks: u32, frames: u32) -> Result<Vec<Out>> {
        let mut all = Vec::new();
        for block in 0..blocks {
            for mut note in self.process(frames, &[])? {
                note.time += block * frames;
                all.push(note);
            }
        }
        Ok(all)
    }

    /// Output notes still sounding (note-ons without their note-off).
    pub fn stuck_notes(&self) -> Vec<((i16, i16), i64)> {
        self.sounding
            .iter()
            .filter(|(_, n)| **n != 0)
            .map(|(k, n)| (*k, *n))
            .collect()
    }

    pub fn params(&mut self) -> Result<PluginParams> {
        self.instance
            .plugin_handle()
            .get_extension()
            .context("no params extension")
    }

    /// `(string id, CLAP info)` for every parameter: `(name, min, max, default, is_stepped)`.
    pub fn param_infos(&mut self) -> Result<Vec<ParamSummary>> {
        let params = self.params()?;
        let handle = self.instance.plugin_handle();
        let mut infos = Vec::new();
        for index in 0..params.count(&handle) {
            let mut buffer = ParamInfoBuffer::new();
            let info = params
                .get_info(&handle, index, &mut buffer)
                .context("no param info")?;
            infos.push(ParamSummary {
                id: info.id,
                name: String::from_utf8_lossy(info.name).into_owned(),
                min: info.min_value,
                max: info.max_value,
                default: info.default_value,
                stepped: info
                    .flags
                    .contains(clack_extensions::params::ParamInfoFlags::IS_STEPPED),
            });
        }
        Ok(infos)
    }

    pub fn param_value(&mut self, string_id: &str) -> Result<f64> {
        let params = self.params()?;
        let handle = self.instance.plugin_handle();
        params
            .get_value(&handle, param_id(string_id))
            .context("no value")
    }

    /// The saved state as JSON (nice-plug's CLAP state is a little-endian `u64` length, then
    /// the JSON with `params` and `fields`).
    pub fn state_json(&mut self) -> Result<serde_json::Value> {
        let bytes = self.save_state()?;
        ensure!(bytes.len() >= 8, "state too short");
        let len = u64::from_le_bytes(bytes[..8].try_into()?) as usize;
        ensure!(
            bytes.len() == 8 + len,
            "state length {len} but {} bytes",
            bytes.len()
        );
        Ok(serde_json::from_slice(&bytes[8..])?)
    }

    /// Loads a state given as JSON (see [`Harness::state_json`]).
    pub fn load_state_json(&mut self, json: &serde_json::Value) -> Result<()> {
        let text = serde_json::to_vec(json)?;
        let mut bytes = (text.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(&text);
        self.load_state(&bytes)
    }

    /// A persisted field of the saved state, parsed (nice-plug stores each as a JSON string).
    pub fn state_field(&mut self, key: &str) -> Result<serde_json::Value> {
        let state = self.state_json()?;
        let text = state["fields"][key]
            .as_str()
            .with_context(|| format!("no field {key} in {state}"))?;
        Ok(serde_json::from_str(text)?)
    }

    /// What the plugin's CLAP gui extension says without opening a window: whether the host
    /// may resize the editor, whether both axes may change, and its size.
    pub fn gui_facts(&mut self) -> Result<GuiFacts> {
        let gui: clack_extensions::gui::PluginGui = self
            .instance
            .plugin_handle()
            .get_extension()
            .context("no gui extension")?;
        let handle = self.instance.plugin_handle();
        let can_resize = gui.can_resize(&handle);
        let hints = gui.get_resize_hints(&handle);
        let size = gui.get_size(&handle).map(|s| (s.width, s.height));
        Ok(GuiFacts {
            can_resize,
            both_axes: hints.is_some_and(|h| h.can_resize_horizontally && h.can_resize_vertically),
            size,
        })
    }

    pub fn save_state(&mut self) -> Result<Vec<u8>> {
        let state: PluginState = self
            .instance
            .plugin_handle()
            .get_extension()
            .context("no state")?;
        let mut bytes = Vec::new();
        state.save(&self.instance.plugin_handle(), &mut bytes)?;
        Ok(bytes)
    }

    pub fn load_state(&mut self, bytes: &[u8]) -> Result<()> {
        let state: PluginState = self
            .instance
            .plugin_handle()
            .get_extension()
            .context("no state")?;
        state.load(&self.instance.plugin_handle(), &mut Cursor::new(bytes))?;
        Ok(())
    }

    /// Note input ports, note output ports, audio input ports, and the channel count of each
    /// audio output port.
    pub fn ports(&mut self) -> Result<(u32, u32, u32, Vec<u32>)> {
        let handle = self.instance.plugin_handle();
        let note_ports: PluginNotePorts = handle.get_extension().context("no note-ports")?;
        let audio_ports: PluginAudioPorts = handle.get_extension().context("no audio-ports")?;
        let mut outputs = Vec::new();
        for index in 0..audio_ports.count(&handle, false) {
            let mut buffer = AudioPortInfoBuffer::new();
            let info = audio_ports
                .get(&handle, index, false, &mut buffer)
                .context("no port info")?;
            outputs.push(info.channel_count);
        }
        Ok((
            note_ports.count(&handle, true),
            note_ports.count(&handle, false),
            audio_ports.count(&handle, true),
            outputs,
        ))
    }

    /// The plugin's CLAP description and features.
    pub fn descriptor(&self) -> Result<(String, Vec<String>)> {
        let factory = self
            ._entry
            .get_plugin_factory()
            .context("no plugin factory")?;
        for descriptor in factory.plugin_descriptors() {
            if descriptor
                .id()
                .is_some_and(|id| id.to_bytes() == CLAP_ID.as_bytes())
            {
                let description = descriptor
                    .description()
                    .map(|d| d.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let features = descriptor
                    .features()
                    .map(|f| f.to_string_lossy().into_owned())
                    .collect();
                return Ok((description, features));
            }
        }
        bail!("{CLAP_ID} not found in the factory")
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.deactivate();
    }
}

/// A parameter as the host sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSummary {
    pub id: ClapId,
    pub name: String,
    pub min: f64,
    pub max: f64,
    pub default: f64,
    pub stepped: bool,
}

fn transport_event(t: HostTransport, _sample_rate: f64) -> TransportEvent {
    let mut flags = TransportFlags::HAS_TEMPO
        | TransportFlags::HAS_BEATS_TIMELINE
        | TransportFlags::HAS_TIME_SIGNATURE;
    if t.playing {
        flags |= TransportFlags::IS_PLAYING;
    }
    let bar = (t.pos_beats / 4.0).floor();
    TransportEvent {
        header: EventHeader::new_core(0, EventFlags::empty()),
        flags,
        song_pos_beats: BeatTime::from_float(t.pos_beats),
        song_pos_seconds: BeatTime::from_float(t.pos_beats * 60.0 / t.tempo_bpm),
        tempo: t.tempo_bpm,
        tempo_inc: 0.0,
        loop_start_beats: BeatTime::from_int(0),
        loop_end_beats: BeatTime::from_int(0),
        loop_start_seconds: BeatTime::from_int(0),
        loop_end_seconds: BeatTime::from_int(0),
        bar_start: BeatTime::from_float(bar * 4.0),
        bar_number: bar as i32,
        time_signature_numerator: 4,
        time_signature_denominator: 4,
    }
}
