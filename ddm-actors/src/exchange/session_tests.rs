//! Pure tests of the session: the step files in `steps/`, replayed.
//!
//! Each file is `{ "version": 2|3, "give_up_after_ms": N, "steps": [ {
//! "at_ms": N, "input": …, "effects": [ … ] }, … ] }`; the replay feeds
//! every input to a fresh [`Session`] and compares the effects exactly.
//! `DDM_BLESS_STEPS=1 cargo test -p ddm-actors session` rewrites each
//! file's expected effects with what the session does now (review the diff
//! before committing it).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::*;

/// One step of a file.
#[derive(Debug, Serialize, Deserialize)]
struct Step {
    /// Milliseconds since the session started.
    at_ms: u64,
    /// What the session is told.
    input: Input,
    /// What it must do.
    effects: Vec<Effect>,
}

/// A step file.
#[derive(Debug, Serialize, Deserialize)]
struct StepFile {
    /// What the file shows.
    #[serde(default)]
    about: String,
    /// The version spoken (2 or 3).
    version: u8,
    /// The session's `give_up_after`, in milliseconds.
    give_up_after_ms: u64,
    /// The steps.
    steps: Vec<Step>,
}

fn steps_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/exchange/steps")
}

/// Replay `file`; the first mismatch as a message, or the blessed file.
fn replay(path: &Path, bless: bool) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let mut file: StepFile = serde_json::from_str(&text)
        .map_err(|e| format!("{}: cannot parse: {e}", path.display()))?;
    let version = Version::from_advertised(file.version)
        .ok_or_else(|| format!("{}: bad version", path.display()))?;
    let mut session =
        Session::new(version, Duration::from_millis(file.give_up_after_ms));
    let mut last = 0;
    for (i, step) in file.steps.iter_mut().enumerate() {
        if step.at_ms < last {
            return Err(format!(
                "{}: step {i} goes back in time",
                path.display()
            ));
        }
        last = step.at_ms;
        let now = Duration::from_millis(step.at_ms);
        let got = session.handle(now, step.input.clone());
        if bless {
            step.effects = got;
        } else if got != step.effects {
            let show = |e: &Vec<Effect>| {
                serde_json::to_string_pretty(e).unwrap_or_default()
            };
            return Err(format!(
                "{}: step {i} ({:?})\nexpected: {}\ngot: {}",
                path.display(),
                step.input,
                show(&step.effects),
                show(&got)
            ));
        }
    }
    if bless {
        let text = serde_json::to_string_pretty(&file).unwrap() + "\n";
        std::fs::write(path, text).map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[test]
fn step_files_replay() {
    let bless = std::env::var_os("DDM_BLESS_STEPS").is_some_and(|v| v == "1");
    let mut files: Vec<PathBuf> = std::fs::read_dir(steps_dir())
        .expect("steps directory")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 9, "step files missing: {files:?}");
    let failures: Vec<String> =
        files.iter().filter_map(|f| replay(f, bless).err()).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn backoff_doubles_and_is_capped() {
    assert_eq!(backoff(1), BACKOFF_MIN);
    assert_eq!(backoff(2), BACKOFF_MIN * 2);
    assert_eq!(backoff(3), BACKOFF_MIN * 4);
    assert_eq!(backoff(100), BACKOFF_MAX);
    assert_eq!(backoff(0), BACKOFF_MIN);
}

/// Every step file's inputs, round-tripped through JSON, are the same
/// inputs: the files mean what the session reads.
#[test]
fn inputs_and_effects_round_trip() {
    let path = steps_dir().join("merge_withdraw_cancels_announce.json");
    let file: StepFile =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for step in file.steps {
        let text = serde_json::to_string(&step).unwrap();
        let back: Step = serde_json::from_str(&text).unwrap();
        assert_eq!(back.input, step.input);
        assert_eq!(back.effects, step.effects);
    }
}
