//! The table of figures, budgets and verdicts the benchmark prints.

#[derive(Debug, Clone)]
pub(crate) enum Verdict {
    Pass,
    Fail,
    Info,
    NotRun,
}

impl Verdict {
    pub(crate) fn of(ok: bool) -> Verdict {
        if ok { Verdict::Pass } else { Verdict::Fail }
    }

    pub(crate) fn label(&self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "**FAIL**",
            Verdict::Info => "info",
            Verdict::NotRun => "not run",
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) figure: &'static str,
    pub(crate) measured: String,
    pub(crate) budget: &'static str,
    pub(crate) verdict: Verdict,
}

#[derive(Default)]
pub(crate) struct Report {
    pub(crate) rows: Vec<Row>,
    pub(crate) notes: Vec<String>,
}

impl Report {
    pub(crate) fn row(
        &mut self,
        figure: &'static str,
        budget: &'static str,
        measured: String,
        v: Verdict,
    ) {
        eprintln!("[budget] {figure}: {measured} ({})", v.label());
        self.rows.push(Row {
            figure,
            measured,
            budget,
            verdict: v,
        });
    }

    /// A figure that failed because its agent never registered; `log_tail`
    /// is the end of that agent's log.
    pub(crate) fn no_register(
        &mut self,
        figure: &'static str,
        budget: &'static str,
        log_tail: String,
    ) {
        self.row(
            figure,
            budget,
            format!("no register; {log_tail}"),
            Verdict::Fail,
        );
    }

    pub(crate) fn note(&mut self, text: String) {
        eprintln!("[budget] note: {text}");
        self.notes.push(text);
    }
}

pub(crate) fn not_run(r: &mut Report, figure: &'static str, budget: &'static str, why: &str) {
    r.row(figure, budget, why.to_owned(), Verdict::NotRun);
}
