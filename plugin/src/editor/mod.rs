//! The egui editor, laid out for playing: a header with what the plugin is doing in one word,
//! the mode, the two style slots with the blend, and Trigger; the piano roll in the middle; the
//! controls grouped by what a musician is doing (*Answer*, *Feel*, *Harmony and time*,
//! *Output*, and the library); and one compact technical status line at the bottom, with the
//! last error in red until it is dismissed. The window is resizable and its size is saved
//! with the project.
//!
//! **Thread:** the GUI thread. **May touch:** the atomics of [`SharedStatus`] and the latest
//! audio-thread snapshot from the triple buffer (read), the parameters through nice-plug's
//! `ParamSetter`, and the loader's [`Library`] (requests, never waiting for it). It does no
//! blocking work and no file I/O.
//!
//! What the roll shows is computed by [`roll::layout`]; this module only paints it. The style
//! menus and the model and capture panel are `library_panel`.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod library_panel;
#[cfg(test)]
mod offscreen;
pub mod roll;

use nice_plug::context::gui::GuiContext;
use nice_plug::editor::{dpi::LogicalSize, ResizeHint};
use nice_plug::prelude::*;
use nice_plug_egui::resizable_window::ResizableWindow;
use nice_plug_egui::widgets::ParamSlider;
use nice_plug_egui::{
    baseview, create_egui_editor, EguiEditor, EguiEditorState, EguiNiceSettings, Frame,
    RepaintNotifier,
};

use crate::library::Library;
use crate::params::{ContinuoParams, Slot};
use crate::status::{AnswerState, EditorSnapshot, EngineInfo, EngineStatus, SharedStatus};
use crate::status::{Counters, NoteSource};
use library_panel::LibraryPanel;
use roll::RollWindow;

/// The window's size when the project has none saved.
pub const WIDTH: u32 = 960;
pub const HEIGHT: u32 = 700;
/// The smallest size the window can be made.
const MIN_WIDTH: f32 = 640.0;
const MIN_HEIGHT: f32 = 480.0;
/// How often the editor repaints while the roll moves: about 30 frames per second, so it
/// scrolls smoothly.
const REFRESH_MOVING: Duration = Duration::from_millis(33);
/// How often it repaints otherwise, for the status line.
const REFRESH: Duration = Duration::from_millis(100);
/// The piano roll's share of the window's height, and its smallest height in points.
const ROLL_SHARE: f32 = 0.42;
const ROLL_MIN_HEIGHT: f32 = 160.0;
/// Width of one group of controls (label, slider, value box); the groups wrap into as many
/// columns as fit.
const GROUP_WIDTH: f32 = 300.0;
const SLIDER_WIDTH: f32 = 80.0;
/// Notes the musician played.
const PLAYED_COLOUR: egui::Color32 = egui::Color32::from_rgb(90, 170, 250);
/// Notes the model generated.
const GENERATED_COLOUR: egui::Color32 = egui::Color32::from_rgb(250, 165, 60);
const ERROR_COLOUR: egui::Color32 = egui::Color32::from_rgb(230, 110, 90);
const WAITING_COLOUR: egui::Color32 = egui::Color32::from_rgb(240, 215, 100);
const QUIET_COLOUR: egui::Color32 = egui::Color32::from_gray(170);

pub fn default_state() -> Arc<EguiEditorState> {
    EguiEditorState::from_size(LogicalSize::new(WIDTH, HEIGHT), 1.0)
}

/// The window size saved with the project: logical points, width in the high 32 bits and
/// height in the low ones; 0 when none was saved.
pub fn pack_size(width: f32, height: f32) -> u64 {
    let side = |v: f32| v.round().clamp(0.0, 65_535.0) as u64;
    (side(width) << 32) | side(height)
}

/// The size [`pack_size`] packed; `None` for 0 (nothing saved) or a size below the minimum.
pub fn unpack_size(packed: u64) -> Option<(f32, f32)> {
    let (width, height) = ((packed >> 32) as f32, (packed & 0xffff_ffff) as f32);
    (width >= MIN_WIDTH && height >= MIN_HEIGHT).then_some((width, height))
}

