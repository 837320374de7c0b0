//! The editor drawn without a window: egui runs the same `ContinuoEditor::draw` as in a host,
//! and its tessellated triangles are filled on the CPU into a PNG. No display, GL or Xvfb is
//! needed, so CI checks the layout as a picture on every run.
//!
//! The rasterizer is deliberately plain: one pass per triangle, barycentric colour and texture
//! coordinates at pixel centres, the nearest texel, and premultiplied "over" blending in sRGB
//! space, as egui's own renderers blend. It is not anti-aliased beyond what egui's feathering
//! puts into the meshes, which is enough to read every label.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use egui::epaint::{ClippedPrimitive, ColorImage, Primitive};
use egui::{ImageData, TextureId, TexturesDelta};
use nice_plug::context::gui::GuiContextInner;
use nice_plug::prelude::*;

use super::{ContinuoEditor, EditorInputs};
use crate::library::Library;
use crate::params::ContinuoParams;
use crate::status::{EditorSnapshot, SharedStatus};

/// A host that lets the editor draw and ignores parameter gestures (nothing clicks here).
struct NoHost;

impl GuiContextInner for NoHost {
    fn plugin_api(&self) -> PluginApi {
        PluginApi::Clap
    }
    unsafe fn raw_begin_set_parameter(&self, _param: ParamPtr) {}
    unsafe fn raw_set_parameter_normalized(&self, _param: ParamPtr, _normalized: f32) {}
    unsafe fn raw_end_set_parameter(&self, _param: ParamPtr) {}
    fn get_state(&self) -> PluginState {
        PluginState {
            version: String::new(),
            params: Default::default(),
            fields: Default::default(),
        }
    }
    fn set_state(&self, _state: PluginState) {}
    fn request_restart(&self) {}
}

/// One rendered frame: the picture and every text egui laid out, with where it went.
pub struct Rendered {
    pub pixmap: tiny_skia::Pixmap,
    pub texts: Vec<(String, egui::Rect)>,
}

/// Draws the editor for `params`, `status` and `snapshot` at `width` × `height` points (one
/// point, one pixel). Runs a few frames first, as a window would, so layouts that size
/// themselves from the previous frame settle.
pub fn render(
    params: Arc<ContinuoParams>,
    status: Arc<SharedStatus>,
    snapshot: EditorSnapshot,
    width: u32,
    height: u32,
) -> Rendered {
    let (mut input, output) = triple_buffer::triple_buffer(&snapshot);
    input.write(snapshot);
    let library = Arc::new(Library::new(params.style_names.clone()));
    let mut editor = ContinuoEditor::new(EditorInputs {
        state: super::default_state(),
        params: params.clone(),
        status,
        snapshot: Arc::new(Mutex::new(output)),
        library,
    });
    let host = NoHost;
    let setter = ParamSetter::new(&host);
    let ctx = egui::Context::default();
    let mut textures: HashMap<TextureId, ColorImage> = HashMap::new();
    let screen =
        egui::Rect::from_min_size(egui::Pos2::ZERO, egui::vec2(width as f32, height as f32));
    let mut last = None;
    for _ in 0..4 {
        let raw = egui::RawInput {
            screen_rect: Some(screen),
            ..egui::RawInput::default()
        };
        let mut out = ctx.run_ui(raw, |ui| {
            egui::CentralPanel::default().show(ui, |ui| editor.draw(ui, &setter));
        });
        apply_textures(&mut textures, &out.textures_delta);
        out.textures_delta.clear();
        last = Some(out);
    }
    let out = last.expect("at least one frame");
    let mut texts = Vec::new();
    for clipped in &out.shapes {
        collect_texts(&clipped.shape, &mut texts);
    }
    let primitives = ctx.tessellate(out.shapes, out.pixels_per_point);
    let mut pixmap = tiny_skia::Pixmap::new(width, height).expect("a non-empty size");
    pixmap.fill(tiny_skia::Color::BLACK);
    rasterize(&mut pixmap, &primitives, &textures);
    Rendered { pixmap, texts }
}

fn collect_texts(shape: &egui::Shape, out: &mut Vec<(String, egui::Rect)>) {
    match shape {
        egui::Shape::Text(text) => {
            let rect = text.visual_bounding_rect();
            out.push((text.galley.text().to_string(), rect));
        }
        egui::Shape::Vec(shapes) => shapes.iter().for_each(|s| collect_texts(s, out)),
        _ => {}
    }
}

fn apply_textures(textures: &mut HashMap<TextureId, ColorImage>, delta: &TexturesDelta) {
    for (id, deltas) in &delta.set {
        for image_delta in deltas {
            let ImageData::Color(image) = &image_delta.image;
            match image_delta.pos {
                None => {
                    textures.insert(*id, ColorImage::clone(image));
                }
                Some([x0, y0]) => {
                    let Some(target) = textures.get_mut(id) else {
                        continue;
                    };
                    let [w, h] = image.size;
                    for y in 0..h {
                        for x in 0..w {
                            let (tx, ty) = (x0 + x, y0 + y);
                            if tx < target.size[0] && ty < target.size[1] {
                                target.pixels[ty * target.size[0] + tx] = image.pixels[y * w + x];
                            }
                        }
                    }
                }
            }
        }
    }
    for id in &delta.free {
        textures.remove(id);
    }
}

