//! CPU, RAM, swap and load for the heartbeat's `metrics` object.
//!
//! The StaSysMo daemon, when it runs, writes one number per file into
//! `/dev/shm/stasysmo/{cpu,ram,swap,load}` (Linux) or `/tmp/stasysmo/...`
//! (macOS); its values are used while all four are fresh. Otherwise the host is
//! measured directly with a deliberately small `sysinfo` [`System`]: only CPU
//! usage and memory, never processes or disks (the agent's idle memory budget is a
//! few MiB).

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use sysinfo::{CpuRefreshKind, MemoryRefreshKind, RefreshKind, System};

/// StaSysMo values older than this are stale.
const STALE_AFTER: Duration = Duration::from_secs(30);

/// StaSysMo files dated further in the future than this are not trusted.
const FUTURE_TOLERANCE: Duration = Duration::from_secs(5);

/// A StaSysMo value file is one number; anything larger is not one.
const VALUE_FILE_CAP: u64 = 256;

/// One sample of the host's load, as sent in the heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Metrics {
    /// CPU usage in percent (0–100, all cores together), one decimal.
    pub cpu: f64,
    /// RAM in use in percent (0–100), one decimal.
    pub ram: f64,
    /// Swap in use in percent (0–100; 0 without swap), one decimal.
    pub swap: f64,
    /// One-minute load average, two decimals.
    pub load: f64,
}

/// Where a [`Metrics`] sample came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricsSource {
    /// The StaSysMo daemon's files.
    StaSysMo,
    /// Measured directly with `sysinfo`.
    SysInfo,
    /// No metrics could be obtained (or none sampled yet).
    None,
}

impl MetricsSource {
    /// A short name for logs and `--check`: `"stasysmo"`, `"sysinfo"` or `"none"`.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricsSource::StaSysMo => "stasysmo",
            MetricsSource::SysInfo => "sysinfo",
            MetricsSource::None => "none",
        }
    }
}

impl fmt::Display for MetricsSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Samples host metrics: StaSysMo's files when fresh, else `sysinfo`.
///
/// Keep one reader for the life of the agent: CPU usage is measured over the time
/// between two samples (the first sample covers the time since [`MetricsReader::new`];
/// `sysinfo` needs at least 200 ms between refreshes, and reports 0 % before that).
pub struct MetricsReader {
    dir: PathBuf,
    system: Option<System>,
    last_source: MetricsSource,
}

impl fmt::Debug for MetricsReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsReader")
            .field("stasysmo_dir", &self.dir)
            .field("sysinfo", &self.system.is_some())
            .field("last_source", &self.last_source)
            .finish()
    }
}

impl MetricsReader {
    /// A reader of StaSysMo files in `stasysmo_dir` (default: `/dev/shm/stasysmo`
    /// on Linux, `/tmp/stasysmo` on macOS) with `sysinfo` as the fallback.
    ///
    /// Takes the first CPU reading, so that the first [`sample`](Self::sample)
    /// can report usage since now without waiting.
    pub fn new(stasysmo_dir: Option<PathBuf>) -> Self {
        let system = sysinfo::IS_SUPPORTED_SYSTEM.then(|| {
            System::new_with_specifics(
                RefreshKind::nothing().with_cpu(CpuRefreshKind::nothing().with_cpu_usage()),
            )
        });
        MetricsReader {
            dir: stasysmo_dir.unwrap_or_else(default_stasysmo_dir),
            system,
            last_source: MetricsSource::None,
        }
    }

    /// The directory StaSysMo's files are read from.
    pub fn stasysmo_dir(&self) -> &Path {
        &self.dir
    }

    /// Takes one sample: StaSysMo's values when all four files parse and are
    /// fresh, else a direct measurement; `(None, MetricsSource::None)` only when
    /// neither works. Cheap: a few small file reads, no waiting.
    pub fn sample(&mut self) -> (Option<Metrics>, MetricsSource) {
        // Advance the CPU baseline on every sample, so that a fallback to sysinfo
        // reports usage since the previous sample rather than since long ago.
        if let Some(system) = self.system.as_mut() {
            system.refresh_cpu_usage();
        }
        let (metrics, source) = if let Some(m) = read_stasysmo(&self.dir, SystemTime::now()) {
            (Some(m), MetricsSource::StaSysMo)
        } else if let Some(m) = self.system.as_mut().and_then(measure) {
            (Some(m), MetricsSource::SysInfo)
        } else {
            (None, MetricsSource::None)
        };
        if source != self.last_source {
            tracing::debug!(
                source = source.as_str(),
                stasysmo_dir = %self.dir.display(),
                "metrics source changed"
            );
            self.last_source = source;
        }
        (metrics, source)
    }

    /// The source the last [`sample`](Self::sample) used
    /// ([`MetricsSource::None`] before the first).
    pub fn source_hint(&self) -> MetricsSource {
        self.last_source
    }
}

/// StaSysMo's directory on this platform.
fn default_stasysmo_dir() -> PathBuf {
    if cfg!(target_os = "macos") {
        PathBuf::from("/tmp/stasysmo")
    } else {
        PathBuf::from("/dev/shm/stasysmo")
    }
}