/// Everything the editor shares with the plugin, each behind an `Arc` the plugin keeps.
#[derive(Clone)]
pub struct EditorInputs {
    /// The window's size and open state (kept by nice-plug-egui).
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
    let state = inputs.state.clone();
    let resize = ResizeHint::RESIZABLE.with_min_logical_size(
        nice_plug::editor::dpi::LogicalSize::new(MIN_WIDTH, MIN_HEIGHT),
    );
    create_egui_editor(
        state,
        RepaintNotifier::new(),
        EguiNiceSettings::new()
            .with_tile("Continuo")
            .with_resize_hint(resize),
        ContinuoEditor::new(inputs),
    )
}

pub struct ContinuoEditor {
    params: Arc<ContinuoParams>,
    status: Arc<SharedStatus>,
    snapshot: Arc<Mutex<triple_buffer::Output<EditorSnapshot>>>,
    /// The style menus, user folder, model choice and captured answers.
    library: LibraryPanel,
    gui: Option<GuiContext>,
    /// The model and error texts last read from the generator.
    engine_info: EngineInfo,
    /// The error the user dismissed; shown again only when another one comes.
    dismissed_error: String,
    /// The saved window size was asked for since the window opened.
    size_restored: bool,
}

impl ContinuoEditor {
    fn new(inputs: EditorInputs) -> Self {
        Self {
            params: inputs.params,
            status: inputs.status,
            snapshot: inputs.snapshot,
            library: LibraryPanel::new(inputs.library),
            gui: None,
            engine_info: EngineInfo::default(),
            dismissed_error: String::new(),
            size_restored: false,
        }
    }

    /// The whole editor, into `ui` (the window, or an offscreen frame in the tests).
    fn draw(&mut self, ui: &mut egui::Ui, setter: &ParamSetter) {
        // Only this editor ever takes the lock, so it is never contended in practice; `try_lock`
        // keeps the GUI thread from ever waiting all the same.
        let snapshot = match self.snapshot.try_lock() {
            Ok(mut output) => *output.read(),
            Err(_) => EditorSnapshot::default(),
        };
        if let Some(info) = self.status.try_engine_info() {
            self.engine_info = info;
        }
        self.library.refresh(&self.status);
        let params = self.params.clone();

        egui::Panel::top("continuo-header").show(ui, |ui| {
            self.header(ui, &params, setter, &snapshot);
        });
        egui::Panel::bottom("continuo-status").show(ui, |ui| {
            self.status_line(ui, &snapshot);
        });
        let mut roll_moving = false;
        egui::CentralPanel::default().show(ui, |ui| {
            let height = (ui.available_height() * ROLL_SHARE).max(ROLL_MIN_HEIGHT);
            roll_moving = draw_roll(ui, &snapshot, height);
            ui.add_space(4.0);
            egui::ScrollArea::vertical()
                .auto_shrink([false; 2])
                .show(ui, |ui| self.controls(ui, &params, setter));
        });
        ui.ctx()
            .request_repaint_after(if roll_moving { REFRESH_MOVING } else { REFRESH });
    }

