//! The editor's library panel: the style menu, the user folder, the base model and the
//! captured answers.
//!
//! Runs on the GUI thread and never waits: it reads the loader's view with `try_lock` (keeping
//! the previous copy when the loader is writing), changes the styles through the automatable
//! `style` and `styleb` parameters (so hosts record them), and hands everything slow (loading
//! a model, rescanning, writing MIDI files) to the loader thread as requests.

use std::path::PathBuf;
use std::sync::Arc;

use nice_plug::prelude::ParamSetter;

use crate::library::{answers_folder, default_user_folder, Library, LibraryView, StyleOrigin};
use crate::params::{ContinuoParams, ModelChoice, Slot};
use crate::status::{CapturedAnswer, SharedStatus};
use continuo_engine::quant::QFormat;

/// The panel's own state: text being edited and the last copies of shared state.
pub struct LibraryPanel {
    library: Arc<Library>,
    view: LibraryView,
    captures: Vec<CapturedAnswer>,
    folder_text: String,
    weights_text: String,
    config_text: String,
    /// Quantize the chosen model on load ("as stored" when `None`).
    quantize: Option<QFormat>,
    /// Whether the text fields were filled from the saved choices yet.
    filled: bool,
}

impl LibraryPanel {
    pub fn new(library: Arc<Library>) -> Self {
        Self {
            library,
            view: LibraryView::default(),
            captures: Vec::new(),
            folder_text: String::new(),
            weights_text: String::new(),
            config_text: String::new(),
            quantize: None,
            filled: false,
        }
    }

    fn fill_texts(&mut self, params: &ContinuoParams) {
        if let Ok(folder) = params.user_folder.try_lock() {
            self.folder_text = folder
                .clone()
                .unwrap_or_else(default_user_folder)
                .display()
                .to_string();
        }
        if let Ok(model) = params.model.try_lock() {
            self.weights_text = model
                .weights
                .as_ref()
                .map(|w| w.display().to_string())
                .unwrap_or_default();
            self.config_text = model.config.clone();
            self.quantize = model.quantize;
        }
        self.filled = true;
    }

    /// Takes the loader's and the capture log's latest copies (keeps the old ones when they
    /// are being written). Called once a frame.
    pub fn refresh(&mut self, status: &SharedStatus) {
        if let Some(view) = self.library.try_view() {
            self.view = view;
        }
        if let Some(captures) = status.captures.try_list() {
            self.captures = captures;
        }
    }

    /// Whether the loader is loading a base model.
    pub fn loading_model(&self) -> bool {
        self.view.loading_model
    }

    /// The style menu of `slot`, which sets its automatable parameter (`style` or `styleb`).
    pub fn style_menu(
        &mut self,
        ui: &mut egui::Ui,
        params: &ContinuoParams,
        setter: &ParamSetter,
        slot: Slot,
    ) {
        let param = params.style_param(slot);
        let (label, active) = match slot {
            Slot::A => ("Style A", &self.view.active_style),
            Slot::B => ("Style B", &self.view.active_style_b),
        };
        ui.label(label);
        let current = param.value();
        let selected = if current == 0 {
            "Base model (no style)".to_string()
        } else {
            active.clone()
        };
        let mut choose = None;
        egui::ComboBox::from_id_salt(("continuo-style", slot.index()))
            .width(170.0)
            .selected_text(selected)
            .show_ui(ui, |ui| {
                if ui
                    .selectable_label(current == 0, "Base model (no style)")
                    .clicked()
                {
                    choose = Some(0);
                }
                for (i, entry) in self.view.catalog.entries.iter().enumerate() {
                    let value = i as i32 + 1;
                    let tag = match entry.origin {
                        StyleOrigin::Shipped => "",
                        StyleOrigin::User => "  (yours)",
                    };
                    let response = ui
                        .selectable_label(current == value, format!("{}{tag}", entry.name))
                        .on_hover_text(format!(
                            "{}\n{}\nfor base: {}",
                            entry.description,
                            entry.path.display(),
                            if entry.base_model.is_empty() {
                                "?"
                            } else {
                                &entry.base_model
                            }
                        ));
                    if response.clicked() {
                        choose = Some(value);
                    }
                }
            });
        if let Some(value) = choose {
            setter.begin_set_parameter(param);
            setter.set_parameter(param, value);
            setter.end_set_parameter(param);
        }
    }

