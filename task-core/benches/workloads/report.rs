//! Results: per-run figures, medians, targets, the table and the JSON file.

use std::fmt;
use std::fs;
use std::io;
use std::path::Path;

use serde_json::{Value, json};

use crate::Sizes;

/// What a workload must reach.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target {
    /// The ratio to the baseline must be at most this.
    RatioAtMost(f64),
    /// The ratio to the baseline must be at least this (rates).
    RatioAtLeast(f64),
    /// The value itself must be below this (no baseline).
    ValueBelow(f64),
}

impl Target {
    fn value(self) -> f64 {
        match self {
            Self::RatioAtMost(t) | Self::RatioAtLeast(t) | Self::ValueBelow(t) => t,
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Self::RatioAtMost(_) => "ratio_at_most",
            Self::RatioAtLeast(_) => "ratio_at_least",
            Self::ValueBelow(_) => "value_below",
        }
    }

    fn shown(self) -> String {
        match self {
            Self::RatioAtMost(t) => format!("ratio <= {t}"),
            Self::RatioAtLeast(t) => format!("ratio >= {t}"),
            Self::ValueBelow(t) => format!("value < {t}"),
        }
    }

    fn is_met(self, value: f64, ratio: Option<f64>) -> Option<bool> {
        match self {
            Self::RatioAtMost(t) => ratio.map(|r| r <= t),
            Self::RatioAtLeast(t) => ratio.map(|r| r >= t),
            Self::ValueBelow(t) => Some(value < t),
        }
    }
}

/// The figures of one workload over its runs.
#[derive(Debug, Clone)]
pub(crate) struct Measurement {
    pub(crate) name: &'static str,
    /// The sizes it ran at, for people.
    pub(crate) size: String,
    pub(crate) unit: &'static str,
    pub(crate) baseline_unit: Option<&'static str>,
    pub(crate) target: Target,
    /// One figure per run.
    pub(crate) runs: Vec<f64>,
    /// One baseline figure per run, paired with `runs`; empty without one.
    pub(crate) baseline_runs: Vec<f64>,
    /// How it was measured, for people.
    pub(crate) method: &'static str,
    /// Why it has no figure.
    pub(crate) skipped: Option<String>,
    /// Anything else worth knowing about this run of it.
    pub(crate) notes: Vec<String>,
}

impl Measurement {
    /// A measurement with no runs yet.
    pub(crate) fn new(
        name: &'static str,
        size: String,
        unit: &'static str,
        baseline_unit: Option<&'static str>,
        target: Target,
        method: &'static str,
    ) -> Self {
        Self {
            name,
            size,
            unit,
            baseline_unit,
            target,
            runs: Vec::new(),
            baseline_runs: Vec::new(),
            method,
            skipped: None,
            notes: Vec::new(),
        }
    }

    /// Adds one run: its figure and its baseline's.
    pub(crate) fn push(&mut self, value: f64, baseline: Option<f64>) {
        self.runs.push(value);
        if let Some(b) = baseline {
            self.baseline_runs.push(b);
        }
    }

    pub(crate) fn value(&self) -> Option<f64> {
        median(&self.runs)
    }

    pub(crate) fn baseline(&self) -> Option<f64> {
        median(&self.baseline_runs)
    }

    /// Each run's figure over its own baseline.
    pub(crate) fn ratio_runs(&self) -> Vec<f64> {
        self.runs
            .iter()
            .zip(&self.baseline_runs)
            .map(|(v, b)| v / b)
            .collect()
    }

    /// The median of the paired ratios.
    pub(crate) fn ratio(&self) -> Option<f64> {
        median(&self.ratio_runs())
    }

    pub(crate) fn target_met(&self) -> Option<bool> {
        if self.skipped.is_some() {
            return None;
        }
        self.target.is_met(self.value()?, self.ratio())
    }

    /// One line for the progress log.
    pub(crate) fn brief(&self) -> String {
        if let Some(why) = &self.skipped {
            return format!("SKIPPED: {why}");
        }
        let value = self.value().map_or("-".to_owned(), fmt_num);
        match self.ratio() {
            Some(r) => format!(
                "{value} {} (ratio {r:.2}, runs {:?})",
                self.unit,
                rounded(&self.ratio_runs())
            ),
            None => format!("{value} {} (runs {:?})", self.unit, rounded(&self.runs)),
        }
    }

