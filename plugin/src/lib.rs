//! Continuo: a CLAP/VST3 MIDI effect and instrument that answers the player with continuations
//! from the Moonbeam MIDI transformer.
//!
//! One folder per thread of a plugin instance, and beside them what the threads share:
//!
//! | module | thread | what it holds |
//! |---|---|---|
//! | [`audio`] | the host's audio thread | the real-time core: transport, answers, input, output, the schedule, the voice |
//! | [`generator`] | the generator thread | the thread and its trait, the Moonbeam generator, the warm session, note shaping |
//! | [`library`] | the loader thread (the only one doing file I/O) | the style catalogue, the model and style caches, the factory folder, capture export |
//! | [`editor`] | the GUI thread | the egui editor, its library panel and the piano roll's painting |
//! | [`protocol`] | (shared) | the messages between the audio and generator threads, the only thing they share |
//! | [`status`] | (shared) | counters, the editor snapshot, the note ring and the capture log |
//! | [`params`] | (shared) | the host parameters and the persisted choices |
//! | [`sync`] | not audio | poison-tolerant lock helpers |
//!
//! This file is the nice-plug glue: it owns the queues and the threads of one instance and starts
//! and stops them (the loader when the editor opens or on `activate()`, the generator on
//! `activate()`).

// The module docs link to the private modules they are about; they are meant to be read with
// `cargo doc --document-private-items`.
#![allow(rustdoc::private_intra_doc_links)]

pub mod audio;
pub mod editor;
pub mod generator;
pub mod library;
pub mod params;
pub mod protocol;
pub mod status;
pub mod sync;
#[cfg(test)]
mod testing;

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use nice_plug::prelude::*;
use nice_plug_egui::{EguiEditor, EguiEditorState};

use crate::audio::{BlockIo, Core, TransportSnapshot};
use crate::generator::{GeneratorThread, MoonbeamGenerator};
use crate::library::{Library, Loader, LoaderThread, ModelCache, StyleSlot};
use crate::params::ContinuoParams;
use crate::protocol::{FROM_ENGINE_CAPACITY, TO_ENGINE_CAPACITY};
use crate::status::{EditorSnapshot, EngineStatus, SharedStatus};

/// The CLAP plugin id. Host-facing: never change it.
pub const CLAP_ID: &str = "com.continuo.continuo";
/// The VST3 class id. Host-facing: never change it.
pub const VST3_CLASS_ID: [u8; 16] = *b"ContinuoMoonbeam";

/// The plugin description. Debug builds say so, which lets the host tests check that they drive
/// a bundle built with the allocation checks on.
const DESCRIPTION: &str = if cfg!(debug_assertions) {
    "Answers the player with continuations from the Moonbeam MIDI model (debug build, allocation checks on)"
} else {
    "Answers the player with continuations from the Moonbeam MIDI model"
};

/// One plugin instance.
pub struct Continuo {
    params: Arc<ContinuoParams>,
    /// Counters and flags shared with the generator thread and the editor.
    status: Arc<SharedStatus>,
    /// The audio-thread state. Touched only from `process()`, `reset()`, `activate()` and
    /// `deactivate()`, which the host never runs concurrently.
    core: Core,
    /// The generator thread; `Some` between `activate()` and `deactivate()`.
    generator: Option<GeneratorThread>,
    /// The loaded model, kept across activations (filled by the generator thread).
    models: Arc<ModelCache>,
    /// The style the generator should use (set by the loader thread).
    style: Arc<StyleSlot>,
    /// The style menu and the requests to the loader thread, shared with the editor.
    library: Arc<Library>,
    /// Loads styles and models in the background; started when the editor opens or on
    /// `activate()`, whichever comes first.
    loader: Option<LoaderThread>,
    /// The editor's end of the snapshot triple buffer. The mutex is only ever taken by the GUI
    /// thread (one editor at a time), never by the audio thread.
    snapshot: Arc<Mutex<triple_buffer::Output<EditorSnapshot>>>,
    editor_state: Arc<EguiEditorState>,
}

