//! Model input rows and the flat output vocabulary (spec §1.3-1.4).

use crate::config::Config;
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
/// flat decoder ids for input rows (the reference's `encode_series_labels`). Timeshifts are
/// onset differences between consecutive notes (the first note against 0).
///
/// Fails with the row index when a value does not fit its vocabulary (for example a
/// negative timeshift because the notes are not in onset order, or a duration over `V - 3`).
pub fn labels(cfg: &Config, rows: &[Row]) -> Result<Vec<[u32; 7]>, (usize, String)> {
    let offsets = cfg.decode_offsets();
    let mut prev_onset = 0i64;
    let mut out = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        let values: [i64; 6] = match row[0] {
            -1 => std::array::from_fn(|a| cfg.sos_code(a)),
            -2 => std::array::from_fn(|a| cfg.eos_code(a)),
            _ => {
                let ts = row[0] - prev_onset;
                prev_onset = row[0];
                [ts, row[1], row[2], row[3], row[4], row[5]]
            }
        };
        let mut label = [0u32; 7];
        for a in 0..6 {
            let v = values[a];
            let special = row[0] < 0;
            let max = if special { cfg.vocab[a] as i64 - 1 } else { cfg.vocab[a] as i64 - 3 };
            let min = if a == 1 && !special { 1 } else { 0 };
            if v < min || v > max {
                return Err((i, format!("{} {v} is outside {min}..={max}", crate::config::Attribute::ALL[a].name())));
            }
            label[a + 1] = (offsets[a] as i64 + v) as u32;
        }
        out.push(label);
    }
    Ok(out)
}