/// Fills egui's triangles into `pixmap` (premultiplied RGBA, like egui's vertex colours).
fn rasterize(
    pixmap: &mut tiny_skia::Pixmap,
    primitives: &[ClippedPrimitive],
    textures: &HashMap<TextureId, ColorImage>,
) {
    let (width, height) = (pixmap.width() as i64, pixmap.height() as i64);
    let pixels = pixmap.data_mut();
    for clipped in primitives {
        let Primitive::Mesh(mesh) = &clipped.primitive else {
            continue;
        };
        let texture = textures.get(&mesh.texture_id);
        let clip = clipped.clip_rect;
        let clip_x = (
            clip.left().floor().max(0.0) as i64,
            (clip.right().ceil() as i64).min(width),
        );
        let clip_y = (
            clip.top().floor().max(0.0) as i64,
            (clip.bottom().ceil() as i64).min(height),
        );
        for triangle in mesh.indices.chunks_exact(3) {
            let [a, b, c] = [0, 1, 2].map(|i| mesh.vertices[triangle[i] as usize]);
            let area = edge(a.pos, b.pos, c.pos);
            if area.abs() < 1e-6 {
                continue;
            }
            let xs = [a.pos.x, b.pos.x, c.pos.x];
            let ys = [a.pos.y, b.pos.y, c.pos.y];
            let min_x = (xs.iter().copied().fold(f32::MAX, f32::min).floor() as i64).max(clip_x.0);
            let max_x = (xs.iter().copied().fold(f32::MIN, f32::max).ceil() as i64).min(clip_x.1);
            let min_y = (ys.iter().copied().fold(f32::MAX, f32::min).floor() as i64).max(clip_y.0);
            let max_y = (ys.iter().copied().fold(f32::MIN, f32::max).ceil() as i64).min(clip_y.1);
            for y in min_y..max_y {
                for x in min_x..max_x {
                    let p = egui::pos2(x as f32 + 0.5, y as f32 + 0.5);
                    let (wa, wb, wc) = (
                        edge(b.pos, c.pos, p) / area,
                        edge(c.pos, a.pos, p) / area,
                        edge(a.pos, b.pos, p) / area,
                    );
                    if wa < 0.0 || wb < 0.0 || wc < 0.0 {
                        continue;
                    }
                    let mut src = [0.0f32; 4];
                    for (v, w) in [(a, wa), (b, wb), (c, wc)] {
                        for (channel, value) in src.iter_mut().zip(v.color.to_array()) {
                            *channel += w * f32::from(value) / 255.0;
                        }
                    }
                    if let Some(texture) = texture {
                        let u = wa * a.uv.x + wb * b.uv.x + wc * c.uv.x;
                        let v = wa * a.uv.y + wb * b.uv.y + wc * c.uv.y;
                        let [tw, th] = texture.size;
                        let tx = ((u * tw as f32) as usize).min(tw.saturating_sub(1));
                        let ty = ((v * th as f32) as usize).min(th.saturating_sub(1));
                        let texel = texture.pixels[ty * tw + tx].to_array();
                        for (channel, value) in src.iter_mut().zip(texel) {
                            *channel *= f32::from(value) / 255.0;
                        }
                    }
                    let at = ((y * width + x) * 4) as usize;
                    let dst = &mut pixels[at..at + 4];
                    let keep = 1.0 - src[3];
                    for (d, s) in dst.iter_mut().zip(src) {
                        *d = ((s + f32::from(*d) / 255.0 * keep) * 255.0)
                            .round()
                            .clamp(0.0, 255.0) as u8;
                    }
                }
            }
        }
    }
}

