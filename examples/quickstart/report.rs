//! The quickstart's outputs: `report.json` (one section per stage) and SVG pictures.

use crate::StageResult;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Map, Value, json};
use std::path::{Path, PathBuf};

/// The paper's central experiment, on a transformer (this quickstart keeps to its MLP).
const TRANSFORMER_EXAMPLE: &str = "cargo run --release --example modadd_transformer: the LIB paper's one-layer \
     transformer on modular addition, LIB against PCA by node and edge ablation on held-out pairs, and its modules \
     labelled by Fourier frequency (examples/modadd_transformer.rs)";

/// Collects the sections of `report.json` and knows where pictures go.
pub struct Report {
    out: PathBuf,
    sections: Map<String, Value>,
    pictures: Vec<String>,
}

/// `--out DIR` from the command line, default `out/quickstart`.
pub fn out_dir_from_args() -> StageResult<PathBuf> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => Ok(PathBuf::from("out/quickstart")),
        [flag, dir] if flag == "--out" => Ok(PathBuf::from(dir)),
        _ => Err("usage: quickstart [--out DIR]".into()),
    }
}

impl Report {
    /// Creates the output folder.
    pub fn create(out: &Path) -> StageResult<Self> {
        std::fs::create_dir_all(out)?;
        Ok(Report { out: out.to_path_buf(), sections: Map::new(), pictures: Vec::new() })
    }

    /// Adds (or replaces) a section.
    pub fn section(&mut self, name: &str, value: Value) {
        self.sections.insert(name.to_string(), value);
    }

    /// A folder for the files a stage writes and reads back (`DIR/files`), created.
    pub fn scratch_dir(&self) -> StageResult<PathBuf> {
        let dir = self.out.join("files");
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// The path of a picture named `file`, recorded in the report.
    pub fn picture(&mut self, file: &str) -> PathBuf {
        self.pictures.push(file.to_string());
        self.out.join(file)
    }

    /// Writes `report.json` and prints where everything is, and where the transformer version
    /// of these analyses is.
    pub fn finish(mut self, seconds: f64) -> StageResult<()> {
        self.section("pictures", json!(self.pictures));
        self.section("see_also", json!({ "modadd_transformer": TRANSFORMER_EXAMPLE }));
        self.section("seconds_total", json!(seconds));
        let path = self.out.join("report.json");
        std::fs::write(&path, serde_json::to_string_pretty(&Value::Object(self.sections))?)?;
        println!(
            "\nreport: {} and {} SVG pictures in {} ({seconds:.1} s)",
            path.display(),
            self.pictures.len(),
            self.out.display()
        );
        println!("next: {TRANSFORMER_EXAMPLE}");
        Ok(())
    }
}

/// A progress bar on stderr for `len` steps; hidden when stderr is not a terminal.
pub fn progress(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("   {msg:<12} [{bar:40}] {pos}/{len} ({elapsed})").expect("valid template"),
    );
    bar.set_message(what.to_string());
    bar
}
