//! The command-line examples are public interfaces (scripts and benchmark harnesses call
//! them): their config keys, output files and errors are checked here by running them.

mod common;

use common::fixtures;
use degeneracy::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `cargo run --release --example NAME -- CONFIG` with `config` written to a temp dir;
/// returns (success, stderr, the temp dir).
fn run_example(name: &str, config: &serde_json::Value) -> (bool, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.json");
    std::fs::write(&cfg, serde_json::to_string_pretty(config).unwrap()).unwrap();
    let out = Command::new(env!("CARGO"))
        .args(["run", "--release", "--quiet", "--example", name, "--"])
        .arg(&cfg)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned(), dir)
}

fn abs(p: PathBuf) -> String {
    p.canonicalize().unwrap().display().to_string()
}

fn digits_config(out: &str) -> serde_json::Value {
    let case = fixtures().join("digits_mlp");
    serde_json::json!({
        "model": abs(case.join("model.safetensors")), "activation": "relu", "inputs": abs(case.join("inputs.npy")),
        "node_layers": ["layers.0", "layers.1", "layers.2", "output"], "basis_formula": "jacobian",
        "edge_formula": null, "integration_method": "gradient", "n_intervals": 0, "center": true,
        "truncation_threshold": 1e-10, "rotate_final_node_layer": false, "batch_size": 1024, "out_dir": out
    })
}

fn read(dir: &Path, file: &str) -> degeneracy::Matrix {
    io::read_matrix(dir.join(file)).unwrap()
}

#[test]
fn lib_build_writes_the_reference_files() {
    let (ok, stderr, dir) = run_example("lib_build", &digits_config("out"));
    assert!(ok, "{stderr}");
    let out = dir.path().join("out");
    let reference = fixtures().join("digits_mlp/jacobian_squared");
    for (k, node, dim) in [(0, "layers_0", 37), (1, "layers_1", 34), (2, "layers_2", 11)] {
        let c = read(&out, &format!("C_{k}_{node}.npy"));
        assert_eq!(c.shape(), read(&reference, &format!("C_{k}_{node}.npy")).shape());
        assert_eq!(c.ncols(), dim);
        assert_eq!(read(&out, &format!("C_pinv_{k}_{node}.npy")).shape(), (dim, c.nrows()));
        let l = read(&out, &format!("Lambda_{k}_{node}.npy")).into_vec();
        let l_ref = read(&reference, &format!("Lambda_{k}_{node}.npy")).into_vec();
        assert!(l.iter().zip(&l_ref).all(|(a, b)| (a - b).abs() <= 1e-6 * b));
        let ev = read(&out, &format!("gram_eigvals_{k}_{node}.npy"));
        assert_eq!(ev.nrows(), c.nrows(), "full spectrum");
    }
    assert!(!out.join("C_3_output.npy").exists(), "unrotated output node: no files");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["nodes"][2]["dim"], 11);
    assert!(report["seconds"]["total"].as_f64().unwrap() > 0.0);
}

#[test]
fn lib_build_rejects_bad_configs_naming_the_key() {
    let mut unknown = digits_config("out");
    unknown["trunction_threshold"] = 1e-10.into();
    let (ok, stderr, _dir) = run_example("lib_build", &unknown);
    assert!(!ok && stderr.contains("trunction_threshold"), "{stderr}");

    let mut bad = digits_config("out");
    bad["basis_formula"] = "jacobean".into();
    let (ok, stderr, _dir) = run_example("lib_build", &bad);
    assert!(!ok && stderr.contains("basis_formula"), "{stderr}");

    let mut missing = digits_config("out");
    missing["inputs"] = "does_not_exist.npy".into();
    let (ok, stderr, _dir) = run_example("lib_build", &missing);
    assert!(!ok && stderr.contains("does_not_exist.npy"), "{stderr}");
}

