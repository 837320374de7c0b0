//! Piano-roll pictures (PNG) of a prompt and its continuation, drawn with tiny-skia and
//! labelled with the Ubuntu Light font that egui ships (`epaint_default_fonts`, read by
//! `skrifa`).
//!
//! The picture shows the end of the prompt (blue) and the whole answer (orange) on a shaded
//! band, with note names at every C on the pitch axis, a line every second (labelled below,
//! in seconds from the answer's start), a legend and a title. Only the last stretch of a long
//! prompt is drawn, so that the answer takes at least half of the width: a 32-note answer to
//! a long piece stays readable.

use std::path::Path;

use skrifa::instance::{LocationRef, Size};
use skrifa::outline::{DrawSettings, OutlinePen};
use skrifa::{FontRef, MetadataProvider};
use tiny_skia::{Color, FillRule, Paint, PathBuilder, Pixmap, Rect, Stroke, Transform};

use crate::note::Note;

const WIDTH: u32 = 1600;
const ROW_PX: f32 = 8.0;
/// Room for the pitch labels on the left, the title and legend on top, the time axis below.
const LEFT: f32 = 48.0;
const RIGHT: f32 = 12.0;
const TOP: f32 = 34.0;
const BOTTOM: f32 = 26.0;
const FONT_PX: f32 = 13.0;

const PROMPT_RGB: (u8, u8, u8) = (52, 101, 164);
const ANSWER_RGB: (u8, u8, u8) = (230, 120, 30);
const TEXT_RGB: (u8, u8, u8) = (40, 40, 40);

/// What the picture shows, in 10 ms ticks and MIDI pitches: computed before drawing so that
/// the choices can be tested without decoding pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct RollLayout {
    /// The window in time: from `t0` (inside the prompt) to `t1` (the end of the last note).
    pub t0: i64,
    pub t1: i64,
    /// Where the answer starts (its first playable onset), if it has a note.
    pub answer_start: Option<i64>,
    /// The pitch range drawn, lowest and highest.
    pub low: i64,
    pub high: i64,
    /// Notes of the prompt left of the window (not drawn).
    pub prompt_notes_hidden: usize,
    /// The picture's size in pixels.
    pub width: u32,
    pub height: u32,
}

impl RollLayout {
    /// The layout for `prompt` followed by `continuation`: the window shows at most as much
    /// of the prompt as the answer lasts (and at least 2 s of it), so the answer gets half of
    /// the width or more (unless it lasts less than 2 s).
    pub fn of(prompt: &[Note], continuation: &[Note]) -> Self {
        let playable = |notes: &[Note]| -> Vec<Note> {
            notes.iter().copied().filter(Note::is_valid_midi).collect()
        };
        let (prompt, answer) = (playable(prompt), playable(continuation));
        let end = |n: &Note| n.onset + n.duration;
        let answer_start = answer.iter().map(|n| n.onset).min();
        let t1 = prompt.iter().chain(&answer).map(end).max().unwrap_or(100);
        let t0 = match answer_start {
            Some(start) => {
                let shown = (t1 - start).max(200);
                let first = prompt.iter().map(|n| n.onset).min().unwrap_or(start);
                (start - shown).max(first).min(start)
            }
            None => prompt.iter().map(|n| n.onset).min().unwrap_or(0),
        };
        let t1 = t1.max(t0 + 1);
        let hidden = prompt.iter().filter(|n| end(n) <= t0).count();
        let shown = prompt
            .iter()
            .chain(&answer)
            .filter(|n| end(n) > t0)
            .map(|n| n.pitch());
        let (lo, hi) = shown.fold((127_i64, 0_i64), |(lo, hi), p| (lo.min(p), hi.max(p)));
        let (low, high) = if lo > hi {
            (48, 72)
        } else {
            // At least two octaves, so the labels have room.
            let (lo, hi) = ((lo - 2).max(0), (hi + 2).min(127));
            let pad = (24 - (hi - lo)).max(0);
            ((lo - pad / 2).max(0), (hi + (pad - pad / 2)).min(127))
        };
        let height = (TOP + (high - low + 1) as f32 * ROW_PX + BOTTOM) as u32;
        RollLayout {
            t0,
            t1,
            answer_start,
            low,
            high,
            prompt_notes_hidden: hidden,
            width: WIDTH,
            height,
        }
    }

    /// The x of time `t`.
    pub fn x(&self, t: i64) -> f32 {
        LEFT + (t - self.t0) as f32 / (self.t1 - self.t0) as f32 * (WIDTH as f32 - LEFT - RIGHT)
    }

    /// The top y of pitch `p`'s row.
    pub fn y(&self, p: i64) -> f32 {
        TOP + (self.high - p) as f32 * ROW_PX
    }
}