/// Twice the signed area of the triangle (a, b, p).
fn edge(a: egui::Pos2, b: egui::Pos2, p: egui::Pos2) -> f32 {
    (b.x - a.x) * (p.y - a.y) - (b.y - a.y) * (p.x - a.x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{AnswerState, NoteSource, RollNote};

    /// A plugin in the middle of a session: a phrase played, an answer scheduled on the next
    /// beats, a two-style blend, a model label and an error.
    fn session() -> (Arc<ContinuoParams>, Arc<SharedStatus>, EditorSnapshot) {
        let params = Arc::new(ContinuoParams::default());
        let status = Arc::new(SharedStatus::default());
        status.set_engine_status(crate::status::EngineStatus::Generating);
        status.set_model_label("continuo base · 8.8 M parameters, f32 · ready in 180 ms");
        status.set_style_label("Ragtime 70 % + Irish Folk Tune 30 %");
        status.set_last_error("style “Gone” is missing; playing the base model");
        let rate = 48_000.0;
        let beat = 24_000i64; // 120 BPM
        let mut snap = EditorSnapshot {
            playing: true,
            tempo_bpm: 120.0,
            pos_beats: 16.0,
            now_beats: 16.0,
            bar_start_beats: 16.0,
            beats_per_bar: 4.0,
            sample_rate_hz: rate,
            now_samples: 40 * beat,
            answer_state: AnswerState::Answering,
            answer_span: Some((41 * beat, 49 * beat)),
            answer_start_beats: Some(17.0),
            ..EditorSnapshot::default()
        };
        for (i, key) in [60u8, 64, 67, 72, 71, 67, 64, 62].iter().enumerate() {
            let start = 32 * beat + i as i64 * beat;
            snap.recent.push(RollNote {
                end: start + beat * 3 / 4,
                ..RollNote::started(NoteSource::Played, 0, *key, 0.8, start, 0)
            });
        }
        for (i, key) in [74u8, 72, 76, 79].iter().enumerate() {
            let start = 41 * beat + i as i64 * beat / 2;
            snap.upcoming.push(RollNote {
                end: start + beat / 2,
                ..RollNote::started(NoteSource::Generated, 0, *key, 0.7, start, 1)
            });
        }
        snap.accept_from_answer = 1;
        (params, status, snap)
    }

    fn find<'a>(rendered: &'a Rendered, text: &str) -> Option<&'a egui::Rect> {
        rendered
            .texts
            .iter()
            .find(|(t, _)| t.contains(text))
            .map(|(_, rect)| rect)
    }

    /// The editor drawn offscreen is a picture, not a blank: a header with the state word and
    /// the blend, the roll in the middle with the played and scheduled notes, the grouped
    /// controls, the status line and the error; it fills a large and a small window alike.
    /// The picture is written to `CONTINUO_EDITOR_PNG` when that is set.
    #[test]
    fn the_editor_renders_offscreen_laid_out_for_playing() {
        for (width, height) in [(960u32, 700u32), (640, 480)] {
            let (params, status, snap) = session();
            let rendered = render(params, status, snap, width, height);
            if let Ok(path) = std::env::var("CONTINUO_EDITOR_PNG") {
                if width == 960 {
                    rendered.pixmap.save_png(&path).unwrap();
                }
            }
            let path = crate::testing::temp_dir("editor-png").join("editor.png");
            rendered.pixmap.save_png(&path).unwrap();
            assert!(std::fs::metadata(&path).unwrap().len() > 10_000);

            // Not blank: many colours, most of the window painted (egui's panels are not black).
            let pixels: Vec<[u8; 4]> = rendered
                .pixmap
                .data()
                .chunks_exact(4)
                .map(|p| [p[0], p[1], p[2], p[3]])
                .collect();
            let painted = pixels.iter().filter(|p| p[..3] != [0, 0, 0]).count();
            assert!(
                painted > pixels.len() * 9 / 10,
                "{painted} of {}",
                pixels.len()
            );
            let mut colours: Vec<[u8; 4]> = pixels.clone();
            colours.sort_unstable();
            colours.dedup();
            assert!(colours.len() > 200, "{} colours", colours.len());

            // The header: the state word, the style in play, Trigger at the right edge.
            let word = find(&rendered, "Waiting for beat 2").expect("the state word");
            assert!(word.top() < 40.0, "{word:?}");
            assert!(find(&rendered, "Ragtime 70 % + Irish Folk Tune 30 %").is_some());
            let trigger = find(&rendered, "Trigger").unwrap();
            assert!(trigger.right() > width as f32 - 60.0, "{trigger:?}");
            for label in ["Style A", "Blend", "Style B", "Mode"] {
                assert!(find(&rendered, label).is_some(), "{label}");
            }
            // The groups, below the roll (in the small window, the later ones scroll).
            let answer = find(&rendered, "Answer").unwrap();
            let feel = find(&rendered, "Feel").unwrap();
            assert!(answer.top() > height as f32 * 0.4, "{answer:?}");
            assert!((feel.top() - answer.top()).abs() < 2.0 && feel.left() > answer.right());
            if width >= 900 {
                let harmony = find(&rendered, "Harmony and time").unwrap();
                assert!(
                    (harmony.top() - answer.top()).abs() < 4.0,
                    "three groups in a row"
                );
                assert!(find(&rendered, "Output").is_some());
            }
            // The status line and the error, at the bottom.
            let status = find(&rendered, "ms/note").unwrap();
            assert!(status.bottom() > height as f32 - 60.0, "{status:?}");
            assert!(find(&rendered, "“Gone” is missing").is_some());

            // The roll between header and groups holds the played (blue) and the scheduled
            // (orange) notes.
            let colour_near = |target: egui::Color32| {
                let [r, g, b, _] = target.to_array();
                pixels.iter().enumerate().any(|(i, p)| {
                    let y = (i as u32 / width) as f32;
                    y > word.bottom()
                        && y < answer.top()
                        && p[0].abs_diff(r) < 12
                        && p[1].abs_diff(g) < 12
                        && p[2].abs_diff(b) < 12
                })
            };
            assert!(
                colour_near(super::super::PLAYED_COLOUR),
                "no played note in the roll"
            );
            assert!(
                colour_near(super::super::GENERATED_COLOUR),
                "no answer in the roll"
            );
        }
    }
}