/// The four StaSysMo values in `dir`, if all parse and are fresh at `now`.
fn read_stasysmo(dir: &Path, now: SystemTime) -> Option<Metrics> {
    let cpu = read_value(&dir.join("cpu"), now)?;
    let ram = read_value(&dir.join("ram"), now)?;
    let swap = read_value(&dir.join("swap"), now)?;
    let load = read_value(&dir.join("load"), now)?;
    Some(Metrics {
        cpu: round1(cpu.min(100.0)),
        ram: round1(ram.min(100.0)),
        swap: round1(swap.min(100.0)),
        load: round2(load),
    })
}

/// One StaSysMo value file, if it is fresh at `now` and holds a number.
fn read_value(path: &Path, now: SystemTime) -> Option<f64> {
    let file = File::open(path).ok()?;
    let modified = file.metadata().ok()?.modified().ok()?;
    if !is_fresh(modified, now) {
        return None;
    }
    let mut bytes = Vec::new();
    file.take(VALUE_FILE_CAP).read_to_end(&mut bytes).ok()?;
    parse_value(std::str::from_utf8(&bytes).ok()?)
}

/// Whether a file modified at `modified` is fresh at `now`: younger than
/// [`STALE_AFTER`] and not more than [`FUTURE_TOLERANCE`] in the future.
fn is_fresh(modified: SystemTime, now: SystemTime) -> bool {
    match now.duration_since(modified) {
        Ok(age) => age < STALE_AFTER,
        Err(ahead) => ahead.duration() <= FUTURE_TOLERANCE,
    }
}

/// A StaSysMo value: the first white-space separated token, an optional
/// trailing `%` removed, a finite number ≥ 0.
fn parse_value(text: &str) -> Option<f64> {
    let token = text.split_whitespace().next()?;
    let token = token.strip_suffix('%').unwrap_or(token);
    let value: f64 = token.parse().ok()?;
    (value.is_finite() && value >= 0.0).then_some(value)
}

/// Measures the host with `sysinfo`; CPU usage is since the last CPU refresh.
fn measure(system: &mut System) -> Option<Metrics> {
    system.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram().with_swap());
    let ram = percent(system.used_memory(), system.total_memory())?;
    let swap = percent(system.used_swap(), system.total_swap()).unwrap_or(0.0);
    let cpu = f64::from(system.global_cpu_usage());
    let cpu = if cpu.is_finite() {
        cpu.clamp(0.0, 100.0)
    } else {
        0.0
    };
    let load = System::load_average().one;
    let load = if load.is_finite() && load >= 0.0 {
        load
    } else {
        0.0
    };
    Some(Metrics {
        cpu: round1(cpu),
        ram: round1(ram),
        swap: round1(swap),
        load: round2(load),
    })
}

/// `used` as a percentage of `total` (0–100); `None` when `total` is 0.
fn percent(used: u64, total: u64) -> Option<f64> {
    (total > 0).then(|| (used as f64 / total as f64 * 100.0).clamp(0.0, 100.0))
}