    /// The state word, the style in play, Trigger and the mode; then the two style slots and
    /// the blend.
    fn header(
        &mut self,
        ui: &mut egui::Ui,
        params: &ContinuoParams,
        setter: &ParamSetter,
        snapshot: &EditorSnapshot,
    ) {
        let state = state_word(
            snapshot,
            self.status.engine_status(),
            &self.engine_info,
            self.library.loading_model(),
        );
        ui.add_space(2.0);
        ui.horizontal(|ui| {
            ui.add(egui::Label::new(
                egui::RichText::new(&state.text)
                    .size(26.0)
                    .strong()
                    .color(state.colour()),
            ));
            ui.add_space(12.0);
            ui.vertical(|ui| {
                ui.label(
                    egui::RichText::new(format!("style: {}", style_text(&self.engine_info)))
                        .size(15.0),
                );
                ui.weak(transport_text(snapshot));
            });
            ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                let trigger = egui::Button::new(egui::RichText::new("Trigger").size(18.0))
                    .min_size(egui::vec2(96.0, 34.0));
                if ui
                    .add(trigger)
                    .on_hover_text("answer now (regenerate while an answer plays)")
                    .clicked()
                {
                    self.status.trigger_request.store(true, Ordering::Relaxed);
                }
            });
        });
        ui.add_space(2.0);
        ui.horizontal_wrapped(|ui| {
            ui.label("Mode");
            ui.add(ParamSlider::for_param(&params.mode, setter).with_width(80.0));
            ui.add_space(8.0);
            self.library.style_menu(ui, params, setter, Slot::A);
            ui.label("Blend");
            ui.add(ParamSlider::for_param(&params.blend, setter).with_width(90.0))
                .on_hover_text("the share of style B: A plays at 100 % - blend, B at blend");
            self.library.style_menu(ui, params, setter, Slot::B);
        });
        ui.add_space(4.0);
    }

    /// The controls, in groups that wrap into as many columns as the window has room for.
    fn controls(&mut self, ui: &mut egui::Ui, params: &ContinuoParams, setter: &ParamSetter) {
        let columns = ((ui.available_width() / GROUP_WIDTH).floor() as usize).clamp(1, 4);
        let groups: [(&str, bool, Vec<&dyn AnyParam>); 4] = [
            (
                "Answer",
                false,
                vec![
                    &params.answer_bars,
                    &params.silence_beats,
                    &params.density_cap,
                    &params.trigger_source,
                    &params.trigger_note,
                    &params.trigger_cc,
                ],
            ),
            (
                "Feel",
                false,
                vec![
                    &params.temperature,
                    &params.top_p,
                    &params.seed,
                    &params.velocity_scale,
                    &params.style_strength,
                ],
            ),
            (
                "Harmony and time",
                true,
                vec![
                    &params.scale_root,
                    &params.scale,
                    &params.quantize,
                    &params.swing,
                    &params.pitch_low,
                    &params.pitch_high,
                ],
            ),
            (
                "Output",
                true,
                vec![
                    &params.out_channel,
                    &params.thru,
                    &params.voice,
                    &params.bypass,
                ],
            ),
        ];
        ui.columns(columns, |cols| {
            for (i, (title, collapsible, members)) in groups.iter().enumerate() {
                let ui = &mut cols[i % columns];
                ui.set_max_width(ui.available_width());
                let body = |ui: &mut egui::Ui| {
                    egui::Grid::new(("continuo-group", i))
                        .num_columns(2)
                        .spacing([10.0, 5.0])
                        .show(ui, |ui| {
                            for param in members {
                                param.row(ui, setter);
                            }
                        });
                };
                ui.group(|ui| {
                    ui.set_min_width(ui.available_width());
                    if *collapsible {
                        egui::CollapsingHeader::new(egui::RichText::new(*title).strong())
                            .id_salt(("continuo-collapse", i))
                            .default_open(true)
                            .show(ui, body);
                    } else {
                        ui.label(egui::RichText::new(*title).strong());
                        body(ui);
                    }
                });
                ui.add_space(6.0);
            }
        });
        ui.group(|ui| {
            ui.set_min_width(ui.available_width());
            egui::CollapsingHeader::new(
                egui::RichText::new("Model, folder and last answers").strong(),
            )
            .id_salt("continuo-library")
            .default_open(false)
            .show(ui, |ui| self.library.ui(ui, params));
        });
    }

    /// One line of technical status (details in its tooltip), and the last error in red with
    /// a button that dismisses it.
    fn status_line(&mut self, ui: &mut egui::Ui, snapshot: &EditorSnapshot) {
        let counters = self.status.counters();
        let (ms_per_note, first_note_ms) = self.status.timings_ms();
        ui.add_space(2.0);
        ui.horizontal(|ui| {
            ui.weak(compact_status(&self.engine_info, ms_per_note, &counters))
                .on_hover_text(status_details(snapshot, &counters, first_note_ms));
        });
        let error = &self.engine_info.last_error;
        if !error.is_empty() && *error != self.dismissed_error {
            ui.horizontal(|ui| {
                if ui.small_button("Dismiss").clicked() {
                    self.dismissed_error = error.clone();
                }
                ui.colored_label(ERROR_COLOUR, error_line(&self.engine_info));
            });
        }
        ui.add_space(2.0);
    }
}

