//! Turning measurements into the results: percentiles and medians, the
//! summary rows with their targets, the table printed on stdout, and the
//! machine the numbers come from.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use serde::Serialize;

/// The `p`th percentile of `sorted` (ascending), by nearest rank; `None` if empty.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len().max(1)) - 1).copied()
}

/// The median of the values that are numbers; `None` if there are none.
/// Rounds are few: the median ignores the odd disturbed one.
pub fn median(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let mut values: Vec<f64> = values.into_iter().filter(|v| v.is_finite()).collect();
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

/// A goal a summary row is checked against; reported, never fatal.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// hotsock / native at least this.
    OverNativeAtLeast(f64),
    /// hotsock / python at least this.
    OverPythonAtLeast(f64),
    /// hotsock / native at most this: for costs, where less is better.
    OverNativeAtMost(f64),
    /// hotsock's value at most this.
    AtMost(f64),
}

/// One row of the summary: a metric for each server, with its targets.
#[derive(Debug, Clone)]
pub struct Row {
    /// Stable name, for the JSON.
    pub key: String,
    /// What the table calls it, unit included.
    pub label: String,
    /// Unit, for the JSON.
    pub unit: &'static str,
    /// hotsock, native, python: the median over rounds, if measured.
    pub values: [Option<f64>; 3],
    /// hotsock / native and hotsock / python, when measured apart from the
    /// values (as the median of each round's ratio); else the values' ratios.
    pub ratios: Option<[Option<f64>; 2]>,
    /// Decimals to print.
    pub decimals: usize,
    /// What hotsock should reach.
    pub targets: Vec<Target>,
}

impl Row {
    /// A row with no targets yet.
    pub fn new(
        key: impl Into<String>,
        label: &str,
        unit: &'static str,
        values: [Option<f64>; 3],
    ) -> Self {
        Row {
            key: key.into(),
            label: label.to_string(),
            unit,
            values,
            ratios: None,
            decimals: 0,
            targets: Vec::new(),
        }
    }

    /// Prints with `decimals` decimals.
    pub fn decimals(mut self, decimals: usize) -> Self {
        self.decimals = decimals;
        self
    }

    /// Reports these as hotsock / native and hotsock / python.
    pub fn ratios(mut self, ratios: [Option<f64>; 2]) -> Self {
        self.ratios = Some(ratios);
        self
    }

    /// Adds a target.
    pub fn target(mut self, target: Target) -> Self {
        self.targets.push(target);
        self
    }

    fn over(&self, other: usize) -> Option<f64> {
        if let Some(ratios) = self.ratios {
            return ratios[other - 1];
        }
        match (self.values[0], self.values[other]) {
            (Some(h), Some(o)) if o != 0.0 => Some(h / o),
            _ => None,
        }
    }

    /// hotsock / native.
    pub fn over_native(&self) -> Option<f64> {
        self.over(1)
    }

    /// hotsock / python.
    pub fn over_python(&self) -> Option<f64> {
        self.over(2)
    }

    /// Whether `target` is met; `None` if a value it needs is missing.
    pub fn met(&self, target: Target) -> Option<bool> {
        let at_least =
            |ratio: Option<f64>, floor| ratio.filter(|r| r.is_finite()).map(|r| r >= floor);
        match target {
            Target::OverNativeAtLeast(floor) => at_least(self.over_native(), floor),
            Target::OverPythonAtLeast(floor) => at_least(self.over_python(), floor),
            Target::OverNativeAtMost(ceiling) => self
                .over_native()
                .filter(|r| r.is_finite())
                .map(|r| r <= ceiling),
            Target::AtMost(ceiling) => self.values[0]
                .filter(|v| v.is_finite())
                .map(|v| v <= ceiling),
        }
    }

    /// How a target reads in the table.
    pub fn describe(&self, target: Target) -> String {
        match target {
            Target::OverNativeAtLeast(floor) => format!("≥ {floor:.2}× native"),
            Target::OverPythonAtLeast(floor) => format!("≥ {floor}× python"),
            Target::OverNativeAtMost(ceiling) => format!("≤ {ceiling:.2}× native"),
            Target::AtMost(ceiling) if self.unit == "ratio" => format!("≤ {ceiling}×"),
            Target::AtMost(ceiling) if self.unit == "count" => format!("= {ceiling}"),
            Target::AtMost(ceiling) if ceiling.fract() == 0.0 => {
                format!("≤ {} {}", number(ceiling, 0), self.unit)
            }
            Target::AtMost(ceiling) => format!("≤ {ceiling} {}", self.unit),
        }
    }

