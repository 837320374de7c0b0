//! The egui editor: the controls, a trigger button and a status line.
//!
//! Runs on the GUI thread and does no blocking work: it reads atomics and the latest audio-thread
//! snapshot from the triple buffer, and changes parameters through nice-plug's `ParamSetter`.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nice_plug::context::gui::GuiContext;
use nice_plug::prelude::*;
use nice_plug_egui::widgets::ParamSlider;
use nice_plug_egui::{
    baseview, create_egui_editor, EguiEditor, EguiEditorState, EguiNiceSettings, Frame,
    RepaintNotifier,
};

use crate::library::Library;
use crate::library_ui::LibraryPanel;
use crate::params::ContinuoParams;
use crate::status::{EditorSnapshot, EngineInfo, SharedStatus};

const WIDTH: u32 = 440;
const HEIGHT: u32 = 660;
/// How often the status line refreshes while the editor is open.
const REFRESH: Duration = Duration::from_millis(100);

pub fn default_state() -> Arc<EguiEditorState> {
    EguiEditorState::from_size(nice_plug::editor::dpi::LogicalSize::new(WIDTH, HEIGHT), 1.0)
}

/// Creates the editor. Called on the main thread when the host opens the editor.
pub fn create(
    state: Arc<EguiEditorState>,
    params: Arc<ContinuoParams>,
    status: Arc<SharedStatus>,
    snapshot: Arc<Mutex<triple_buffer::Output<EditorSnapshot>>>,
    library: Arc<Library>,
) -> Option<EguiEditor<ContinuoEditor>> {
    create_egui_editor(
        state,
        RepaintNotifier::new(),
        EguiNiceSettings::new().with_tile("Continuo"),
        ContinuoEditor {
            params,
            status,
            snapshot,
            library: LibraryPanel::new(library),
            gui: None,
            engine_info: EngineInfo::default(),
        },
    )
}

pub struct ContinuoEditor {
    params: Arc<ContinuoParams>,
    status: Arc<SharedStatus>,
    snapshot: Arc<Mutex<triple_buffer::Output<EditorSnapshot>>>,
    /// The style menu, user folder, model choice and captured answers.
    library: LibraryPanel,
    gui: Option<GuiContext>,
    /// The model and error texts last read from the generator.
    engine_info: EngineInfo,
}

impl nice_plug_egui::NiceEguiApp for ContinuoEditor {
    fn build(
        &mut self,
        _egui_ctx: egui::Context,
        gui: GuiContext,
        _frame: &mut Frame,
    ) -> Result<(), baseview::HandlerError> {
        self.gui = Some(gui);
        Ok(())
    }

    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut Frame) {
        let Some(gui) = &self.gui else { return };
        let setter = gui.param_setter();
        let params = &self.params;
        // Only this editor ever takes the lock, so it is never contended in practice; `try_lock`
        // keeps the GUI thread from ever waiting all the same.
        let snapshot = match self.snapshot.try_lock() {
            Ok(mut output) => *output.read(),
            Err(_) => EditorSnapshot::default(),
        };
        let counters = self.status.counters();

        if let Some(info) = self.status.try_engine_info() {
            self.engine_info = info;
        }
        let (ms_per_note, first_note_ms) = self.status.timings_ms();
        let ms = |v: Option<f64>| v.map_or_else(|| "–".to_string(), |v| format!("{v:.1} ms"));

        ui.heading("Continuo");
        ui.label(format!("model: {}", self.engine_info.model));
        ui.label(format!(
            "per generated note: {} · trigger to first note: {}",
            ms(ms_per_note),
            ms(first_note_ms),
        ));
        if !self.engine_info.last_error.is_empty() {
            ui.colored_label(
                egui::Color32::from_rgb(230, 110, 90),
                format!("last error: {}", self.engine_info.last_error),
            );
        }
        ui.label(format!(
            "engine: {} · {} · {}",
            self.status.engine_status().label(),
            snapshot.answer_state.label(),
            if snapshot.playing {
                format!(
                    "playing {:.1} BPM, beat {:.2}",
                    snapshot.tempo_bpm, snapshot.pos_beats
                )
            } else {
                format!("stopped, {:.1} BPM", snapshot.tempo_bpm)
            },
        ));
        ui.label(format!(
            "late (dropped): {} · dropped: {} · generated: {} · answers: {}",
            counters.late_notes,
            counters.dropped_total(),
            counters.generated_notes_played,
            counters.answers_triggered,
        ));
        ui.label(format!(
            "held: {} · sounding out: {} · scheduled: {} · voices: {} · silent {:.1} beats",
            snapshot.held_player_notes,
            snapshot.sounding_output_notes,
            snapshot.scheduled_notes,
            snapshot.active_voices,
            snapshot.silence_beats.min(999.0),
        ));
        if ui.button("Trigger answer").clicked() {
            self.status.trigger_request.store(true, Ordering::Relaxed);
        }
        ui.separator();
        self.library.ui(ui, params, &setter, &self.status);
        ui.separator();

        egui::Grid::new("params")
            .num_columns(2)
            .spacing([12.0, 6.0])
            .show(ui, |ui| {
                fn row<P: Param>(ui: &mut egui::Ui, param: &P, setter: &ParamSetter) {
                    ui.label(param.name());
                    ui.add(ParamSlider::for_param(param, setter));
                    ui.end_row();
                }
                row(ui, &params.bypass, &setter);
                row(ui, &params.mode, &setter);
                row(ui, &params.thru, &setter);
                row(ui, &params.voice, &setter);
                row(ui, &params.out_channel, &setter);
                row(ui, &params.answer_bars, &setter);
                row(ui, &params.silence_beats, &setter);
                row(ui, &params.temperature, &setter);
                row(ui, &params.top_p, &setter);
                row(ui, &params.seed, &setter);
                row(ui, &params.style_strength, &setter);
                row(ui, &params.velocity_scale, &setter);
                row(ui, &params.pitch_low, &setter);
                row(ui, &params.pitch_high, &setter);
                row(ui, &params.density_cap, &setter);
                row(ui, &params.quantize, &setter);
                row(ui, &params.swing, &setter);
                row(ui, &params.scale_root, &setter);
                row(ui, &params.scale, &setter);
                row(ui, &params.trigger_source, &setter);
                row(ui, &params.trigger_note, &setter);
                row(ui, &params.trigger_cc, &setter);
            });
        ui.ctx().request_repaint_after(REFRESH);
    }

    fn editor_closed(&mut self) {
        self.gui = None;
    }
}
