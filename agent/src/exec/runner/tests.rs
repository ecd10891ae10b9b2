//! Tests of the runner: real child processes, their output and their end.

use super::lines::TAIL_LINE_BYTES;
use super::*;
use crate::outbound::{self, OutboundRx};
use std::ffi::OsString;

/// Waits (up to 5 s) for `pid` to be gone or a zombie (a killed orphan
/// waits for its new parent to reap it).
pub(crate) fn gone(pid: i32) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"));
        let dead = match stat {
            // SAFETY: probing with signal 0 (systems without /proc).
            Err(_) if !Path::new("/proc/self").exists() => unsafe { libc::kill(pid, 0) != 0 },
            Err(_) => true,
            Ok(s) => s
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
        };
        if dead {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn split_all(input: &[u8], max: usize, chunk: usize) -> Vec<Vec<u8>> {
    let mut s = Splitter::new(max, chunk);
    let mut lines = Vec::new();
    let mut rest = input;
    while !rest.is_empty() {
        let spare = s.spare();
        let n = spare.len().min(rest.len()).min(chunk);
        spare[..n].copy_from_slice(&rest[..n]);
        rest = &rest[n..];
        s.commit(n);
        while let Some(r) = s.next_line() {
            lines.push(s.get(r).to_vec());
        }
    }
    if let Some(r) = s.finish() {
        lines.push(s.get(r).to_vec());
    }
    lines
}

#[test]
fn splits_lines_across_chunks() {
    for chunk in [1, 2, 3, 7, 64] {
        let lines = split_all(b"a\nbb\r\n\nccc\nlast", 16, chunk);
        assert_eq!(
            lines,
            vec![
                b"a".to_vec(),
                b"bb".to_vec(),
                b"".to_vec(),
                b"ccc".to_vec(),
                b"last".to_vec()
            ],
            "chunk {chunk}"
        );
    }
}

#[test]
fn long_lines_are_split_at_max() {
    let mut input = vec![b'x'; 10];
    input.push(b'\n');
    input.extend_from_slice(&[b'y'; 8]);
    input.push(b'\n');
    for chunk in [1, 3, 100] {
        let lines = split_all(&input, 4, chunk);
        assert_eq!(
            lines,
            vec![
                b"xxxx".to_vec(),
                b"xxxx".to_vec(),
                b"xx".to_vec(),
                b"yyyy".to_vec(),
                b"yyyy".to_vec()
            ],
            "chunk {chunk}"
        );
    }
}

#[test]
fn split_respects_utf8_characters() {
    // "aé€" = 61 | c3 a9 | e2 82 ac; max 4 would cut the euro sign.
    let lines = split_all("aé€b\n".as_bytes(), 4, 64);
    let text: Vec<String> = lines
        .iter()
        .map(|l| String::from_utf8(l.clone()).unwrap())
        .collect();
    assert_eq!(text, vec!["aé", "€b"]);
}

#[test]
fn never_panics_on_arbitrary_bytes() {
    let mut seed: u32 = 12345;
    for _ in 0..200 {
        let len = (seed % 300) as usize;
        let mut data = Vec::with_capacity(len);
        for _ in 0..len {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let b = (seed >> 16) as u8;
            data.push(if b.is_multiple_of(7) { b'\n' } else { b });
        }
        for (max, chunk) in [(4, 1), (5, 3), (16, 7)] {
            let lines = split_all(&data, max, chunk);
            assert!(lines.iter().all(|l| l.len() <= max));
            let total: usize = lines.iter().map(Vec::len).sum();
            assert!(total <= data.len());
        }
    }
}

#[test]
fn tail_keeps_the_last_lines() {
    let mut t = Tail::default();
    assert!(t.is_empty());
    for i in 0..100 {
        t.push(&format!("line {i}"));
    }
    let text = t.text();
    assert!(text.starts_with(&format!("line {}", 100 - TAIL_LINES)));
    assert!(text.ends_with("line 99"));
    t.push(&"é".repeat(1000));
    assert!(t.text().len() < 100 * TAIL_LINES + TAIL_LINE_BYTES);
}

struct Harness {
    out: Arc<Outbound>,
    collector: tokio::task::JoinHandle<Vec<(Stream, String)>>,
}

fn harness() -> Harness {
    let (out, rx) = outbound::lanes(Duration::from_secs(5));
    out.set_connected(true);
    let consumer = Arc::downgrade(&out);
    let collector = tokio::spawn(async move {
        let OutboundRx { mut output, .. } = rx;
        let mut lines = Vec::new();
        while let Some(line) = output.recv().await {
            if let Some(c) = consumer.upgrade() {
                c.note_consumed(line.count() as u64, line.weight());
            }
            for o in line.outputs() {
                lines.push((o.stream, o.line));
            }
        }
        lines
    });
    Harness { out, collector }
}

fn sh(script: &str) -> Vec<OsString> {
    vec![OsString::from("-c"), OsString::from(script)]
}

async fn run_sh(
    out: &Arc<Outbound>,
    ctl: &Arc<Control>,
    log: Arc<RunLog>,
    script: &str,
) -> StepResult {
    let sink = Sink::new("test", Some(out.clone()), log);
    let env = ChildEnv::from_process(Path::new("/tmp"), &crate::config::SshSettings::default());
    let args = sh(script);
    let args: Vec<&OsStr> = args.iter().map(OsString::as_os_str).collect();
    let spec = Spec {
        program: OsStr::new("sh"),
        args: &args,
        cwd: Path::new("/"),
    };
    run_step(&sink, ctl, &env, &spec).await.unwrap()
}

#[tokio::test]
async fn streams_both_streams_and_logs() {
    let h = harness();
    let tmp = tempfile::tempdir().unwrap();
    let log = Arc::new(RunLog::create(tmp.path(), "test"));
    let ctl = Control::new("test", None);
    let r = run_sh(
        &h.out,
        &ctl,
        log.clone(),
        "echo one; echo err >&2; printf 'no newline\\377'; exit 3",
    )
    .await;
    assert_eq!(r.code, 3);
    assert_eq!(r.stderr.text(), "err");
    drop(h.out);
    let lines = h.collector.await.unwrap();
    assert!(lines.contains(&(Stream::Stdout, "one".into())));
    assert!(lines.contains(&(Stream::Stderr, "err".into())));
    assert!(lines.contains(&(Stream::Stdout, "no newline\u{FFFD}".into())));
    log.flush().await;
    let logged = std::fs::read(log.path().unwrap()).unwrap();
    assert!(logged.windows(4).any(|w| w == b"one\n"));
    assert!(logged.windows(11).any(|w| w == b"no newline\xff"));
    assert!(ctl.current_pid() > 1);
}

#[tokio::test]
async fn lines_of_one_read_are_repaired_one_by_one() {
    // one read: the group is not UTF-8 as a whole, so each line is checked
    // alone; the valid ones come through as they are
    let h = harness();
    let script = "printf 'one\\nbad\\377x\\nthr\\303\\251e\\n\\342\\202\\254\\n'";
    let ctl = Control::new("test", None);
    let r = run_sh(&h.out, &ctl, Arc::new(RunLog::disabled()), script).await;
    assert_eq!(r.code, 0);
    drop(h.out);
    let lines = h.collector.await.unwrap();
    let texts: Vec<&str> = lines.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(texts, ["one", "bad\u{FFFD}x", "thrée", "€"]);
}

#[tokio::test]
async fn environment_is_clean() {
    let h = harness();
    let ctl = Control::new("test", None);
    // The test process itself may have any variables; the child sees none
    // but the whitelisted ones.
    let r = run_sh(
        &h.out,
        &ctl,
        Arc::new(RunLog::disabled()),
        "env | cut -d= -f1 | sort | tr '\\n' ' '",
    )
    .await;
    assert_eq!(r.code, 0);
    drop(h.out);
    let lines = h.collector.await.unwrap();
    let names = &lines[0].1;
    for name in names.split_whitespace() {
        let allowed = super::super::env::PASSED.contains(&name)
            || [
                "PATH",
                "HOME",
                "GIT_TERMINAL_PROMPT",
                "GIT_SSH_COMMAND",
                "PWD",
                "SHLVL",
                "_",
                "OLDPWD",
            ]
            .contains(&name);
        assert!(allowed, "{name} leaked into the child environment");
    }
}

#[tokio::test]
async fn stop_kills_the_whole_group() {
    let h = harness();
    let tmp = tempfile::tempdir().unwrap();
    let pidfile = tmp.path().join("grandchild");
    let ctl = Control::new("test", None);
    let c2 = ctl.clone();
    let pf = pidfile.clone();
    let stopper = tokio::spawn(async move {
        // wait for the grandchild to exist, then stop
        while std::fs::read_to_string(&pf)
            .map(|s| s.trim().is_empty())
            .unwrap_or(true)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        c2.request_stop(StopCause::User, libc::SIGTERM);
    });
    let script = format!(
        "sleep 1000 & echo $! > {}.tmp; mv {0}.tmp {0}; wait",
        pidfile.display()
    );
    let started = std::time::Instant::now();
    let r = run_sh(&h.out, &ctl, Arc::new(RunLog::disabled()), &script).await;
    stopper.await.unwrap();
    assert_eq!(r.code, 128 + libc::SIGTERM);
    assert!(started.elapsed() < Duration::from_secs(10));
    let grandchild: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        gone(grandchild),
        "grandchild {grandchild} survived the stop"
    );
    assert_eq!(ctl.stop_cause(), Some(StopCause::User));
}

