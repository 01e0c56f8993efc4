//! `<state-dir>/schedules/<name>.json`: one [`Schedule`] per file, written crash-safely
//! ([`crate::store::write_files`]). A file that does not parse is moved aside to
//! `<file>.corrupt-<unix seconds>` and logged; the other schedules load.
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use fault_api::schedule::Schedule;

/// The schedules folder of `state_dir`, created if missing.
pub fn dir(state_dir: &Path) -> Result<PathBuf> {
    let dir = state_dir.join("schedules");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn file_name(name: &str) -> String {
    // Names are RFC 1123 labels (checked at create): safe as file names.
    format!("{name}.json")
}

/// Every schedule in `dir`, by file name order.
pub fn load(dir: &Path) -> Result<Vec<Schedule>> {
    let mut out = Vec::new();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| x == "json")
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    paths.sort();
    for path in paths {
        let parsed = std::fs::read(&path)
            .context("reading")
            .and_then(|b| serde_json::from_slice::<Schedule>(&b).context("parsing"));
        match parsed {
            Ok(s) => out.push(s),
            Err(e) => set_aside(&path, &e),
        }
    }
    Ok(out)
}

fn set_aside(path: &Path, e: &anyhow::Error) {
    let secs = jiff::Timestamp::now().as_second();
    let aside = PathBuf::from(format!("{}.corrupt-{secs}", path.display()));
    tracing::error!(file = %path.display(), error = %format!("{e:#}"), aside = %aside.display(), "a schedule file does not load; moved aside");
    let _ = std::fs::rename(path, aside);
}

/// Writes `s` to its file.
pub fn save(dir: &Path, s: &Schedule) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(s).context("serializing the schedule")?;
    crate::store::write_files(dir, &[(file_name(&s.spec.name), bytes)], &[])
}

/// Removes the file of schedule `name`.
pub fn remove(dir: &Path, name: &str) -> Result<()> {
    crate::store::write_files(dir, &[], &[file_name(name)])
}
