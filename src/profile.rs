//! Where a build spends its time: wall-clock seconds per named phase, added to by the library as
//! it runs (the sequential steps of the bases and edges: moments, eigendecompositions, `M'`,
//! products). The cost model of `docs/performance.md` and `lib_build`'s `report.json` read it.
//!
//! The table is process-wide; [`reset`] empties it, [`phases`] reads it. Phases that run inside
//! parallel work units are timed by their callers as a whole, so the seconds of different
//! phases never overlap and sum to at most the wall time.
//!
//! ```
//! use degeneracy::basis::{LibConfig, fit_bases};
//! use degeneracy::{Activation, Mlp, data::modular_addition, profile};
//! let data = modular_addition(5)?;
//! let mlp = Mlp::init(&[10, 8, 5], Activation::Relu, true, 0)?;
//! profile::reset();
//! fit_bases(&mlp, &data, &LibConfig::default())?;
//! assert!(profile::phases().iter().any(|p| p.name == "bases/frames" && p.calls == 1));
//! # Ok::<(), degeneracy::Error>(())
//! ```

use std::sync::Mutex;
use std::time::Instant;

/// The time spent in one phase.
#[derive(Clone, Debug, PartialEq)]
pub struct Phase {
    /// `area/step`, e.g. `bases/frame`.
    pub name: &'static str,
    /// Wall-clock seconds, summed over calls.
    pub seconds: f64,
    /// How many times the phase ran.
    pub calls: u64,
}

static TABLE: Mutex<Vec<Phase>> = Mutex::new(Vec::new());

/// Empties the table.
pub fn reset() {
    TABLE.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

/// The phases timed since the last [`reset`], in the order they first ran.
pub fn phases() -> Vec<Phase> {
    TABLE.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Adds `seconds` to phase `name`.
pub(crate) fn add(name: &'static str, seconds: f64) {
    let mut table = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    match table.iter_mut().find(|p| p.name == name) {
        Some(p) => {
            p.seconds += seconds;
            p.calls += 1;
        }
        None => table.push(Phase { name, seconds, calls: 1 }),
    }
}

/// Times a scope: adds its wall time to `name` when dropped.
pub(crate) struct Span {
    name: &'static str,
    start: Instant,
}

/// Starts timing phase `name` until the returned span is dropped.
pub(crate) fn span(name: &'static str) -> Span {
    Span { name, start: Instant::now() }
}

impl Drop for Span {
    fn drop(&mut self) {
        add(self.name, self.start.elapsed().as_secs_f64());
    }
}