impl Default for Continuo {
    fn default() -> Self {
        let status = Arc::new(SharedStatus::default());
        let (snapshot_in, snapshot_out) = triple_buffer::triple_buffer(&EditorSnapshot::default());
        let params = Arc::new(ContinuoParams::default());
        Self {
            library: Arc::new(Library::new(params.style_names.clone())),
            loader: None,
            params,
            core: Core::new(status.clone(), snapshot_in),
            status,
            generator: None,
            models: Arc::new(ModelCache::default()),
            style: Arc::new(StyleSlot::default()),
            snapshot: Arc::new(Mutex::new(snapshot_out)),
            editor_state: editor::default_state(),
        }
    }
}

impl Continuo {
    /// Where to set the style the generator uses; it is swapped in between two decode steps and
    /// kept across activations.
    pub fn style_slot(&self) -> Arc<StyleSlot> {
        self.style.clone()
    }

    /// Starts the loader thread if it is not running. Called on the main thread.
    fn ensure_loader(&mut self) {
        if self.loader.is_some() {
            return;
        }
        let loader = Loader::new(
            self.params.clone(),
            self.library.clone(),
            self.models.clone(),
            self.style.clone(),
            self.status.clone(),
        );
        match LoaderThread::spawn(loader) {
            Ok(thread) => self.loader = Some(thread),
            // Styles cannot be switched, but the plugin still plays the base model.
            Err(error) => nice_error!("Could not start the style loader thread: {error}"),
        }
    }

    /// Stops and joins the generator thread. Called on the main thread.
    fn stop_generator(&mut self) {
        if let Some(mut generator) = self.generator.take() {
            generator.stop();
        }
        self.status.set_engine_status(EngineStatus::Stopped);
    }
}

impl Drop for Continuo {
    fn drop(&mut self) {
        self.stop_generator();
        if let Some(mut loader) = self.loader.take() {
            loader.stop();
        }
    }
}

/// nice-plug's process context as the core's event input and output.
struct ContextIo<'a, C: ProcessContext<Continuo>> {
    context: &'a mut C,
}

impl<C: ProcessContext<Continuo>> BlockIo for ContextIo<'_, C> {
    fn next_event(&mut self) -> Option<NoteEvent<()>> {
        self.context.next_event()
    }

    fn send(&mut self, event: NoteEvent<()>) -> bool {
        self.context.try_send_event(event).is_ok()
    }
}

