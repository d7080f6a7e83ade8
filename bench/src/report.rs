//! Figures, comparisons and the table they are printed in.
use std::fmt::Write as _;

/// Median and spread of repeated runs.
#[derive(Clone, Copy, Debug)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Summary {
    /// `None` for an empty sample.
    pub fn of(samples: &[f64]) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        let mut v = samples.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Summary {
            median,
            min: v[0],
            max: v[n - 1],
            n,
        })
    }
}

/// Whether a figure meets its goal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Met,
    Missed,
    /// A figure without a goal of its own.
    Info,
    /// Could not be measured here (the reason is in the figure's text).
    NotAvailable,
}

impl Verdict {
    pub fn from_goal(met: bool) -> Verdict {
        if met {
            Verdict::Met
        } else {
            Verdict::Missed
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::Missed => "MISSED",
            Verdict::Info => "",
            Verdict::NotAvailable => "n/a",
        }
    }
}

pub struct Row {
    pub section: &'static str,
    pub what: String,
    pub value: String,
    pub spread: String,
    pub goal: String,
    pub verdict: Verdict,
}

/// Every row measured so far, printed as they come and as one table at the end.
#[derive(Default)]
pub struct Report {
    pub rows: Vec<Row>,
}

/// How a number is printed: a unit and a scale.
#[derive(Clone, Copy)]
pub enum Unit {
    Ns,
    Us,
    Ms,
    Gbps,
    Ratio,
    Bytes,
    KiB,
    /// Events per second.
    PerSec,
    Percent,
}

pub fn fmt(v: f64, unit: Unit) -> String {
    match unit {
        Unit::Ns => format!("{v:.1} ns"),
        Unit::Us => format!("{v:.1} µs"),
        Unit::Ms => format!("{v:.1} ms"),
        Unit::Gbps => format!("{v:.2} Gbit/s"),
        Unit::Ratio => format!("{v:.2}x"),
        Unit::Bytes => format!("{v:.0} B"),
        Unit::KiB => format!("{v:.0} KiB"),
        Unit::PerSec if v >= 1e6 => format!("{:.2} M/s", v / 1e6),
        Unit::PerSec if v >= 1e3 => format!("{:.1} k/s", v / 1e3),
        Unit::PerSec => format!("{v:.0}/s"),
        Unit::Percent => format!("{v:.1}%"),
    }
}

fn spread(s: &Summary, unit: Unit) -> String {
    format!("{} – {} (n={})", fmt(s.min, unit), fmt(s.max, unit), s.n)
}

impl Report {
    /// A measured figure: median, spread, and the goal it is held to.
    pub fn figure(
        &mut self,
        section: &'static str,
        what: impl Into<String>,
        s: Summary,
        unit: Unit,
        goal: impl Into<String>,
        verdict: Verdict,
    ) {
        self.push(Row {
            section,
            what: what.into(),
            value: fmt(s.median, unit),
            spread: spread(&s, unit),
            goal: goal.into(),
            verdict,
        });
    }

    /// A row without a median: a note, or why something was not measured.
    pub fn note(
        &mut self,
        section: &'static str,
        what: impl Into<String>,
        text: impl Into<String>,
        verdict: Verdict,
    ) {
        self.push(Row {
            section,
            what: what.into(),
            value: text.into(),
            spread: String::new(),
            goal: String::new(),
            verdict,
        });
    }

    fn push(&mut self, row: Row) {
        eprintln!(
            "  [{}] {}: {} {} {}",
            row.section,
            row.what,
            row.value,
            if row.spread.is_empty() {
                String::new()
            } else {
                format!("({})", row.spread)
            },
            row.verdict.as_str()
        );
        self.rows.push(row);
    }

    /// The table, in Markdown so BENCHMARKS.md can hold it as printed.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "| section | measure | median | spread (min – max, runs) | goal | |"
        );
        let _ = writeln!(out, "| --- | --- | ---: | --- | --- | --- |");
        for r in &self.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                r.section,
                r.what,
                r.value,
                r.spread,
                r.goal,
                r.verdict.as_str()
            );
        }
        out
    }

    pub fn missed(&self) -> usize {
        self.rows.iter().filter(|r| r.verdict == Verdict::Missed).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_samples() {
        let s = Summary::of(&[3.0, 1.0, 2.0]).expect("non-empty");
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        let s = Summary::of(&[4.0, 1.0, 2.0, 3.0]).expect("non-empty");
        assert_eq!(s.median, 2.5);
        assert!(Summary::of(&[]).is_none());
    }
}