/// A parameter shown as a labelled slider row; lets groups mix parameter types.
trait AnyParam {
    fn row(&self, ui: &mut egui::Ui, setter: &ParamSetter);
}

impl<P: Param> AnyParam for P {
    fn row(&self, ui: &mut egui::Ui, setter: &ParamSetter) {
        ui.label(self.name());
        ui.add(ParamSlider::for_param(self, setter).with_width(SLIDER_WIDTH));
        ui.end_row();
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
        self.size_restored = false;
        Ok(())
    }

    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut Frame) {
        let Some(gui) = self.gui.clone() else { return };
        if !self.size_restored {
            // The host opened the window at the default size: ask for the project's.
            self.size_restored = true;
            let saved = unpack_size(self.params.editor_size.load(Ordering::Relaxed));
            let current = ui.ctx().content_rect().size();
            if let Some((width, height)) = saved {
                if (width - current.x).abs() > 1.0 || (height - current.y).abs() > 1.0 {
                    ui.send_viewport_cmd(egui::ViewportCommand::InnerSize(egui::vec2(
                        width, height,
                    )));
                }
            }
        }
        let setter = gui.param_setter();
        ResizableWindow::new("continuo-window")
            .min_size(egui::vec2(MIN_WIDTH, MIN_HEIGHT))
            .show(ui, |ui| self.draw(ui, &setter));
    }

    fn resized(&mut self, new_size: baseview::WindowSize) {
        let size = new_size.logical;
        self.params.editor_size.store(
            pack_size(size.width as f32, size.height as f32),
            Ordering::Relaxed,
        );
    }

    fn editor_closed(&mut self) {
        self.gui = None;
    }
}

/// What the header's state word says, and how it is coloured.
#[derive(Debug, Clone, PartialEq)]
pub struct StateWord {
    pub text: String,
    pub tone: Tone,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    Quiet,
    Playing,
    Waiting,
    Error,
}

impl StateWord {
    fn new(text: impl Into<String>, tone: Tone) -> Self {
        Self {
            text: text.into(),
            tone,
        }
    }

    fn colour(&self) -> egui::Color32 {
        match self.tone {
            Tone::Quiet => QUIET_COLOUR,
            Tone::Playing => GENERATED_COLOUR,
            Tone::Waiting => WAITING_COLOUR,
            Tone::Error => ERROR_COLOUR,
        }
    }
}

/// The header's state word: *Error*, *Loading model*, *Bypassed*, *Listening*, *Answering*,
/// or, before an answer's first note, *Waiting for beat N* (the beat of the bar it starts on,
/// while the transport plays) or *Answering in 0.4 s* (stopped).
pub fn state_word(
    snapshot: &EditorSnapshot,
    engine: EngineStatus,
    info: &EngineInfo,
    loading_model: bool,
) -> StateWord {
    if engine == EngineStatus::Failed {
        return StateWord::new("Error", Tone::Error);
    }
    if loading_model || (engine == EngineStatus::Stopped && info.model.starts_with("loading")) {
        return StateWord::new("Loading model", Tone::Waiting);
    }
    match snapshot.answer_state {
        AnswerState::Bypassed => StateWord::new("Bypassed", Tone::Quiet),
        AnswerState::Listening if engine == EngineStatus::Stopped => {
            StateWord::new("Not active", Tone::Quiet)
        }
        AnswerState::Listening => StateWord::new("Listening", Tone::Quiet),
        AnswerState::Answering => match snapshot.answer_span {
            Some((start, _)) if start > snapshot.now_samples => match snapshot.answer_start_beats {
                Some(beats) => {
                    let per_bar = if snapshot.beats_per_bar > 0.0 {
                        snapshot.beats_per_bar
                    } else {
                        4.0
                    };
                    let in_bar = (beats - snapshot.bar_start_beats).rem_euclid(per_bar);
                    let beat = (in_bar + 1e-6).floor() as i64 + 1;
                    StateWord::new(format!("Waiting for beat {beat}"), Tone::Waiting)
                }
                None => {
                    let rate = snapshot.sample_rate_hz.max(1.0);
                    let seconds = (start - snapshot.now_samples) as f64 / rate;
                    StateWord::new(format!("Answering in {seconds:.1} s"), Tone::Waiting)
                }
            },
            _ => StateWord::new("Answering", Tone::Playing),
        },
    }
}

