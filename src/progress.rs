//! Progress of long operations, reported through a callback (library code never prints).

use std::time::{Duration, Instant};

/// How far a long operation (training, sampling, scoring, evaluation) has come.
#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    /// What is being done ("train", "sample", "score", "eval").
    pub what: &'static str,
    /// Units done so far (steps, rows, chains…) and in all.
    pub done: usize,
    pub total: usize,
    /// The unit's name, plural ("steps", "rows", "samples").
    pub unit: &'static str,
    /// Time since the operation started.
    pub elapsed: Duration,
    /// What else the operation wants to report (the loss, say); empty when nothing.
    pub detail: String,
}

impl Progress {
    /// Units per second so far (0 before the first unit).
    pub fn rate(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.done as f64 / s
        } else {
            0.0
        }
    }

    /// Time left at the rate so far (None before the first unit).
    pub fn remaining(&self) -> Option<Duration> {
        let rate = self.rate();
        (self.done > 0 && rate > 0.0)
            .then(|| Duration::from_secs_f64(self.total.saturating_sub(self.done) as f64 / rate))
    }

    /// One line for a terminal: `sample 3000/10000 samples (30 %), 512.0 samples/s, 14 s left`.
    pub fn line(&self) -> String {
        let pct = if self.total > 0 {
            format!(" ({:.0} %)", 100.0 * self.done as f64 / self.total as f64)
        } else {
            String::new()
        };
        let left = self
            .remaining()
            .map(|d| format!(", {} left", human(d)))
            .unwrap_or_default();
        let detail = if self.detail.is_empty() {
            String::new()
        } else {
            format!("  {}", self.detail)
        };
        format!(
            "{} {}/{} {}{pct}{detail}  {:.1} {}/s{left}",
            self.what,
            self.done,
            self.total,
            self.unit,
            self.rate(),
            self.unit
        )
    }
}

/// `42 s`, `3 min 05 s`, `2 h 07 min`.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min {:02} s", s / 60, s % 60),
        _ => format!("{} h {:02} min", s / 3600, (s % 3600) / 60),
    }
}

/// Calls a callback at most every `every` (and always for the last unit), with the
/// elapsed time filled in: what every long loop uses.
pub struct Reporter<'a> {
    what: &'static str,
    unit: &'static str,
    total: usize,
    start: Instant,
    last: Option<Instant>,
    every: Duration,
    callback: &'a mut dyn FnMut(&Progress),
}

impl<'a> Reporter<'a> {
    pub fn new(
        what: &'static str,
        unit: &'static str,
        total: usize,
        callback: &'a mut dyn FnMut(&Progress),
    ) -> Reporter<'a> {
        Reporter {
            what,
            unit,
            total,
            start: Instant::now(),
            last: None,
            every: Duration::from_secs(2),
            callback,
        }
    }

    /// Report `done` units if enough time has passed since the last report or it is the last.
    pub fn update(&mut self, done: usize, detail: impl FnOnce() -> String) {
        let now = Instant::now();
        let due = self.last.is_none_or(|t| now - t >= self.every) || done >= self.total;
        if due {
            self.last = Some(now);
            (self.callback)(&Progress {
                what: self.what,
                done,
                total: self.total,
                unit: self.unit,
                elapsed: now - self.start,
                detail: detail(),
            });
        }
    }
}

/// A callback that ignores progress.
pub fn quiet(_: &Progress) {}