    /// The row as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let targets: Vec<_> = self
            .targets
            .iter()
            .map(|&t| serde_json::json!({"target": self.describe(t), "met": self.met(t)}))
            .collect();
        serde_json::json!({
            "key": self.key,
            "metric": self.label,
            "unit": self.unit,
            "hotsock": self.values[0],
            "native": self.values[1],
            "python": self.values[2],
            "hotsock_over_native": self.over_native(),
            "hotsock_over_python": self.over_python(),
            "targets": targets,
        })
    }
}

/// ✓ or ✗ (or ? when a value is missing).
pub fn mark(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "✓",
        Some(false) => "✗",
        None => "?",
    }
}

/// The summary as an aligned plain-text table.
pub fn table(rows: &[Row]) -> String {
    let header = [
        "metric",
        "hotsock",
        "native",
        "python",
        "hotsock/native",
        "hotsock/python",
        "target",
        "met?",
    ];
    let cells: Vec<[String; 8]> = rows
        .iter()
        .map(|row| {
            let value =
                |v: Option<f64>| v.map_or_else(|| "–".to_string(), |v| number(v, row.decimals));
            let ratio = |r: Option<f64>| r.map_or_else(|| "–".to_string(), |r| format!("{r:.2}×"));
            let targets: Vec<String> = row.targets.iter().map(|&t| row.describe(t)).collect();
            let marks: Vec<&str> = row.targets.iter().map(|&t| mark(row.met(t))).collect();
            [
                row.label.clone(),
                value(row.values[0]),
                value(row.values[1]),
                value(row.values[2]),
                ratio(row.over_native()),
                ratio(row.over_python()),
                if targets.is_empty() {
                    "–".into()
                } else {
                    targets.join(", ")
                },
                marks.join(" "),
            ]
        })
        .collect();
    // The label and target columns read left to right; numbers align right.
    aligned(&header, &cells, |i| i == 0 || i >= 6)
}

/// `header` and `rows` as plain-text columns, two spaces apart, under a
/// line of dashes: the columns `left` picks aligned left, the rest right.
pub fn aligned<R: AsRef<[String]>>(
    header: &[&str],
    rows: &[R],
    left: impl Fn(usize) -> bool,
) -> String {
    let width = |i: usize| {
        rows.iter()
            .filter_map(|row| row.as_ref().get(i))
            .map(|cell| cell.chars().count())
            .chain([header[i].chars().count()])
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..header.len()).map(width).collect();
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate().take(widths.len()) {
            let pad = widths[i].saturating_sub(cell.chars().count());
            if left(i) {
                let _ = write!(text, "{cell}{}  ", " ".repeat(pad));
            } else {
                let _ = write!(text, "{}{cell}  ", " ".repeat(pad));
            }
        }
        let _ = writeln!(out, "{}", text.trim_end());
    };
    line(&header.iter().map(|h| h.to_string()).collect::<Vec<_>>());
    line(&widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>());
    for row in rows {
        line(row.as_ref());
    }
    out
}

/// `v` with `decimals` decimals and thousands separated by commas.
pub fn number(v: f64, decimals: usize) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    let text = format!("{:.*}", decimals, v.abs());
    let (int, frac) = text
        .split_once('.')
        .map_or((text.as_str(), None), |(i, f)| (i, Some(f)));
    let mut grouped = String::new();
    for (i, digit) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    let sign = if v < 0.0 && text.chars().any(|c| c.is_ascii_digit() && c != '0') {
        "-"
    } else {
        ""
    };
    match frac {
        Some(frac) => format!("{sign}{grouped}.{frac}"),
        None => format!("{sign}{grouped}"),
    }
}

/// The machine the numbers come from: they mean little without it.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Cores available to the bench.
    pub nproc: usize,
    /// /proc/sys/kernel/osrelease.
    pub kernel: String,
    /// The CPU's model name, from /proc/cpuinfo.
    pub cpu: String,
    /// When the run started, UTC.
    pub date: String,
    /// RLIMIT_NOFILE after raising it, inherited by the servers.
    pub open_files_limit: u64,
    /// The repository's commit, with `-dirty` if the work tree has changes:
    /// hotsock's numbers move as it is optimised.
    pub git: Option<String>,
}