/// The style in play, as the generator names it ("Ragtime 70 % + Irish Folk Tune 30 %").
fn style_text(info: &EngineInfo) -> &str {
    if info.style.is_empty() {
        "base model"
    } else {
        &info.style
    }
}

/// "120.0 BPM · beat 9.25" while the transport plays, "stopped · 120.0 BPM" otherwise.
fn transport_text(snapshot: &EditorSnapshot) -> String {
    if snapshot.playing {
        format!(
            "{:.1} BPM · beat {:.2}",
            snapshot.tempo_bpm, snapshot.pos_beats
        )
    } else {
        format!("stopped · {:.1} BPM", snapshot.tempo_bpm)
    }
}

/// The status line: speed, losses and the model, e.g.
/// "2.6 ms/note · late 0 · dropped 0 · 3 answers · continuo base · 8.8 M parameters, f32".
fn compact_status(info: &EngineInfo, ms_per_note: Option<f64>, counters: &Counters) -> String {
    let speed = ms_per_note.map_or_else(|| "– ms/note".to_string(), |v| format!("{v:.1} ms/note"));
    let model = if info.model.is_empty() {
        "–"
    } else {
        &info.model
    };
    format!(
        "{speed} · late {} · dropped {} · {} answers · {model}",
        counters.late_notes,
        counters.dropped_total(),
        counters.answers_triggered,
    )
}

/// The status line's tooltip: every counter and queue.
fn status_details(
    snapshot: &EditorSnapshot,
    counters: &Counters,
    first_note_ms: Option<f64>,
) -> String {
    let first = first_note_ms.map_or_else(|| "–".to_string(), |v| format!("{v:.1} ms"));
    format!(
        "trigger to first note: {first}\n\
         generated notes played: {}\n\
         held: {} · sounding out: {} · scheduled: {} · voices: {}\n\
         silent for {:.1} beats",
        counters.generated_notes_played,
        snapshot.held_player_notes,
        snapshot.sounding_output_notes,
        snapshot.scheduled_notes,
        snapshot.active_voices,
        snapshot.silence_beats.min(999.0),
    )
}

fn error_line(info: &EngineInfo) -> String {
    if info.last_error.is_empty() {
        "last error: none".to_string()
    } else {
        format!("last error: {}", info.last_error)
    }
}

