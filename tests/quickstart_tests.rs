//! The README's first command: the quickstart's report has every section, only finite numbers,
//! and valid SVG pictures with labelled axes.

use std::process::Command;

fn all_numbers_finite(v: &serde_json::Value, path: &str) -> Result<(), String> {
    match v {
        serde_json::Value::Number(n) => {
            if n.as_f64().is_some_and(f64::is_finite) {
                Ok(())
            } else {
                Err(format!("{path}: {n}"))
            }
        }
        serde_json::Value::Array(a) => {
            a.iter().enumerate().try_for_each(|(i, x)| all_numbers_finite(x, &format!("{path}[{i}]")))
        }
        serde_json::Value::Object(o) => o.iter().try_for_each(|(k, x)| all_numbers_finite(x, &format!("{path}.{k}"))),
        _ => Ok(()),
    }
}

#[test]
fn quickstart_report_is_complete() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO"))
        .args(["run", "--release", "--quiet", "--example", "quickstart", "--", "--out"])
        .arg(dir.path())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains('['), "no progress bars when stderr is not a terminal: {stderr}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("report.json")).unwrap()).unwrap();
    let sections = ["training", "bases", "graph", "llc", "diagnostics", "ablation", "distributed", "scale"];
    for section in sections.iter().chain(&["pictures"]) {
        assert!(!report[section].is_null(), "section {section} missing");
    }
    for section in sections {
        assert!(report[section]["settings"].is_object(), "{section} records its settings");
    }
    assert_eq!(report["training"]["final_accuracy"], 1.0);
    let see_also = report["see_also"]["modadd_transformer"].as_str().unwrap();
    assert!(see_also.contains("--example modadd_transformer"), "{see_also}");
    for key in ["ranks_max_relative_difference", "shard_files_max_relative_difference"] {
        let d = report["distributed"][key].as_f64().unwrap();
        assert!(d <= 1e-12, "distributed {key}: {d:e}");
    }
    all_numbers_finite(&report, "report").unwrap();
    // The scale stage: bases from fewer samples than a node's width (the kernel side) equal the
    // d × d path's, with the same kept dimensions, and the build's phases are timed.
    let kernel = &report["scale"]["kernel_side"];
    let samples = kernel["samples"].as_u64().unwrap();
    let nodes = kernel["nodes"].as_array().unwrap();
    assert!(nodes.iter().filter(|n| n["orig_dim"].as_u64().unwrap() > samples).count() >= 2);
    for n in nodes {
        assert_eq!(n["dim_kernel"], n["dim_dense"], "{n}");
        for key in ["projector_deviation", "lambda_deviation"] {
            assert!(n[key].as_f64().unwrap() < 1e-10, "{key}: {n}");
        }
    }
    assert!(!report["scale"]["phases"].as_array().unwrap().is_empty());
    // The LLC stage's trajectory: one row per checkpoint, λ̂ of both losses growing from the
    // initialisation to the end (the direction the stage states), a bound at each checkpoint.
    let rows = report["llc"]["trajectory"]["checkpoints"].as_array().unwrap();
    assert_eq!(rows.len(), 8);
    let (first, last) = (&rows[0], &rows[rows.len() - 1]);
    assert_eq!((first["epoch"].as_u64(), last["epoch"].as_u64()), (Some(0), Some(800)));
    for key in ["llc_training", "llc_behavioural"] {
        assert!(last[key].as_f64().unwrap() > first[key].as_f64().unwrap(), "{key}");
    }
    assert!(rows.iter().all(|r| r["effective_params_bound"].is_i64()));
    assert!(!report["llc"]["breakdown"]["subsets"].as_array().unwrap().is_empty());

    let pictures: Vec<String> =
        report["pictures"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_string()).collect();
    assert!(pictures.len() >= 8 && pictures.iter().any(|p| p == "llc_trajectory.svg"), "{pictures:?}");
    for p in &pictures {
        let text = std::fs::read_to_string(dir.path().join(p)).unwrap();
        let doc = roxmltree::Document::parse(&text).unwrap_or_else(|e| panic!("{p}: {e}"));
        assert_eq!(doc.root_element().tag_name().name(), "svg", "{p}");
        let texts: Vec<&str> =
            doc.descendants().filter_map(|n| n.text()).map(str::trim).filter(|t| !t.is_empty()).collect();
        assert!(texts.len() >= 3, "{p} has a title and labels: {texts:?}");
    }
}