#[test]
fn diagnose_writes_degeneracy_json() {
    let case = fixtures().join("digits_mlp");
    let config = serde_json::json!({
        "model": abs(case.join("model.safetensors")), "activation": "relu",
        "inputs": abs(case.join("inputs.npy")), "rank_tol": 1e-10, "out_dir": "diag"
    });
    let (ok, stderr, dir) = run_example("diagnose", &config);
    assert!(ok, "{stderr}");
    let text = std::fs::read_to_string(dir.path().join("diag/degeneracy.json")).unwrap();
    let d: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(d["n_params"], 64 * 40 + 40 + 40 * 40 + 40 + 40 * 10 + 10);
    let nodes = d["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    // The activation ranks are the fixture's "gram kept" dimensions (62, 37, 34).
    let ranks: Vec<u64> = nodes.iter().map(|n| n["activation_rank"].as_u64().unwrap()).collect();
    assert_eq!(ranks, [62, 37, 34]);
    assert!(nodes[0]["relu"].is_null());
    for key in ["dead", "always_on", "sync_groups"] {
        assert!(nodes[1]["relu"][key].is_array(), "{key}");
    }
    for key in ["name", "dim", "jacobian_rank", "free_directions"] {
        assert!(!nodes[2][key].is_null(), "{key}");
    }
    assert!(d["effective_params_bound"].as_u64().unwrap() <= d["n_params"].as_u64().unwrap());

    let mut bad = config.clone();
    bad["rank_tolerance"] = 1e-10.into();
    let (ok, stderr, _dir) = run_example("diagnose", &bad);
    assert!(!ok && stderr.contains("rank_tolerance"), "{stderr}");
}

fn ablate_config(ablation_type: &str, schedule: serde_json::Value) -> serde_json::Value {
    let case = fixtures().join("digits_mlp");
    let mut config = digits_config("out");
    config["labels"] = abs(case.join("labels.npy")).into();
    config["eval"] = "accuracy".into();
    config["ablation_type"] = ablation_type.into();
    config["schedule"] = schedule;
    config["score_target_difference"] = 0.001.into();
    config
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn ablate_writes_node_curves() {
    let schedule = serde_json::json!({"type": "exponential", "base": 1.05, "all_below": 10});
    let (ok, stderr, dir) = run_example("ablate", &ablate_config("node", schedule));
    assert!(ok, "{stderr}");
    let report = read_json(&dir.path().join("out/ablation.json"));
    // The fixture README's accuracy of the model on these inputs.
    assert_eq!(report["no_ablation_result"], 0.99609375);
    let results = report["results"].as_object().unwrap();
    assert_eq!(results.keys().collect::<Vec<_>>(), ["layers.0", "layers.1", "layers.2"]);
    for (node, dim) in [("layers.0", 37), ("layers.1", 34), ("layers.2", 11)] {
        let curve = results[node].as_array().unwrap();
        let n: Vec<u64> = curve.iter().map(|p| p[0].as_u64().unwrap()).collect();
        assert_eq!(n[..11], (0..=10).collect::<Vec<u64>>()[..n.len().min(11)], "{node}: every n ≤ 10");
        assert_eq!(*n.last().unwrap(), dim, "{node}: up to the basis dimension");
        assert!(n.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(curve.last().unwrap()[1], 0.99609375, "{node}: everything kept");
        assert!(curve[0][1].as_f64().unwrap() < 0.2, "{node}: nothing kept");
    }
}

#[test]
fn ablate_bisects_edges() {
    let schedule = serde_json::json!({"type": "bisect", "midpoint": "log"});
    let (ok, stderr, dir) = run_example("ablate", &ablate_config("edge", schedule));
    assert!(ok, "{stderr}");
    let report = read_json(&dir.path().join("out/ablation.json"));
    let required = report["n_edges_required"].as_object().unwrap();
    assert_eq!(required.keys().collect::<Vec<_>>(), ["layers.0", "layers.1", "layers.2"]);
    for (node, total) in [("layers.0", 65 * 41), ("layers.1", 41 * 41), ("layers.2", 41 * 10)] {
        let k = required[node].as_u64().unwrap();
        let probes = report["results"][node].as_array().unwrap();
        let score = |k: u64| probes.iter().find(|p| p[0].as_u64() == Some(k)).map(|p| p[1].as_f64().unwrap());
        // Bisection: k within δ and k − 1 not, both among the probes (k < total here).
        assert!(k > 0 && k < total);
        assert!(score(k).unwrap() >= 0.99609375 - 0.001, "{node}");
        assert!(score(k - 1).unwrap() < 0.99609375 - 0.001, "{node}");
        assert!(report["log_norm_eps"][node].as_f64().unwrap() > 0.0);
    }
}

#[test]
fn ablate_rejects_bad_configs_naming_the_key() {
    let exp = serde_json::json!({"type": "exponential", "base": 1.05, "all_below": 10});
    let mut unknown = ablate_config("node", exp.clone());
    unknown["scheduel"] = 1.into();
    let (ok, stderr, _dir) = run_example("ablate", &unknown);
    assert!(!ok && stderr.contains("scheduel"), "{stderr}");

    let bad_schedule = ablate_config("node", serde_json::json!({"type": "exponential", "base": 1.05, "all_belo": 10}));
    let (ok, stderr, _dir) = run_example("ablate", &bad_schedule);
    assert!(!ok && stderr.contains("all_belo"), "{stderr}");

    let mut bad_eval = ablate_config("node", exp.clone());
    bad_eval["eval"] = "acuracy".into();
    let (ok, stderr, _dir) = run_example("ablate", &bad_eval);
    assert!(!ok && stderr.contains("eval") && stderr.contains("acuracy"), "{stderr}");

    let bisect_nodes = ablate_config("node", serde_json::json!({"type": "bisect"}));
    let (ok, stderr, _dir) = run_example("ablate", &bisect_nodes);
    assert!(!ok && stderr.contains("bisect"), "{stderr}");

    let mut no_labels = ablate_config("edge", serde_json::json!({"type": "bisect"}));
    no_labels.as_object_mut().unwrap().remove("labels");
    let (ok, stderr, _dir) = run_example("ablate", &no_labels);
    assert!(!ok && stderr.contains("labels"), "{stderr}");
}