/// Paints the piano roll for `snapshot` across the available width, `height` points high, with
/// a legend below. Returns whether it moves (notes in view, or the transport playing).
fn draw_roll(ui: &mut egui::Ui, snapshot: &EditorSnapshot, height: f32) -> bool {
    use egui::{pos2, Align2, Color32, FontId, Rect, Stroke, StrokeKind};

    let window = RollWindow::DEFAULT;
    let layout = roll::layout(snapshot, &window);
    let (rect, _) = ui.allocate_exact_size(
        egui::vec2(ui.available_width(), height),
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
    // The answer in progress: a band where it plays.
    if let Some((x0, x1)) = layout.answer_span {
        let band = Rect::from_min_max(pos2(x(x0), rect.top()), pos2(x(x1), rect.bottom()));
        painter.rect_filled(band, 0.0, Color32::from_rgba_unmultiplied(250, 165, 60, 22));
        painter.text(
            pos2(band.left() + 3.0, rect.top() + 2.0),
            Align2::LEFT_TOP,
            "answer",
            FontId::proportional(11.0),
            GENERATED_COLOUR,
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
        ui.weak("(outlined: scheduled; shaded: the answer's span)");
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
        let counters = Counters {
            late_notes: 2,
            answers_triggered: 5,
            ..Counters::default()
        };
        assert_eq!(style_text(&info), "base model");
        assert_eq!(error_line(&info), "last error: none");
        assert_eq!(
            compact_status(&info, None, &Counters::default()),
            "– ms/note · late 0 · dropped 0 · 0 answers · –"
        );
        info.model = "continuo base".into();
        info.style = "Ragtime 70 % + Irish Folk Tune 30 %".into();
        info.last_error = "decode failed".into();
        assert_eq!(style_text(&info), "Ragtime 70 % + Irish Folk Tune 30 %");
        assert_eq!(
            compact_status(&info, Some(2.61), &counters),
            "2.6 ms/note · late 2 · dropped 0 · 5 answers · continuo base"
        );
        assert_eq!(error_line(&info), "last error: decode failed");
    }

    #[test]
    fn the_state_word_says_what_the_plugin_does() {
        let info = EngineInfo::default();
        let word =
            |snapshot: &EditorSnapshot, engine| state_word(snapshot, engine, &info, false).text;
        let mut snap = EditorSnapshot {
            sample_rate_hz: 48_000.0,
            beats_per_bar: 4.0,
            now_samples: 48_000,
            ..EditorSnapshot::default()
        };
        assert_eq!(word(&snap, EngineStatus::Idle), "Listening");
        assert_eq!(word(&snap, EngineStatus::Stopped), "Not active");
        assert_eq!(word(&snap, EngineStatus::Failed), "Error");
        let loading = EngineInfo {
            model: "loading continuo base…".into(),
            ..EngineInfo::default()
        };
        assert_eq!(
            state_word(&snap, EngineStatus::Stopped, &loading, false).text,
            "Loading model"
        );
        assert_eq!(
            state_word(&snap, EngineStatus::Idle, &info, true).text,
            "Loading model"
        );
        snap.answer_state = AnswerState::Answering;
        // Stopped transport: half a second to go.
        snap.answer_span = Some((72_000, 200_000));
        assert_eq!(word(&snap, EngineStatus::Generating), "Answering in 0.5 s");
        // Playing: the answer starts on beat 11, the third beat of the bar from beat 8.
        snap.answer_start_beats = Some(11.0);
        snap.bar_start_beats = 8.0;
        assert_eq!(word(&snap, EngineStatus::Generating), "Waiting for beat 4");
        snap.answer_start_beats = Some(10.0);
        assert_eq!(word(&snap, EngineStatus::Generating), "Waiting for beat 3");
        snap.now_samples = 80_000;
        assert_eq!(word(&snap, EngineStatus::Generating), "Answering");
        snap.answer_state = AnswerState::Bypassed;
        assert_eq!(word(&snap, EngineStatus::Idle), "Bypassed");
    }

    #[test]
    fn window_sizes_pack_into_one_number() {
        assert_eq!(unpack_size(pack_size(920.0, 680.0)), Some((920.0, 680.0)));
        assert_eq!(
            unpack_size(pack_size(1600.4, 1000.6)),
            Some((1600.0, 1001.0))
        );
        assert_eq!(unpack_size(0), None);
        assert_eq!(unpack_size(pack_size(100.0, 100.0)), None);
    }

    #[test]
    fn note_names_put_middle_c_at_c4() {
        assert_eq!(note_name(60), "C4");
        assert_eq!(note_name(0), "C-1");
        assert_eq!(note_name(127), "G9");
    }
}