    fn to_json(&self, sizes: &Sizes) -> Value {
        json!({
            "name": self.name,
            "value": self.value(),
            "unit": self.unit,
            "baseline": self.baseline(),
            "baseline_unit": self.baseline_unit,
            "ratio": self.ratio(),
            "target": self.target.value(),
            "target_kind": self.target.kind(),
            "target_met": self.target_met(),
            "runs": self.runs,
            "baseline_runs": self.baseline_runs,
            "ratio_runs": self.ratio_runs(),
            "size": self.size,
            "mode": if sizes.quick { "quick" } else { "full" },
            "method": self.method,
            "skipped": self.skipped,
            "notes": self.notes,
        })
    }
}

/// The median (the mean of the middle two for an even count).
pub(crate) fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        f64::midpoint(sorted[mid - 1], sorted[mid])
    })
}

fn rounded(values: &[f64]) -> Vec<f64> {
    values.iter().map(|v| (v * 100.0).round() / 100.0).collect()
}

/// A number with three significant digits at most after the point.
fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// The readable table of the results.
pub(crate) fn table(results: &[Measurement], sizes: &Sizes) -> String {
    let mut rows: Vec<[String; 7]> = vec![[
        "workload".into(),
        "size".into(),
        "value (median)".into(),
        "baseline (median)".into(),
        "ratio".into(),
        "target".into(),
        "met".into(),
    ]];
    for m in results {
        let value = m
            .value()
            .map_or("-".to_owned(), |v| format!("{} {}", fmt_num(v), m.unit));
        let baseline = match (m.baseline(), m.baseline_unit) {
            (Some(b), Some(unit)) => format!("{} {unit}", fmt_num(b)),
            _ => "-".to_owned(),
        };
        let ratio = m.ratio().map_or("-".to_owned(), |r| format!("{r:.2}"));
        let met = match (&m.skipped, m.target_met()) {
            (Some(_), _) => "SKIPPED".to_owned(),
            (None, Some(true)) => "met".to_owned(),
            (None, Some(false)) => "MISSED".to_owned(),
            (None, None) => "-".to_owned(),
        };
        rows.push([
            m.name.to_owned(),
            m.size.clone(),
            value,
            baseline,
            ratio,
            m.target.shown(),
            met,
        ]);
    }
    let mut widths = [0usize; 7];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            out.push_str(&format!("|-{}-|\n", rule.join("-|-")));
        }
    }
    out.push_str(&format!(
        "{} mode, {} runs per workload; value, baseline and ratio are medians over the runs \
         (ratio: the median of each run's value / its own baseline).\n",
        if sizes.quick { "quick" } else { "full" },
        sizes.runs
    ));
    if sizes.quick {
        out.push_str(
            "quick mode: fewer runs and batches; the persist_ workloads at the quick sizes shown \
             above.\n",
        );
    }
    for m in results {
        if let Some(why) = &m.skipped {
            out.push_str(&format!("!!! {} SKIPPED: {why}\n", m.name));
        }
        for note in &m.notes {
            out.push_str(&format!("note: {}: {note}\n", m.name));
        }
    }
    out
}

/// Writes the JSON list of results, creating the directory.
pub(crate) fn write_json(path: &Path, results: &[Measurement], sizes: &Sizes) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let list: Vec<Value> = results.iter().map(|m| m.to_json(sizes)).collect();
    let text = serde_json::to_string_pretty(&list).map_err(io::Error::other)?;
    fs::write(path, text + "\n")
}

/// The machine the figures come from.
#[derive(Debug, Clone)]
pub(crate) struct Machine {
    cpus: usize,
    model: String,
}

impl Machine {
    pub(crate) fn detect() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        let model = fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, m)| m.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown CPU".to_owned());
        Self { cpus, model }
    }
}

impl fmt::Display for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} CPUs ({})", self.cpus, self.model)
    }
}