    /// The user folder, the base model, the last answers and the loader's last message.
    pub fn ui(&mut self, ui: &mut egui::Ui, params: &ContinuoParams) {
        if !self.filled {
            self.fill_texts(params);
        }
        if !self.view.catalog.problems.is_empty() {
            ui.small(format!(
                "{} file(s) skipped: {}",
                self.view.catalog.problems.len(),
                self.view.catalog.problems.join("; ")
            ));
        }

        ui.horizontal(|ui| {
            ui.label("Your folder");
            ui.add(egui::TextEdit::singleline(&mut self.folder_text).desired_width(220.0));
            if ui.button("Use").clicked() {
                let text = self.folder_text.trim();
                let folder = (!text.is_empty()).then(|| PathBuf::from(text));
                if let Ok(mut saved) = params.user_folder.try_lock() {
                    *saved = folder;
                }
                self.library.request_rescan();
            }
            if ui.button("Rescan").clicked() {
                self.library.request_rescan();
            }
        });

        ui.horizontal(|ui| {
            ui.label("Model");
            ui.add(
                egui::TextEdit::singleline(&mut self.weights_text)
                    .hint_text("default (bundled); or a .safetensors/.pt path")
                    .desired_width(200.0),
            );
            ui.add(
                egui::TextEdit::singleline(&mut self.config_text)
                    .hint_text("small|medium|config.json")
                    .desired_width(90.0),
            );
        });
        ui.horizontal(|ui| {
            ui.label("Weights");
            let name = |q: Option<QFormat>| match q {
                None => "as stored",
                Some(QFormat::Q8) => "8-bit (quantize on load)",
                Some(QFormat::Q4) => "4-bit (quantize on load)",
            };
            egui::ComboBox::from_id_salt("continuo-quantize")
                .selected_text(name(self.quantize))
                .show_ui(ui, |ui| {
                    for q in [None, Some(QFormat::Q8), Some(QFormat::Q4)] {
                        ui.selectable_value(&mut self.quantize, q, name(q));
                    }
                })
                .response
                .on_hover_text(
                    "8 or 4 bits per weight: an official .pt (f32 or bf16) is quantized the \
                     first time and kept in the cache folder; Medium in 4 bits answers live \
                     on a laptop CPU",
                );
        });
        ui.horizontal(|ui| {
            let busy = self.view.loading_model;
            if ui
                .add_enabled(!busy, egui::Button::new("Load model"))
                .clicked()
            {
                let weights = self.weights_text.trim();
                self.library.request_model(ModelChoice {
                    weights: (!weights.is_empty()).then(|| PathBuf::from(weights)),
                    config: self.config_text.trim().to_string(),
                    quantize: self.quantize,
                });
            }
            if ui
                .add_enabled(!busy, egui::Button::new("Default model"))
                .clicked()
            {
                self.weights_text.clear();
                self.config_text.clear();
                self.quantize = None;
                self.library.request_model(ModelChoice::default());
            }
            if busy {
                ui.spinner();
                ui.label("loading in the background…");
            }
        });

        ui.collapsing(format!("Last answers ({})", self.captures.len()), |ui| {
            let folder = params
                .user_folder
                .try_lock()
                .ok()
                .and_then(|f| f.clone())
                .unwrap_or_else(default_user_folder);
            ui.small(format!(
                "Export writes to {}",
                answers_folder(&folder).display()
            ));
            for answer in self.captures.iter().rev() {
                ui.horizontal(|ui| {
                    if ui.small_button("Export .mid").clicked() {
                        self.library.request_export(answer.number);
                    }
                    ui.label(answer.label());
                });
            }
        });
        if !self.view.message.is_empty() {
            ui.small(&self.view.message);
        }
    }
}
