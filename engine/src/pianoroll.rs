//! Piano-roll pictures (PNG) of a prompt and its continuation, drawn with tiny-skia.

use std::path::Path;

use tiny_skia::{Color, Paint, PathBuilder, Pixmap, Rect, Stroke, Transform};

use crate::note::Note;

const WIDTH: u32 = 1600;
const ROW_PX: f32 = 6.0;
const MARGIN: f32 = 10.0;

/// Draws the prompt in blue and the continuation in orange, with a line where the
/// continuation starts and a faint line at every C.
pub fn render(prompt: &[Note], continuation: &[Note], path: &Path) -> anyhow::Result<()> {
    let all: Vec<&Note> = prompt
        .iter()
        .chain(continuation)
        .filter(|n| n.is_valid_midi())
        .collect();
    let (lo, hi) = all.iter().fold((127i64, 0i64), |(lo, hi), n| {
        (lo.min(n.pitch()), hi.max(n.pitch()))
    });
    let (lo, hi) = if lo > hi {
        (48, 72)
    } else {
        ((lo - 2).max(0), (hi + 2).min(127))
    };
    let t0 = all.iter().map(|n| n.onset).min().unwrap_or(0);
    let t1 = all
        .iter()
        .map(|n| n.onset + n.duration)
        .max()
        .unwrap_or(100)
        .max(t0 + 1);
    let rows = (hi - lo + 1) as f32;
    let height = (rows * ROW_PX + 2.0 * MARGIN) as u32;
    let mut pixmap = Pixmap::new(WIDTH, height)
        .ok_or_else(|| anyhow::anyhow!("cannot allocate a {WIDTH}x{height} picture"))?;
    pixmap.fill(Color::from_rgba8(250, 250, 247, 255));
    let x_of = |t: i64| MARGIN + (t - t0) as f32 / (t1 - t0) as f32 * (WIDTH as f32 - 2.0 * MARGIN);
    let y_of = |pitch: i64| MARGIN + (hi - pitch) as f32 * ROW_PX;
    let mut grid = Paint::default();
    grid.set_color_rgba8(220, 220, 215, 255);
    for p in lo..=hi {
        if p % 12 == 0 {
            if let Some(r) = Rect::from_xywh(
                MARGIN,
                y_of(p) + ROW_PX - 1.0,
                WIDTH as f32 - 2.0 * MARGIN,
                1.0,
            ) {
                pixmap.fill_rect(r, &grid, Transform::identity(), None);
            }
        }
    }
    let mut draw = |notes: &[Note], (r, g, b): (u8, u8, u8)| {
        let mut paint = Paint::default();
        paint.set_color_rgba8(r, g, b, 255);
        paint.anti_alias = false;
        for n in notes.iter().filter(|n| n.is_valid_midi()) {
            let x = x_of(n.onset);
            let w = (x_of(n.onset + n.duration) - x).max(1.5);
            if let Some(rect) = Rect::from_xywh(x, y_of(n.pitch()) + 0.5, w, ROW_PX - 1.0) {
                pixmap.fill_rect(rect, &paint, Transform::identity(), None);
            }
        }
    };
    draw(prompt, (52, 101, 164));
    draw(continuation, (230, 120, 30));
    if let Some(first) = continuation.iter().find(|n| n.is_valid_midi()) {
        let x = x_of(first.onset);
        let mut pb = PathBuilder::new();
        pb.move_to(x, 0.0);
        pb.line_to(x, height as f32);
        if let Some(line) = pb.finish() {
            let mut paint = Paint::default();
            paint.set_color_rgba8(120, 120, 120, 255);
            pixmap.stroke_path(
                &line,
                &paint,
                &Stroke {
                    width: 1.0,
                    ..Stroke::default()
                },
                Transform::identity(),
                None,
            );
        }
    }
    pixmap
        .save_png(path)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    Ok(())
}