/// The name of a MIDI pitch in scientific notation (60 = C4).
pub fn note_name(pitch: i64) -> String {
    const NAMES: [&str; 12] = [
        "C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B",
    ];
    format!(
        "{}{}",
        NAMES[pitch.rem_euclid(12) as usize],
        pitch.div_euclid(12) - 1
    )
}

/// Turns glyph outlines (font units scaled to pixels, y up) into a tiny-skia path at a pen
/// position (y down).
struct GlyphPen<'a> {
    path: &'a mut PathBuilder,
    x: f32,
    baseline: f32,
}

impl OutlinePen for GlyphPen<'_> {
    fn move_to(&mut self, x: f32, y: f32) {
        self.path.move_to(self.x + x, self.baseline - y);
    }
    fn line_to(&mut self, x: f32, y: f32) {
        self.path.line_to(self.x + x, self.baseline - y);
    }
    fn quad_to(&mut self, cx0: f32, cy0: f32, x: f32, y: f32) {
        self.path.quad_to(
            self.x + cx0,
            self.baseline - cy0,
            self.x + x,
            self.baseline - y,
        );
    }
    fn curve_to(&mut self, cx0: f32, cy0: f32, cx1: f32, cy1: f32, x: f32, y: f32) {
        self.path.cubic_to(
            self.x + cx0,
            self.baseline - cy0,
            self.x + cx1,
            self.baseline - cy1,
            self.x + x,
            self.baseline - y,
        );
    }
    fn close(&mut self) {
        self.path.close();
    }
}

/// Text in one font and size.
struct Text<'a> {
    font: FontRef<'a>,
    size: Size,
}

impl<'a> Text<'a> {
    fn new(px: f32) -> anyhow::Result<Self> {
        let font = FontRef::new(epaint_default_fonts::UBUNTU_LIGHT)
            .map_err(|e| anyhow::anyhow!("the bundled font does not load: {e}"))?;
        Ok(Text {
            font,
            size: Size::new(px),
        })
    }

    /// The width of `s` in pixels.
    fn width(&self, s: &str) -> f32 {
        let metrics = self.font.glyph_metrics(self.size, LocationRef::default());
        let charmap = self.font.charmap();
        s.chars()
            .filter_map(|c| charmap.map(c))
            .map(|g| metrics.advance_width(g).unwrap_or(0.0))
            .sum()
    }

    /// Draws `s` with its left end at `x` and its baseline at `baseline`.
    fn draw(&self, pixmap: &mut Pixmap, s: &str, x: f32, baseline: f32, rgb: (u8, u8, u8)) {
        let metrics = self.font.glyph_metrics(self.size, LocationRef::default());
        let charmap = self.font.charmap();
        let outlines = self.font.outline_glyphs();
        let mut path = PathBuilder::new();
        let mut pen_x = x;
        for glyph in s.chars().filter_map(|c| charmap.map(c)) {
            if let Some(outline) = outlines.get(glyph) {
                let mut pen = GlyphPen {
                    path: &mut path,
                    x: pen_x,
                    baseline,
                };
                // A glyph that cannot be drawn is left out; the text stays readable.
                let _ = outline.draw(
                    DrawSettings::unhinted(self.size, LocationRef::default()),
                    &mut pen,
                );
            }
            pen_x += metrics.advance_width(glyph).unwrap_or(0.0);
        }
        if let Some(path) = path.finish() {
            let mut paint = Paint::default();
            paint.set_color_rgba8(rgb.0, rgb.1, rgb.2, 255);
            paint.anti_alias = true;
            pixmap.fill_path(
                &path,
                &paint,
                FillRule::Winding,
                Transform::identity(),
                None,
            );
        }
    }
}

fn fill(pixmap: &mut Pixmap, x: f32, y: f32, w: f32, h: f32, rgba: (u8, u8, u8, u8)) {
    if let Some(rect) = Rect::from_xywh(x, y, w, h) {
        let mut paint = Paint::default();
        paint.set_color_rgba8(rgba.0, rgba.1, rgba.2, rgba.3);
        pixmap.fill_rect(rect, &paint, Transform::identity(), None);
    }
}

fn vline(pixmap: &mut Pixmap, x: f32, y0: f32, y1: f32, width: f32, rgb: (u8, u8, u8)) {
    let mut pb = PathBuilder::new();
    pb.move_to(x, y0);
    pb.line_to(x, y1);
    if let Some(line) = pb.finish() {
        let mut paint = Paint::default();
        paint.set_color_rgba8(rgb.0, rgb.1, rgb.2, 255);
        let stroke = Stroke {
            width,
            ..Stroke::default()
        };
        pixmap.stroke_path(&line, &paint, &stroke, Transform::identity(), None);
    }
}

