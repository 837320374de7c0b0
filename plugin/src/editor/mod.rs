//! The egui editor: the status lines, a live piano roll, a trigger button and the controls.
//!
//! **Thread:** the GUI thread. **May touch:** the atomics of [`SharedStatus`] and the latest
//! audio-thread snapshot from the triple buffer (read), the parameters through nice-plug's
//! `ParamSetter`, and the loader's [`Library`] (requests, never waiting for it). It does no
//! blocking work and no file I/O.
//!
//! What the roll shows is computed by [`roll::layout`]; this module only paints it. The style,
//! model and capture panel is `library_panel`.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod library_panel;
pub mod roll;

use nice_plug::context::gui::GuiContext;
use nice_plug::prelude::*;
use nice_plug_egui::widgets::ParamSlider;
use nice_plug_egui::{
    baseview, create_egui_editor, EguiEditor, EguiEditorState, EguiNiceSettings, Frame,
    RepaintNotifier,
};

use crate::library::Library;
use crate::params::ContinuoParams;
use crate::status::NoteSource;
use crate::status::{EditorSnapshot, EngineInfo, SharedStatus};
use library_panel::LibraryPanel;
use roll::RollWindow;

const WIDTH: u32 = 520;
const HEIGHT: u32 = 900;
/// How often the editor repaints while the roll moves: about 30 frames per second, so it
/// scrolls smoothly.
const REFRESH_MOVING: Duration = Duration::from_millis(33);
/// How often it repaints otherwise, for the status lines.
const REFRESH: Duration = Duration::from_millis(100);
/// Height of the piano roll in points.
const ROLL_HEIGHT: f32 = 180.0;
/// Notes the musician played.
const PLAYED_COLOUR: egui::Color32 = egui::Color32::from_rgb(90, 170, 250);
/// Notes the model generated.
const GENERATED_COLOUR: egui::Color32 = egui::Color32::from_rgb(250, 165, 60);
const ERROR_COLOUR: egui::Color32 = egui::Color32::from_rgb(230, 110, 90);

pub fn default_state() -> Arc<EguiEditorState> {
    EguiEditorState::from_size(nice_plug::editor::dpi::LogicalSize::new(WIDTH, HEIGHT), 1.0)
}

/// Everything the editor shares with the plugin, each behind an `Arc` the plugin keeps.
#[derive(Clone)]
pub struct EditorInputs {
    /// The window's size and open state (persisted by nice-plug).
    pub state: Arc<EguiEditorState>,
    pub params: Arc<ContinuoParams>,
    /// Counters and the generator's status, written by the other threads.
    pub status: Arc<SharedStatus>,
    /// The editor's end of the audio thread's snapshot triple buffer. Only the GUI thread takes
    /// the mutex (one editor at a time), never the audio thread.
    pub snapshot: Arc<Mutex<triple_buffer::Output<EditorSnapshot>>>,
    /// The style menu and the requests to the loader thread.
    pub library: Arc<Library>,
}

/// Creates the editor. Called on the main thread when the host opens the editor.
pub fn create(inputs: EditorInputs) -> Option<EguiEditor<ContinuoEditor>> {
    let EditorInputs {
        state,
        params,
        status,
        snapshot,
        library,
    } = inputs;
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

impl ContinuoEditor {
    fn contents(&mut self, ui: &mut egui::Ui) {
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
        ui.label(model_line(&self.engine_info));
        ui.label(format!(
            "per generated note: {} · trigger to first note: {}",
            ms(ms_per_note),
            ms(first_note_ms),
        ));
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
        if self.engine_info.last_error.is_empty() {
            ui.weak(error_line(&self.engine_info));
        } else {
            ui.colored_label(ERROR_COLOUR, error_line(&self.engine_info));
        }
        let roll_moving = draw_roll(ui, &snapshot);
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
        ui.ctx()
            .request_repaint_after(if roll_moving { REFRESH_MOVING } else { REFRESH });
    }
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
        // Everything scrolls, so nothing is cut off at small window sizes or large UI scales.
        egui::ScrollArea::vertical()
            .auto_shrink([false; 2])
            .show(ui, |ui| self.contents(ui));
    }

    fn editor_closed(&mut self) {
        self.gui = None;
    }
}

/// "model: … · style: …"; the style is "base model" when none is in use.
fn model_line(info: &EngineInfo) -> String {
    let model = if info.model.is_empty() {
        "–"
    } else {
        &info.model
    };
    let style = if info.style.is_empty() {
        "base model"
    } else {
        &info.style
    };
    format!("model: {model} · style: {style}")
}

