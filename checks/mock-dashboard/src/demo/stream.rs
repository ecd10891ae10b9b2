//! The demo's view of the wire: waiting for frames and events while
//! printing each one as a transcript line.

use std::time::Duration;

use super::*;

impl Demo {
    /// Wait until an item passes `pred`, printing everything on the way.
    /// `None` after `timeout` (said so in the transcript) or when the agent exited.
    pub(super) async fn wait_for(
        &mut self,
        timeout: Duration,
        pred: impl FnMut(&Item) -> bool,
    ) -> Option<Item> {
        self.wait_inner(timeout, None, pred).await
    }

    /// Like [`wait_for`](Self::wait_for) right after sending a command: gives
    /// up after [`FIRST_SIGN`] already when the agent shows no sign of working
    /// on it (no output, progress, status, rejection, nor a heartbeat with a
    /// pending command), so that a missing feature costs seconds, not minutes.
    pub(super) async fn wait_for_answer(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&Item) -> bool,
    ) -> Option<Item> {
        let working = AtomicBool::new(false);
        self.wait_inner(timeout, Some(&working), |i| {
            if shows_work(i) {
                working.store(true, Ordering::Relaxed);
            }
            pred(i)
        })
        .await
    }

    pub(super) async fn wait_inner(
        &mut self,
        timeout: Duration,
        working: Option<&AtomicBool>,
        mut pred: impl FnMut(&Item) -> bool,
    ) -> Option<Item> {
        self.last_miss = None;
        let start = tokio::time::Instant::now();
        loop {
            let mut found = None;
            for item in self.drain() {
                if found.is_none() && pred(&item) {
                    found = Some(item);
                }
            }
            if found.is_some() {
                return found;
            }
            let exit = self.exited.borrow().as_ref().map(|e| e.how.clone());
            if let Some(how) = exit {
                self.note(&format!("the agent exited ({how})"));
                self.last_miss = Some(format!("the agent exited with {how}"));
                return None;
            }
            let limit = match working {
                Some(w) if !w.load(Ordering::Relaxed) => timeout.min(FIRST_SIGN),
                _ => timeout,
            };
            let cursor = self.cursor;
            let mut exited = self.exited.clone();
            let left = (start + limit).saturating_duration_since(tokio::time::Instant::now());
            let news = tokio::select! {
                n = self.dash.wait_until(left, |d| (d.last_seq() > cursor).then_some(())) => n.is_some(),
                _ = exited.wait_for(Option::is_some) => true,
            };
            if !news {
                self.drain();
                self.note(&format!(
                    "(no answer from the agent within {} s — this part is not implemented yet?)",
                    limit.as_secs()
                ));
                self.last_miss = Some(format!("no answer within {} s", limit.as_secs()));
                return None;
            }
        }
    }

    /// Print everything recorded since the last call, in order; return it.
    pub(super) fn drain(&mut self) -> Vec<Item> {
        let hi = self.dash.last_seq();
        let after = self.cursor;
        if hi <= after {
            return Vec::new();
        }
        let in_range = |seq: u64| seq > after && seq <= hi;
        let mut items: Vec<Item> = Vec::new();
        for host in ["", HOST] {
            items.extend(
                self.dash
                    .frames(host, None)
                    .into_iter()
                    .filter(|f| in_range(f.seq))
                    .map(Item::Frame),
            );
        }
        items.extend(
            self.dash
                .events()
                .into_iter()
                .filter(|e| in_range(e.seq))
                .map(Item::Event),
        );
        items.extend(
            self.dash
                .violations()
                .into_iter()
                .filter(|v| in_range(v.seq))
                .map(Item::Violation),
        );
        // A violation sorts right after its frame.
        items.sort_by_key(|i| (i.seq(), matches!(i, Item::Violation(_))));
        self.cursor = hi;
        for item in &items {
            self.print(item);
        }
        items
    }

    pub(super) fn print(&self, item: &Item) {
        match item {
            Item::Frame(f) => {
                let at = f.received.saturating_duration_since(self.t0);
                self.line_at(at, "←", &f.kind, &summarize(&f.kind, &f.payload));
            }
            Item::Event(e) => {
                let (arrow, what, detail) = match e.kind.as_str() {
                    "connected" => (
                        "→",
                        "registered",
                        format!("host_id={}", e.host.as_deref().unwrap_or("?")),
                    ),
                    "closed" => (
                        "←",
                        "close",
                        format!(
                            "code={} reason={:?}",
                            code(e.code),
                            e.reason.as_deref().unwrap_or("")
                        ),
                    ),
                    "replaced" => (
                        "→",
                        "close",
                        format!("code={} (replaced by a newer connection)", code(e.code)),
                    ),
                    "rejected" => ("→", "HTTP 401", e.reason.clone().unwrap_or_default()),
                    _ => ("·", "socket ended", e.reason.clone().unwrap_or_default()),
                };
                self.line(arrow, what, &detail);
            }
            Item::Violation(v) => println!("{:>9}  !! protocol violation: {}", "", v.message),
        }
    }

    pub(super) fn line(&self, arrow: &str, what: &str, detail: &str) {
        self.line_at(self.t0.elapsed(), arrow, what, detail);
    }

    pub(super) fn line_at(&self, at: Duration, arrow: &str, what: &str, detail: &str) {
        println!("{:>8.3}s {arrow} {what:<16} {detail}", at.as_secs_f64());
    }

    pub(super) fn step(&mut self, title: &str) {
        self.drain();
        println!("\n── {title}");
    }

    pub(super) fn note(&self, text: &str) {
        println!("{:>9}  {text}", "");
    }

    /// Waits up to `timeout` for the agent process to exit, then prints what
    /// arrived meanwhile; how it exited, if it did.
    pub(super) async fn wait_exit(&mut self, timeout: Duration) -> Option<super::process::Exit> {
        let mut exited = self.exited.clone();
        let exit = tokio::time::timeout(timeout, exited.wait_for(Option::is_some))
            .await
            .ok()
            .and_then(Result::ok)
            .and_then(|e| (*e).clone());
        self.drain();
        exit
    }
}