/// Draws the picture (module docs) with `title` on top, e.g. the style's name.
pub fn render(
    prompt: &[Note],
    continuation: &[Note],
    title: &str,
    path: &Path,
) -> anyhow::Result<()> {
    let layout = RollLayout::of(prompt, continuation);
    let (width, height) = (layout.width, layout.height);
    let mut pixmap = Pixmap::new(width, height)
        .ok_or_else(|| anyhow::anyhow!("cannot allocate a {width}x{height} picture"))?;
    pixmap.fill(Color::from_rgba8(250, 250, 247, 255));
    let text = Text::new(FONT_PX)?;
    let (x_end, y_bottom) = (width as f32 - RIGHT, layout.y(layout.low) + ROW_PX);

    // The answer's band, behind everything.
    if let Some(start) = layout.answer_start {
        let x = layout.x(start);
        fill(
            &mut pixmap,
            x,
            TOP,
            x_end - x,
            y_bottom - TOP,
            (230, 120, 30, 22),
        );
    }
    // Black keys shaded, a line and a label at every C.
    for p in layout.low..=layout.high {
        let y = layout.y(p);
        if matches!(p % 12, 1 | 3 | 6 | 8 | 10) {
            fill(&mut pixmap, LEFT, y, x_end - LEFT, ROW_PX, (0, 0, 0, 10));
        }
        if p % 12 == 0 {
            fill(
                &mut pixmap,
                LEFT,
                y + ROW_PX - 1.0,
                x_end - LEFT,
                1.0,
                (200, 200, 195, 255),
            );
            let name = note_name(p);
            let w = text.width(&name);
            text.draw(&mut pixmap, &name, LEFT - 6.0 - w, y + ROW_PX, TEXT_RGB);
        }
    }
    // A line every second, labelled in seconds from the answer's start (or the window's).
    let zero = layout.answer_start.unwrap_or(layout.t0);
    let span_s = (layout.t1 - layout.t0) as f64 / 100.0;
    let step = if span_s > 60.0 {
        500
    } else if span_s > 20.0 {
        200
    } else {
        100
    };
    let first = (layout.t0 - zero).div_euclid(step) * step + zero;
    let mut t = if first < layout.t0 {
        first + step
    } else {
        first
    };
    while t <= layout.t1 {
        let x = layout.x(t);
        vline(&mut pixmap, x, TOP, y_bottom, 1.0, (225, 225, 220));
        let seconds = (t - zero) / 100;
        let label = if seconds == 0 {
            "0 s".to_string()
        } else {
            format!("{seconds:+} s")
        };
        let w = text.width(&label);
        text.draw(
            &mut pixmap,
            &label,
            x - w / 2.0,
            y_bottom + FONT_PX + 4.0,
            TEXT_RGB,
        );
        t += step;
    }
    // The notes.
    let draw = |pixmap: &mut Pixmap, notes: &[Note], (r, g, b): (u8, u8, u8)| {
        for n in notes.iter().filter(|n| n.is_valid_midi()) {
            if n.onset + n.duration <= layout.t0 {
                continue;
            }
            let x = layout.x(n.onset.max(layout.t0));
            let w = (layout.x(n.onset + n.duration) - x).max(2.0);
            // Louder notes are darker.
            let alpha = (110.0 + 145.0 * n.velocity as f32 / 127.0) as u8;
            fill(
                pixmap,
                x,
                layout.y(n.pitch()) + 0.5,
                w,
                ROW_PX - 1.0,
                (r, g, b, alpha),
            );
        }
    };
    draw(&mut pixmap, prompt, PROMPT_RGB);
    draw(&mut pixmap, continuation, ANSWER_RGB);
    // The boundary between prompt and answer.
    if let Some(start) = layout.answer_start {
        vline(
            &mut pixmap,
            layout.x(start),
            TOP - 4.0,
            y_bottom,
            2.0,
            (90, 90, 90),
        );
    }
    // Title and legend.
    text.draw(&mut pixmap, title, LEFT, 20.0, TEXT_RGB);
    let hidden = if layout.prompt_notes_hidden > 0 {
        format!(
            "prompt (its last {:.1} s; {} earlier notes not shown)",
            (layout.answer_start.unwrap_or(layout.t1) - layout.t0) as f64 / 100.0,
            layout.prompt_notes_hidden
        )
    } else {
        "prompt".to_string()
    };
    let answer = "answer";
    let mut x = x_end - text.width(&hidden) - text.width(answer) - 60.0;
    for (label, rgb) in [(hidden.as_str(), PROMPT_RGB), (answer, ANSWER_RGB)] {
        fill(&mut pixmap, x, 10.0, 12.0, 12.0, (rgb.0, rgb.1, rgb.2, 255));
        text.draw(&mut pixmap, label, x + 18.0, 21.0, TEXT_RGB);
        x += 18.0 + text.width(label) + 24.0;
    }
    pixmap
        .save_png(path)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    Ok(())
}
