//! Readings of a process and of the machine from `/proc` (Linux).

use crate::settings::*;

pub(crate) fn proc_status_kib(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// The fields of `/proc/<pid>/stat` after the command name, so that index 0 is
/// field 3 (`state`) of proc(5).
pub(crate) fn proc_stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &text[text.rfind(')')? + 1..];
    Some(after.split_whitespace().map(str::to_owned).collect())
}

/// utime + stime of the whole process (all threads, dead ones included), in clock ticks.
pub(crate) fn proc_cpu_ticks(pid: u32) -> Option<u64> {
    let f = proc_stat_fields(pid)?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// On-CPU time of each live thread in ns, by thread id (`/proc/<pid>/task/*/schedstat`).
pub(crate) fn proc_threads_runtime_ns(pid: u32) -> std::collections::BTreeMap<String, u64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Default::default();
    };
    dir.flatten()
        .filter_map(|e| {
            let ns = std::fs::read_to_string(e.path().join("schedstat")).ok()?;
            let ns = ns.split_whitespace().next()?.parse::<u64>().ok()?;
            Some((e.file_name().to_string_lossy().into_owned(), ns))
        })
        .collect()
}

/// On-CPU time since `before` of the threads alive now (time of threads that
/// ended in between is not seen).
pub(crate) fn runtime_since(pid: u32, before: &std::collections::BTreeMap<String, u64>) -> u64 {
    proc_threads_runtime_ns(pid)
        .iter()
        .map(|(tid, ns)| ns.saturating_sub(before.get(tid).copied().unwrap_or(0)))
        .sum()
}

/// A field of `/proc/<pid>/smaps_rollup`, in KiB.
pub(crate) fn proc_rollup_kib(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Resident KiB per mapped object (file name, `[heap]`, `[stack]`, `[anon]`),
/// largest first.
pub(crate) fn rss_by_object(pid: u32) -> Vec<(String, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut by: std::collections::BTreeMap<String, u64> = Default::default();
    let mut current = String::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or_default();
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            let path = line.split_whitespace().nth(5).unwrap_or("[anon]");
            current = path.rsplit('/').next().unwrap_or(path).to_owned();
        } else if first == "Rss:" {
            let kib: u64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
            *by.entry(current.clone()).or_default() += kib;
        }
    }
    let mut v: Vec<(String, u64)> = by.into_iter().filter(|(_, k)| *k > 0).collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.1));
    v
}

pub(crate) fn proc_threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}

pub(crate) fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).ok().filter(|t| *t > 0).unwrap_or(100)
}

/// Direct children of `pid`.
pub(crate) fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let ppid = pid.to_string();
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| proc_stat_fields(*p).is_some_and(|f| f.get(1) == Some(&ppid)))
        .collect()
}

pub(crate) fn kib_to_mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

pub(crate) fn machine() -> Vec<String> {
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|x| x.1))
        .map_or_else(|| "unknown".to_owned(), |m| m.trim().to_owned());
    let mhz = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("cpu MHz")?.split_once(':').map(|x| x.1))
        .map_or_else(String::new, |m| format!(" @ {} MHz", m.trim()));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".to_owned(), |k| k.trim().to_owned());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().find_map(|l| {
                l.strip_prefix("MemTotal:")?
                    .split_whitespace()
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
        })
        .map_or_else(
            || "unknown".to_owned(),
            |k| format!("{:.1} GiB", k as f64 / MIB),
        );
    vec![
        format!("CPU: {model}{mhz}, {nproc} logical CPUs (nproc)"),
        format!("kernel: Linux {kernel}, RAM: {mem}"),
        format!("agent binary: {} ({})", agent_bin(), linking()),
    ]
}

/// What the ELF header of the agent binary says: whether a symbol table
/// (`SHT_SYMTAB` section) is left, and whether it asks for a dynamic loader
/// (`PT_INTERP`, i.e. dynamically linked). `None`: not a little-endian ELF64.
pub(crate) fn elf_facts(bytes: &[u8]) -> Option<(bool, bool)> {
    if bytes.get(..4)? != b"\x7fELF" || *bytes.get(4)? != 2 || *bytes.get(5)? != 1 {
        return None;
    }
    let u64_at = |o: usize| Some(u64::from_le_bytes(bytes.get(o..o + 8)?.try_into().ok()?));
    let u16_at = |o: usize| Some(u16::from_le_bytes(bytes.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(bytes.get(o..o + 4)?.try_into().ok()?));
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let shoff = usize::try_from(u64_at(0x28)?).ok()?;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    let shentsize = usize::from(u16_at(0x3A)?);
    let shnum = usize::from(u16_at(0x3C)?);
    let symtab = (0..shnum).any(|i| u32_at(shoff + i * shentsize + 4) == Some(2));
    let interp = (0..phnum).any(|i| u32_at(phoff + i * phentsize) == Some(3));
    Some((symtab, interp))
}

pub(crate) fn linking() -> &'static str {
    match std::fs::read(agent_bin())
        .ok()
        .as_deref()
        .and_then(elf_facts)
    {
        Some((_, true)) => "dynamically linked",
        Some((_, false)) => "statically linked",
        None => "linking unknown",
    }
}