impl Machine {
    /// When and where a run was made, for the line above its table:
    /// `DATE: N cores (CPU), Linux KERNEL, git COMMIT`.
    pub fn describe(&self) -> String {
        format!(
            "{}: {} cores ({}), Linux {}, git {}",
            self.date,
            self.nproc,
            self.cpu,
            self.kernel,
            self.git.as_deref().unwrap_or("unknown")
        )
    }

    /// Looks the machine up.
    pub fn detect(open_files_limit: u64) -> Self {
        let read = |path: &str| std::fs::read_to_string(path).map(|s| s.trim().to_string());
        Machine {
            nproc: std::thread::available_parallelism().map_or(0, usize::from),
            kernel: read("/proc/sys/kernel/osrelease").unwrap_or_else(|e| format!("unknown ({e})")),
            cpu: read("/proc/cpuinfo")
                .ok()
                .and_then(|info| {
                    info.lines().find_map(|l| {
                        l.strip_prefix("model name")?
                            .split_once(':')
                            .map(|(_, m)| m.trim().to_string())
                    })
                })
                .unwrap_or_else(|| "unknown".into()),
            date: utc_now(),
            open_files_limit,
            git: git_describe(),
        }
    }
}

/// `git describe --always --dirty`, if this is a git checkout with git installed.
fn git_describe() -> Option<String> {
    let output = Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// Now, as `2026-11-23T04:12:00Z`.
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let secs = libc::time_t::try_from(secs).unwrap_or(0);
    // SAFETY: an all-zero `tm` is a valid value of a plain C struct.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: gmtime_r reads `secs` and writes only into `tm`, both ours and
    // alive for the call; it is the thread-safe variant.
    if unsafe { libc::gmtime_r(&secs, &mut tm) }.is_null() {
        return format!("{secs} seconds since 1970 (UTC)");
    }
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// Writes `json` to `dir/name`, pretty and ending in a newline, and returns
/// where: every mode's results file.
pub fn write_json(dir: &Path, name: &str, json: &serde_json::Value) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    let text = serde_json::to_string_pretty(json).context("cannot serialise the results")?;
    std::fs::write(&path, text + "\n")
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::{Row, Target, median, number, percentile};

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&[7u64], 99.0), Some(7));
        assert_eq!(percentile::<u64>(&[], 50.0), None);
    }

    #[test]
    fn median_skips_what_is_not_a_number() {
        assert_eq!(median([3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median([4.0, 1.0, f64::NAN, 2.0, 3.0]), Some(2.5));
        assert_eq!(median([f64::NAN]), None);
    }

    #[test]
    fn numbers_group_thousands() {
        assert_eq!(number(1234567.0, 0), "1,234,567");
        assert_eq!(number(999.24, 1), "999.2");
        assert_eq!(number(-1234.5, 1), "-1,234.5");
        assert_eq!(number(-0.01, 1), "0.0");
    }

    #[test]
    fn targets_on_costs_and_on_rates() {
        // A cost: hotsock 11 µs against native's 10 is 1.10×, just met.
        let cpu = Row::new("cpu", "cpu", "µs", [Some(11.0), Some(10.0), None])
            .target(Target::OverNativeAtMost(1.10));
        assert_eq!(cpu.met(Target::OverNativeAtMost(1.10)), Some(true));
        assert_eq!(cpu.met(Target::OverNativeAtMost(1.05)), Some(false));
        assert_eq!(
            cpu.describe(Target::OverNativeAtMost(1.1)),
            "≤ 1.10× native"
        );
        // A rate, measured as paired ratios rather than from the values.
        let rate = Row::new("rate", "rate", "1/s", [Some(95.0), Some(100.0), None])
            .ratios([Some(0.94), None]);
        assert_eq!(rate.met(Target::OverNativeAtLeast(0.95)), Some(false));
        assert_eq!(rate.met(Target::OverPythonAtLeast(5.0)), None);
        // An absolute ceiling reads in the row's unit.
        let maps = Row::new("maps", "maps", "mappings", [Some(4.5), Some(4.0), None]);
        assert_eq!(maps.met(Target::AtMost(4.5)), Some(true));
        assert_eq!(maps.describe(Target::AtMost(4.5)), "≤ 4.5 mappings");
        // A value that was not measured is neither met nor missed.
        let missing = Row::new("x", "x", "instructions", [None, Some(910.0), None]);
        assert_eq!(
            missing.describe(Target::AtMost(5000.0)),
            "≤ 5,000 instructions"
        );
        assert_eq!(missing.met(Target::AtMost(5000.0)), None);
        assert_eq!(missing.met(Target::OverNativeAtMost(1.1)), None);
    }
}
