//! Figure 8: the binary's size.

use crate::fixture::*;
use crate::procfs::*;
use crate::settings::*;
use crate::table::*;

pub(crate) fn figure_size(r: &mut Report) {
    let bytes = std::fs::read(agent_bin()).expect("read the agent binary");
    let size = bytes.len() as u64;
    let stripped = match elf_facts(&bytes).map(|f| f.0) {
        Some(false) => "stripped",
        Some(true) => "NOT stripped (has .symtab)",
        None => "not an ELF64 file?",
    };
    r.row(
        "stripped release binary",
        "≤ 3.6 MiB (issue 32's goal: 3 MiB)",
        format!(
            "{:.2} MiB ({} bytes, {stripped})",
            size as f64 / MIB,
            group(size)
        ),
        Verdict::of(size as f64 <= 3.6 * MIB && stripped == "stripped"),
    );
}