/// Rounds to one decimal place.
fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Rounds to two decimal places.
fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_fixture(dir: &Path, values: [(&str, &str); 4]) {
        for (name, value) in values {
            std::fs::write(dir.join(name), value).expect("write fixture");
        }
    }

    fn set_mtime(path: &Path, when: SystemTime) {
        File::options()
            .write(true)
            .open(path)
            .expect("open fixture")
            .set_modified(when)
            .expect("set mtime");
    }

    const GOOD: [(&str, &str); 4] = [
        ("cpu", "12.34\n"),
        ("ram", "56.78%\n"),
        ("swap", "0\n"),
        ("load", "1.234 0.98 0.50\n"),
    ];

    fn assert_sane(m: &Metrics) {
        for (name, v) in [("cpu", m.cpu), ("ram", m.ram), ("swap", m.swap)] {
            assert!((0.0..=100.0).contains(&v), "{name} = {v}");
        }
        assert!(m.load.is_finite() && m.load >= 0.0, "load = {}", m.load);
    }

    #[test]
    fn fresh_stasysmo_files_are_used() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_fixture(dir.path(), GOOD);
        let mut reader = MetricsReader::new(Some(dir.path().to_owned()));
        assert_eq!(reader.source_hint(), MetricsSource::None);
        let (metrics, source) = reader.sample();
        assert_eq!(source, MetricsSource::StaSysMo);
        assert_eq!(reader.source_hint(), MetricsSource::StaSysMo);
        assert_eq!(
            metrics,
            Some(Metrics {
                cpu: 12.3,
                ram: 56.8,
                swap: 0.0,
                load: 1.23
            })
        );
    }

    #[test]
    fn percentages_above_100_are_clamped() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_fixture(
            dir.path(),
            [
                ("cpu", "250"),
                ("ram", "100.04"),
                ("swap", "3"),
                ("load", "9"),
            ],
        );
        let m = read_stasysmo(dir.path(), SystemTime::now()).expect("fresh");
        assert_eq!((m.cpu, m.ram, m.swap, m.load), (100.0, 100.0, 3.0, 9.0));
    }

    #[test]
    fn stale_file_falls_back_to_sysinfo() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_fixture(dir.path(), GOOD);
        let old = SystemTime::now() - Duration::from_secs(120);
        set_mtime(&dir.path().join("ram"), old);
        assert_eq!(read_stasysmo(dir.path(), SystemTime::now()), None);
        let mut reader = MetricsReader::new(Some(dir.path().to_owned()));
        let (metrics, source) = reader.sample();
        assert_eq!(source, MetricsSource::SysInfo);
        assert_sane(&metrics.expect("sysinfo metrics"));
    }

    #[test]
    fn future_mtime_is_rejected() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_fixture(dir.path(), GOOD);
        set_mtime(
            &dir.path().join("cpu"),
            SystemTime::now() + Duration::from_secs(3600),
        );
        assert_eq!(read_stasysmo(dir.path(), SystemTime::now()), None);
        let mut reader = MetricsReader::new(Some(dir.path().to_owned()));
        assert_eq!(reader.sample().1, MetricsSource::SysInfo);
    }

    #[test]
    fn freshness_window() {
        let now = SystemTime::now();
        assert!(is_fresh(now, now));
        assert!(is_fresh(now - Duration::from_secs(29), now));
        assert!(!is_fresh(now - Duration::from_secs(30), now));
        assert!(is_fresh(now + Duration::from_secs(2), now));
        assert!(!is_fresh(now + Duration::from_secs(60), now));
    }

    #[test]
    fn missing_file_falls_back_to_sysinfo() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_fixture(dir.path(), GOOD);
        std::fs::remove_file(dir.path().join("swap")).expect("remove");
        let mut reader = MetricsReader::new(Some(dir.path().to_owned()));
        let (metrics, source) = reader.sample();
        assert_eq!(source, MetricsSource::SysInfo);
        assert_sane(&metrics.expect("sysinfo metrics"));
    }

    #[test]
    fn garbage_falls_back_to_sysinfo() {
        for (name, garbage) in [
            ("cpu", "n/a\n"),
            ("ram", ""),
            ("swap", "-5"),
            ("load", "NaN"),
            ("cpu", "inf"),
        ] {
            let dir = tempfile::tempdir().expect("tempdir");
            write_fixture(dir.path(), GOOD);
            std::fs::write(dir.path().join(name), garbage).expect("write");
            let mut reader = MetricsReader::new(Some(dir.path().to_owned()));
            assert_eq!(
                reader.sample().1,
                MetricsSource::SysInfo,
                "{name} = {garbage:?}"
            );
        }
    }

    #[test]
    fn missing_directory_uses_sysinfo_in_sane_ranges() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut reader = MetricsReader::new(Some(dir.path().join("absent")));
        let (first, source) = reader.sample();
        assert_eq!(source, MetricsSource::SysInfo);
        assert_sane(&first.expect("sysinfo metrics"));
        std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL + Duration::from_millis(50));
        let (second, source) = reader.sample();
        assert_eq!(source, MetricsSource::SysInfo);
        let second = second.expect("sysinfo metrics");
        assert_sane(&second);
        assert!(second.ram > 0.0, "a running host uses some RAM");
        // Rounded as promised.
        assert_eq!(second.cpu, round1(second.cpu));
        assert_eq!(second.load, round2(second.load));
    }

    #[test]
    fn value_parser() {
        assert_eq!(parse_value("42"), Some(42.0));
        assert_eq!(parse_value("  42.5%\n"), Some(42.5));
        assert_eq!(parse_value("0.52 0.48 0.40 1/234 5678\n"), Some(0.52));
        assert_eq!(parse_value(""), None);
        assert_eq!(parse_value("%"), None);
        assert_eq!(parse_value("abc"), None);
        assert_eq!(parse_value("-1"), None);
        assert_eq!(parse_value("NaN"), None);
    }

    #[test]
    fn rounding() {
        assert_eq!(round1(12.34), 12.3);
        assert_eq!(round1(12.35_f64 + 1e-9), 12.4);
        assert_eq!(round2(1.234), 1.23);
        assert_eq!(round2(0.0), 0.0);
    }

    #[test]
    fn names_and_defaults() {
        assert_eq!(MetricsSource::StaSysMo.as_str(), "stasysmo");
        assert_eq!(MetricsSource::SysInfo.as_str(), "sysinfo");
        assert_eq!(MetricsSource::None.as_str(), "none");
        let reader = MetricsReader::new(None);
        let expected = if cfg!(target_os = "macos") {
            "/tmp/stasysmo"
        } else {
            "/dev/shm/stasysmo"
        };
        assert_eq!(reader.stasysmo_dir(), Path::new(expected));
    }

    #[test]
    fn metrics_serialize_with_protocol_names() {
        let m = Metrics {
            cpu: 1.5,
            ram: 2.0,
            swap: 0.0,
            load: 0.25,
        };
        let json = serde_json::to_value(m).expect("serialize");
        assert_eq!(
            json,
            serde_json::json!({"cpu": 1.5, "ram": 2.0, "swap": 0.0, "load": 0.25})
        );
    }
}
