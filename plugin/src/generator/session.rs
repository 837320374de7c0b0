//! The warm session: the loaded model, its KV cache and how many rows of what it holds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use continuo_engine::{ModelError, Moonbeam, Note, Sampling, Session};

/// Played notes kept in the context after a trim.
pub const CONTEXT_KEEP: usize = 256;
/// Notes the context may grow by before it is trimmed back to [`CONTEXT_KEEP`] (trimming costs a
/// prefill, so it is not done for every note).
pub const CONTEXT_SLACK: usize = 64;
/// Played notes the tokenizer may hold that are not final yet (a held note keeps every later note
/// from becoming final). Past this, held notes are closed in the context.
pub const PENDING_MAX: usize = 64;
/// The most rows decoded for one answer.
pub const ANSWER_MAX_NOTES: usize = 256;
/// Notes decoded when a model is installed, to warm it up and measure its speed.
const WARM_UP_NOTES: usize = 4;

/// How many rows of what the session holds, from its capacity (scaled down for configs whose
/// `max_len` is smaller than the defaults need).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Limits {
    pub(super) capacity: usize,
    pub(super) context_keep: usize,
    pub(super) context_max: usize,
    pub(super) pending_max: usize,
    pub(super) answer_max: usize,
}

impl Limits {
    pub(super) const DEFAULT: Self = Self {
        capacity: 1 + CONTEXT_KEEP + CONTEXT_SLACK + PENDING_MAX + ANSWER_MAX_NOTES,
        context_keep: CONTEXT_KEEP,
        context_max: CONTEXT_KEEP + CONTEXT_SLACK,
        pending_max: PENDING_MAX,
        answer_max: ANSWER_MAX_NOTES,
    };

    pub(super) fn for_max_len(max_len: usize) -> Self {
        if max_len >= Self::DEFAULT.capacity {
            return Self::DEFAULT;
        }
        // The default proportions: 2/5 answer, 1/10 pending, the rest context.
        let capacity = max_len.max(2);
        let rows = capacity - 1;
        let answer_max = (rows * 2 / 5).max(1);
        let pending_max = rows / 10;
        let context_max = rows.saturating_sub(answer_max + pending_max);
        Self {
            capacity,
            context_keep: context_max * 4 / 5,
            context_max,
            pending_max,
            answer_max,
        }
    }
}

/// What the warm session holds, in terms of the played context (whose onsets are re-zeroed at
/// [`Engine::origin`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cached {
    /// Exactly `[SOS] + context[..n]`: the cache is warm up to note `n`.
    Context(usize),
    /// `[SOS] + context[..n]` followed by an answer (and the notes held when it started), so
    /// going back to the played context is a truncation, not a prefill.
    AnswerAfter(usize),
    /// Anything else: rebuilt with a prefill.
    Stale,
}

/// The loaded model and its warm session.
pub(super) struct Engine {
    pub(super) session: Session,
    pub(super) limits: Limits,
    /// The model's largest timeshift in ticks.
    pub(super) max_gap: i64,
    /// What the session's rows are.
    pub(super) cache: Cached,
    /// The context onset that is 0 in the session.
    pub(super) origin: i64,
    /// The style changed while an answer was in the session: the played context's cached keys
    /// and values are the previous style's, so after the answer the context is read again
    /// (a prefill) instead of truncated back to.
    pub(super) restyled: bool,
}

impl Engine {
    pub(super) fn new(model: Arc<Moonbeam>) -> Self {
        let limits = Limits::for_max_len(model.cfg.max_len);
        let max_gap = (model.cfg.vocab[0] as i64 - 3).max(1);
        let session = Session::new(model, limits.capacity);
        Self {
            session,
            limits,
            max_gap,
            cache: Cached::Stale,
            origin: 0,
            restyled: false,
        }
    }

    pub(super) fn rows_len(&self) -> usize {
        self.session.rows().len()
    }

    /// Decodes a few notes from an empty context with top-p sampling, as answers do, and
    /// returns the time per note. The session is left empty: it is rebuilt before use.
    pub(super) fn warm_up(&mut self) -> Result<Duration, String> {
        let started = Instant::now();
        let decoded = decode_from_silence(&mut self.session, WARM_UP_NOTES);
        self.cache = Cached::Stale;
        let decoded = decoded.map_err(|e| format!("warming up the model failed: {e}"))?;
        Ok(started.elapsed() / decoded.max(1) as u32)
    }

    /// The onset (session time) of the last row, 0 if there is none but SOS.
    pub(super) fn last_onset(&self) -> i64 {
        let rows = self.session.rows();
        match rows.len() {
            0 | 1 => 0,
            n => rows[n - 1][0],
        }
    }
}

/// Maps played onsets onto the context's time line, shortening long silences.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Timeline {
    /// (played onset, context onset) of the latest note.
    pub(super) last: Option<(i64, i64)>,
}

impl Timeline {
    pub(super) fn map(&mut self, onset: i64, max_gap: i64) -> i64 {
        let context = match self.last {
            None => 0,
            Some((played, context)) => context + (onset - played).clamp(0, max_gap),
        };
        self.last = Some((onset, context));
        context
    }
}

/// Decodes `notes` notes from an empty context with top-p sampling, as answers do, and empties
/// the session again. Returns how many notes were decoded.
fn decode_from_silence(session: &mut Session, notes: usize) -> Result<usize, ModelError> {
    let mut chooser = Sampling::TopP {
        temperature: 1.0,
        top_p: 0.9,
        seed: 0,
    }
    .chooser();
    session.prefill(&[])?;
    let mut prev_onset = 0;
    for _ in 0..notes {
        let values = session.next_values_unstacked(chooser.as_mut())?;
        let note = Note::from_decoded(prev_onset, values);
        prev_onset = note.onset;
        session.push(note.to_row())?;
    }
    session.truncate(0)?;
    Ok(notes)
}