impl Plugin for Continuo {
    const NAME: &'static str = "Continuo";
    const VENDOR: &'static str = "Continuo developers";
    const URL: &'static str = "https://example.invalid/continuo";
    const EMAIL: &'static str = "continuo@example.invalid";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    // A stereo output for the built-in voice. Some hosts (Ableton Live, FL Studio's Patcher)
    // refuse plugins without an audio output.
    const AUDIO_IO_LAYOUTS: &'static [AudioIOLayout] = &[AudioIOLayout {
        main_input_channels: None,
        main_output_channels: NonZeroU32::new(2),
        ..AudioIOLayout::const_default()
    }];

    // `MidiCCs` rather than `Basic`: a controller or the sustain pedal can trigger answers, and
    // with thru on every CC, pitch bend, channel pressure and program change is passed on
    // unchanged, which needs the same level on the output. (On VST3 this adds nice-plug's
    // 130 × 16 hidden MIDI-mapping parameters.)
    const MIDI_INPUT: MidiConfig = MidiConfig::MidiCCs;
    const MIDI_OUTPUT: MidiConfig = MidiConfig::MidiCCs;

    type SysExMessage = ();
    type BackgroundTask = ();
    type Editor = EguiEditor<editor::ContinuoEditor>;

    fn params(&self) -> Arc<dyn Params> {
        self.params.clone()
    }

    fn editor(&mut self, _async_executor: AsyncExecutor<Self>) -> Option<Self::Editor> {
        // The style menu needs the catalog, even before the plugin is activated.
        self.ensure_loader();
        editor::create(editor::EditorInputs {
            state: self.editor_state.clone(),
            params: self.params.clone(),
            status: self.status.clone(),
            snapshot: self.snapshot.clone(),
            library: self.library.clone(),
        })
    }

    /// Starts the generator thread. Called on the main thread.
    fn activate(
        &mut self,
        _audio_io_layout: &AudioIOLayout,
        buffer_config: &BufferConfig,
        _context: &mut impl ActivateContext<Self>,
    ) -> bool {
        self.stop_generator();
        self.ensure_loader();
        let (to_engine_in, to_engine_out) = rtrb::RingBuffer::new(TO_ENGINE_CAPACITY);
        let (from_engine_in, from_engine_out) = rtrb::RingBuffer::new(FROM_ENGINE_CAPACITY);
        // The model is loaded (or taken from `models`) on the generator thread, not here.
        match GeneratorThread::spawn(
            Box::new(MoonbeamGenerator::new(
                self.status.clone(),
                self.models.clone(),
                self.style.clone(),
            )),
            to_engine_out,
            from_engine_in,
            self.status.clone(),
        ) {
            Ok(thread) => self.generator = Some(thread),
            Err(error) => {
                // The plugin still passes MIDI through and plays its voice.
                nice_error!("Could not start the generator thread: {error}");
                self.status.set_engine_status(EngineStatus::Failed);
            }
        }
        self.core.activate(
            f64::from(buffer_config.sample_rate),
            to_engine_in,
            from_engine_out,
        );
        true
    }

    /// Called by the host, possibly on the audio thread: real-time safe.
    fn reset(&mut self) {
        self.core.reset();
    }

    /// Stops the generator thread. Called on the main thread.
    fn deactivate(&mut self) {
        self.stop_generator();
        self.core.deactivate();
    }

    /// Called on the audio thread: no allocation, no locks, no blocking.
    fn process(
        &mut self,
        buffer: &mut Buffer,
        _aux: &mut AuxiliaryBuffers,
        context: &mut impl ProcessContext<Self>,
    ) -> ProcessStatus {
        let settings = self.params.settings();
        let host_transport = context.transport();
        let transport = TransportSnapshot {
            playing: host_transport.playing,
            tempo_bpm: host_transport.tempo,
            pos_beats: host_transport.pos_beats(),
            bar_start_beats: host_transport.bar_start_pos_beats(),
            time_sig: host_transport
                .time_sig_numerator
                .zip(host_transport.time_sig_denominator),
        };
        let len = buffer.samples() as u32;
        let mut io = ContextIo { context };
        self.core
            .process(&mut io, len, &transport, &settings, buffer.as_slice());
        // Keep being processed while silent: generated notes arrive from another thread.
        ProcessStatus::KeepAlive
    }
}

impl ClapPlugin for Continuo {
    const CLAP_ID: &'static str = CLAP_ID;
    const CLAP_DESCRIPTION: Option<&'static str> = Some(DESCRIPTION);
    const CLAP_MANUAL_URL: Option<&'static str> = None;
    const CLAP_SUPPORT_URL: Option<&'static str> = None;
    const CLAP_FEATURES: &'static [ClapFeature] = &[
        ClapFeature::Instrument,
        ClapFeature::NoteEffect,
        ClapFeature::Stereo,
    ];
}

impl Vst3Plugin for Continuo {
    const VST3_CLASS_ID: [u8; 16] = VST3_CLASS_ID;
    const VST3_SUBCATEGORIES: &'static [Vst3SubCategory] =
        &[Vst3SubCategory::Instrument, Vst3SubCategory::Synth];
}

nice_export_clap!(Continuo);
nice_export_vst3!(Continuo);
