//! Model input rows and the flat output vocabulary (spec §1.3-1.4).

use crate::config::{Attribute, Config};
use crate::model::forward::Row;
use crate::note::Note;

pub const SOS_ROW: Row = [-1; 6];
pub const EOS_ROW: Row = [-2; 6];

/// `[SOS] + notes (+ [EOS])`, the reference's `encode_series`.
pub fn input_rows(notes: &[Note], eos: bool) -> Vec<Row> {
    let mut rows = Vec::with_capacity(notes.len() + 2);
    rows.push(SOS_ROW);
    rows.extend(notes.iter().map(|n| n.to_row()));
    if eos {
        rows.push(EOS_ROW);
    }
    rows
}

/// Label rows `[sos_out, timeshift, duration, octave, pitch_class, instrument, velocity]` as
/// flat decoder ids for input rows (the reference's `encode_series_labels`): each value plus
/// its attribute's offset. Timeshifts are onset differences between consecutive notes (the
/// first note against 0).
///
/// Like the reference, a value beyond its attribute's range (a duration over `V - 3`, say)
/// is not clamped, so its id lands in the next attribute's range; [`out_of_range`] reports
/// such values. Fails only when an id falls outside the flat vocabulary altogether.
pub fn labels(cfg: &Config, rows: &[Row]) -> Result<Vec<[u32; 7]>, (usize, String)> {
    let offsets = cfg.decode_offsets();
    let mut out = Vec::with_capacity(rows.len());
    for (i, values) in label_values(cfg, rows).into_iter().enumerate() {
        let mut label = [0u32; 7];
        for a in 0..6 {
            let id = offsets[a] as i64 + values[a];
            if id < 0 || id >= cfg.decode_vocab_size as i64 {
                return Err((
                    i,
                    format!(
                        "{} {} is outside the vocabulary",
                        Attribute::ALL[a].name(),
                        values[a]
                    ),
                ));
            }
            label[a + 1] = id as u32;
        }
        out.push(label);
    }
    Ok(out)
}

/// Attribute values of the label rows (before offsets): SOS/EOS codes for special rows.
fn label_values(cfg: &Config, rows: &[Row]) -> Vec<[i64; 6]> {
    let mut prev_onset = 0i64;
    rows.iter()
        .map(|row| match row[0] {
            -1 => std::array::from_fn(|a| cfg.sos_code(a)),
            -2 => std::array::from_fn(|a| cfg.eos_code(a)),
            _ => {
                let ts = row[0] - prev_onset;
                prev_onset = row[0];
                [ts, row[1], row[2], row[3], row[4], row[5]]
            }
        })
        .collect()
}

/// Notes whose label values fall outside their attribute's regular range
/// (`0..=V-3`; durations from 1): `(row index, attribute, value)`. The reference's
/// preprocessing rejects files with such values before training.
pub fn out_of_range(cfg: &Config, rows: &[Row]) -> Vec<(usize, Attribute, i64)> {
    let mut bad = Vec::new();
    for (i, (row, values)) in rows.iter().zip(label_values(cfg, rows)).enumerate() {
        if row[0] < 0 {
            continue;
        }
        for (a, &value) in values.iter().enumerate() {
            let min = if a == 1 { 1 } else { 0 };
            if value < min || value > cfg.vocab[a] as i64 - 3 {
                bad.push((i, Attribute::ALL[a], value));
            }
        }
    }
    bad
}