#[tokio::test]
async fn leftover_background_process_does_not_hang_the_run() {
    let h = harness();
    let ctl = Control::new("test", None);
    let started = std::time::Instant::now();
    let r = run_sh(
        &h.out,
        &ctl,
        Arc::new(RunLog::disabled()),
        "sleep 1000 & echo started",
    )
    .await;
    assert_eq!(r.code, 0);
    assert!(started.elapsed() < DRAIN_AFTER_EXIT + Duration::from_secs(3));
}

#[tokio::test]
async fn spawn_failure_is_an_error() {
    let (out, _rx) = outbound::lanes(Duration::from_secs(1));
    let sink = Sink::new("pull", Some(out), Arc::new(RunLog::disabled()));
    let ctl = Control::new("pull", None);
    let env = ChildEnv::from_process(Path::new("/tmp"), &crate::config::SshSettings::default());
    let spec = Spec {
        program: OsStr::new("nixfleet-no-such-program"),
        args: &[],
        cwd: Path::new("/"),
    };
    assert!(run_step(&sink, &ctl, &env, &spec).await.is_err());
}

/// A million short lines flow through in order and quickly (debug builds
/// are slower; the rate is printed, the order and count are asserted).
#[tokio::test]
async fn a_million_lines_in_order() {
    let h = harness();
    let tmp = tempfile::tempdir().unwrap();
    let log = Arc::new(RunLog::create(tmp.path(), "test"));
    let ctl = Control::new("test", None);
    let started = std::time::Instant::now();
    let r = run_sh(&h.out, &ctl, log.clone(), "seq 1 1000000").await;
    let elapsed = started.elapsed();
    assert_eq!(r.code, 0);
    drop(h.out);
    let lines = h.collector.await.unwrap();
    assert_eq!(lines.len(), 1_000_000);
    for (i, (stream, text)) in lines.iter().enumerate() {
        assert_eq!(*stream, Stream::Stdout);
        assert_eq!(text, &(i + 1).to_string());
    }
    eprintln!(
        "1,000,000 lines in {elapsed:?} ({:.0} lines/s)",
        1e6 / elapsed.as_secs_f64()
    );
    log.flush().await;
    let logged = std::fs::metadata(log.path().unwrap()).unwrap().len();
    assert_eq!(logged, 6_888_896);
}

#[test]
fn a_capture_is_bounded_by_lines_and_bytes() {
    let mut kept = Captured::default();
    let long = "x".repeat(MAX_LINE);
    for _ in 0..(MAX_CAPTURED_BYTES / MAX_LINE + 10) {
        kept.push(long.clone());
    }
    let lines = kept.take();
    assert_eq!(lines.len(), MAX_CAPTURED_BYTES / MAX_LINE);
    assert!(kept.take().is_empty());
    for i in 0..(MAX_CAPTURED + 5) {
        kept.push(i.to_string());
    }
    assert_eq!(kept.take().len(), MAX_CAPTURED);
}