fn error_line(info: &EngineInfo) -> String {
    if info.last_error.is_empty() {
        "last error: none".to_string()
    } else {
        format!("last error: {}", info.last_error)
    }
}

/// Paints the piano roll for `snapshot` across the available width, with a legend below.
/// Returns whether it moves (notes in view, or the transport playing).
fn draw_roll(ui: &mut egui::Ui, snapshot: &EditorSnapshot) -> bool {
    use egui::{pos2, Align2, Color32, FontId, Rect, Stroke, StrokeKind};

    let window = RollWindow::DEFAULT;
    let layout = roll::layout(snapshot, &window);
    let (rect, _) = ui.allocate_exact_size(
        egui::vec2(ui.available_width(), ROLL_HEIGHT),
        egui::Sense::hover(),
    );
    let painter = ui.painter_at(rect);
    painter.rect_filled(rect, 2.0, Color32::from_gray(28));
    let x = |u: f32| rect.left() + u * rect.width();
    let y = |v: f32| rect.top() + v * rect.height();

    // Black-key rows a shade darker; then every C named at the left edge, just above its row
    // (the top row, always a C, has no room above it).
    let rows = f32::from(layout.key_high - layout.key_low) + 1.0;
    let row_bottom = |key: u8| y(f32::from(layout.key_high - key + 1) / rows);
    for key in layout.key_low..=layout.key_high {
        if matches!(key % 12, 1 | 3 | 6 | 8 | 10) {
            painter.rect_filled(
                Rect::from_min_max(
                    pos2(rect.left(), row_bottom(key) - rect.height() / rows),
                    pos2(rect.right(), row_bottom(key)),
                ),
                0.0,
                Color32::from_gray(22),
            );
        }
    }
    for key in (layout.key_low..layout.key_high).filter(|key| key % 12 == 0) {
        painter.text(
            pos2(rect.left() + 2.0, row_bottom(key)),
            Align2::LEFT_BOTTOM,
            note_name(key),
            FontId::monospace(10.0),
            Color32::from_gray(130),
        );
    }
    for line in &layout.grid {
        let gray = if line.is_bar { 95 } else { 50 };
        painter.vline(
            x(line.x),
            rect.y_range(),
            Stroke::new(1.0, Color32::from_gray(gray)),
        );
    }
    for note in &layout.rects {
        let base = match note.source {
            NoteSource::Played => PLAYED_COLOUR,
            NoteSource::Generated => GENERATED_COLOUR,
        };
        let alpha = 90 + (u16::from(note.velocity) * 165 / 127) as u8;
        let colour = Color32::from_rgba_unmultiplied(base.r(), base.g(), base.b(), alpha);
        let (left, right) = (x(note.x0), x(note.x1));
        let note_rect = Rect::from_min_max(
            pos2(left, y(note.y0) + 0.5),
            pos2(right.max(left + 2.0), y(note.y1) - 0.5),
        );
        if note.upcoming {
            painter.rect_stroke(note_rect, 1.0, Stroke::new(1.0, colour), StrokeKind::Inside);
        } else {
            painter.rect_filled(note_rect, 1.0, colour);
        }
    }
    painter.vline(
        x(layout.playhead_x),
        rect.y_range(),
        Stroke::new(1.5, Color32::from_gray(230)),
    );

    ui.horizontal(|ui| {
        ui.colored_label(PLAYED_COLOUR, "played");
        ui.colored_label(GENERATED_COLOUR, "generated");
        ui.weak("(outlined: scheduled)");
        ui.weak(if snapshot.playing {
            format!("· last {:.1} bars", window.playing_bars * window.playhead)
        } else {
            format!("· last {:.1} s", window.stopped_seconds * window.playhead)
        });
    });
    snapshot.playing || !layout.rects.is_empty()
}

/// "C4" for key 60.
fn note_name(key: u8) -> String {
    const NAMES: [&str; 12] = [
        "C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B",
    ];
    format!(
        "{}{}",
        NAMES[usize::from(key % 12)],
        i32::from(key / 12) - 1
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_the_model_style_and_last_error() {
        let mut info = EngineInfo::default();
        assert_eq!(model_line(&info), "model: – · style: base model");
        assert_eq!(error_line(&info), "last error: none");
        info.model = "continuo base".into();
        info.style = "Ragtime".into();
        info.last_error = "decode failed".into();
        assert_eq!(model_line(&info), "model: continuo base · style: Ragtime");
        assert_eq!(error_line(&info), "last error: decode failed");
    }

    #[test]
    fn note_names_put_middle_c_at_c4() {
        assert_eq!(note_name(60), "C4");
        assert_eq!(note_name(0), "C-1");
        assert_eq!(note_name(127), "G9");
    }
}
