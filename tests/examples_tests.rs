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

/// Runs `cargo run --release --example NAME -- ARGS` in `dir`; returns (success, stdout + stderr).
fn run_in(dir: &Path, name: &str, args: &[&str]) -> (bool, String) {
    run_with_env(dir, name, args, None)
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

/// `max |a − b| / max |b|` of two `.npy` files.
fn npy_rel_diff(a: &Path, b: &Path) -> f64 {
    common::rel_max_diff(&io::read_matrix(a).unwrap(), &io::read_matrix(b).unwrap())
}

#[test]
fn lib_build_shard_files_reproduce_the_single_process_run() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut config = digits_config("single");
    config["edge_formula"] = "squared".into();
    std::fs::write(d.join("single.json"), config.to_string()).unwrap();
    let (ok, text) = run_in(d, "lib_build", &["single.json"]);
    assert!(ok, "{text}");
    for k in [2usize, 3] {
        let name = format!("sharded_{k}");
        config["out_dir"] = name.clone().into();
        let cfg = format!("{name}.json");
        std::fs::write(d.join(&cfg), config.to_string()).unwrap();
        for stage in ["statistics", "edges"] {
            for i in 0..k {
                let (ok, text) = run_in(d, "lib_build", &[&cfg, "--stage", stage, "--shard", &format!("{i}/{k}")]);
                assert!(ok, "{stage} {i}/{k}: {text}");
            }
            let files: Vec<String> = (0..k).map(|i| format!("{name}/shards/{stage}_{i}_of_{k}.shard")).collect();
            let mut args = vec![cfg.as_str(), "--stage", stage, "--merge"];
            args.extend(files.iter().rev().map(String::as_str)); // any order
            let (ok, text) = run_in(d, "lib_build", &args);
            assert!(ok, "{stage} merge of {k}: {text}");
        }
        let mut n_files = 0;
        for entry in std::fs::read_dir(d.join("single")).unwrap() {
            let file = entry.unwrap().file_name().into_string().unwrap();
            if ["Lambda_", "gram_eigvals_", "E_hat_"].iter().any(|p| file.starts_with(p)) {
                let diff = npy_rel_diff(&d.join(&name).join(&file), &d.join("single").join(&file));
                assert!(diff <= 1e-12, "{k} shards, {file}: {diff:e}");
                n_files += 1;
            }
        }
        assert_eq!(n_files, 9);
        let modules = |dir: &str| read_json(&d.join(dir).join("modules.json"))["nodes"].clone();
        assert_eq!(modules(&name), modules("single"), "{k} shards: the same modules");
        assert_eq!(read_json(&d.join(&name).join("report.json"))["split"]["shards"], k);
    }

    // A shard of another config is refused, naming the file; so are a missing shard and a
    // basis that needs more passes than file-based shards make.
    let mut other = config.clone();
    other["truncation_threshold"] = 1e-9.into();
    std::fs::write(d.join("other.json"), other.to_string()).unwrap();
    let (ok, text) = run_in(
        d,
        "lib_build",
        &[
            "other.json",
            "--merge",
            "sharded_2/shards/statistics_0_of_2.shard",
            "sharded_2/shards/statistics_1_of_2.shard",
        ],
    );
    assert!(!ok && text.contains("statistics_0_of_2.shard") && text.contains("fingerprint"), "{text}");
    let (ok, text) = run_in(d, "lib_build", &["sharded_3.json", "--merge", "sharded_3/shards/statistics_0_of_3.shard"]);
    assert!(!ok && text.contains("missing"), "{text}");
    let mut alpha = config.clone();
    alpha["basis_formula"] = "(1-alpha)^2".into();
    std::fs::write(d.join("alpha.json"), alpha.to_string()).unwrap();
    let (ok, text) = run_in(d, "lib_build", &["alpha.json", "--shard", "0/2"]);
    assert!(!ok && text.contains("distributed"), "{text}");
    let (ok, text) = run_in(d, "lib_build", &["sharded_2.json", "--shard", "2/2"]);
    assert!(!ok && text.contains("--shard"), "{text}");
}

#[test]
fn distributed_without_the_mpi_feature_is_an_error() {
    // `cargo run` builds the examples without the feature (whatever this test was built with).
    let mut config = digits_config("out");
    config["distributed"] = true.into();
    let (ok, stderr, dir) = run_example("lib_build", &config);
    assert!(!ok && stderr.contains("--features mpi"), "{stderr}");
    assert!(!dir.path().join("out/report.json").exists(), "no silent single-process run");
    // Splitting the edges over outputs needs ranks; unknown splits are named.
    for (split, message) in [("outputs", "is for \"distributed\": true"), ("columns", "unknown edge_split `columns`")] {
        let mut config = digits_config("out");
        config["edge_split"] = split.into();
        let (ok, stderr, _dir) = run_example("lib_build", &config);
        assert!(!ok && stderr.contains(message), "{split}: {stderr}");
    }
}

#[test]
fn llc_shard_files_reproduce_the_single_process_traces() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let case = fixtures().join("llc_dln");
    let mut config = serde_json::json!({
        "model": abs(case.join("model.safetensors")), "bias": false, "activation": "identity",
        "inputs": abs(case.join("inputs.npy")), "targets": abs(case.join("targets.npy")), "loss": "mse",
        "lr": 1e-4, "batch_size": 500, "num_chains": 3, "num_draws": 60, "seed": 2, "out_dir": "single",
    });
    std::fs::write(d.join("single.json"), config.to_string()).unwrap();
    let (ok, text) = run_in(d, "llc", &["single.json"]);
    assert!(ok, "{text}");
    config["out_dir"] = "sharded".into();
    std::fs::write(d.join("sharded.json"), config.to_string()).unwrap();
    for i in 0..2 {
        let (ok, text) = run_in(d, "llc", &["sharded.json", "--shard", &format!("{i}/2")]);
        assert!(ok, "{text}");
    }
    let (ok, text) = run_in(
        d,
        "llc",
        &["sharded.json", "--merge", "sharded/shards/chains_0_of_2.shard", "sharded/shards/chains_1_of_2.shard"],
    );
    assert!(ok, "{text}");
    for f in ["loss_trace.npy", "llc_trace_running_mean.npy", "llc_per_chain.npy"] {
        assert_eq!(
            std::fs::read(d.join("sharded").join(f)).unwrap(),
            std::fs::read(d.join("single").join(f)).unwrap(),
            "{f}"
        );
    }
    let summary = read_json(&d.join("sharded/summary.json"));
    assert_eq!(summary["llc_mean"], read_json(&d.join("single/summary.json"))["llc_mean"]);
    assert_eq!(summary["split"]["shards"], 2);

    // The same chains twice are refused, naming the file.
    let (ok, text) = run_in(
        d,
        "llc",
        &["sharded.json", "--merge", "sharded/shards/chains_0_of_2.shard", "sharded/shards/chains_0_of_2.shard"],
    );
    assert!(!ok && text.contains("chains_0_of_2.shard") && text.contains("also in"), "{text}");
    config["distributed"] = true.into();
    std::fs::write(d.join("dist.json"), config.to_string()).unwrap();
    let (ok, text) = run_in(d, "llc", &["dist.json"]);
    assert!(!ok && text.contains("--features mpi"), "{text}");
}

/// Copies the safetensors file `src` to `dst`, renaming each tensor with `rename` (`None`
/// drops it).
fn rewrite_model(src: &Path, dst: &Path, rename: impl Fn(&str) -> Option<String>) {
    let bytes = std::fs::read(src).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> =
        st.tensors().into_iter().filter_map(|(name, view)| rename(&name).map(|n| (n, view))).collect();
    std::fs::write(dst, safetensors::serialize(views, None).unwrap()).unwrap();
}

#[test]
fn model_keys_declare_biases_map_names_and_refuse_missing_tensors() {
    let dln = fixtures().join("llc_dln");
    let diagnose_dln = |extra: &[(&str, serde_json::Value)]| {
        let mut config = serde_json::json!({
            "model": abs(dln.join("model.safetensors")), "activation": "identity",
            "inputs": abs(dln.join("inputs.npy")), "out_dir": "diag"
        });
        for (k, v) in extra {
            config[*k] = v.clone();
        }
        run_example("diagnose", &config)
    };
    // The bias-free deep linear network loads when declared so...
    let (ok, stderr, dir) = diagnose_dln(&[("bias", false.into())]);
    assert!(ok, "{stderr}");
    let d = read_json(&dir.path().join("diag/degeneracy.json"));
    assert_eq!(d["n_params"], 300);
    // ...and is refused, naming the first missing bias, when it is not.
    let (ok, stderr, dir) = diagnose_dln(&[]);
    assert!(!ok && stderr.contains("`layers.0.bias` not found"), "{stderr}");
    assert!(!dir.path().join("diag/degeneracy.json").exists());
    let (ok, stderr, _dir) = diagnose_dln(&[("bias", "no".into())]);
    assert!(!ok && stderr.contains("invalid bias"), "{stderr}");

    let tmp = tempfile::tempdir().unwrap();
    let digits = fixtures().join("digits_mlp/model.safetensors");
    // A missing middle weight: lib_build (and ablate, same keys) exits non-zero naming it.
    let gap = tmp.path().join("gap.safetensors");
    rewrite_model(&digits, &gap, |n| (n != "layers.1.weight").then(|| n.to_string()));
    let mut config = digits_config("out");
    config["model"] = abs(gap.clone()).into();
    let (ok, stderr, dir) = run_example("lib_build", &config);
    assert!(!ok && stderr.contains("`layers.1.weight` not found"), "{stderr}");
    assert!(!dir.path().join("out/report.json").exists());

    // Without its last weight the file's orphan bias gives it away (the issue's silent
    // two-layer network).
    let last = tmp.path().join("last.safetensors");
    rewrite_model(&digits, &last, |n| (n != "layers.2.weight").then(|| n.to_string()));
    config["model"] = abs(last.clone()).into();
    let (ok, stderr, _dir) = run_example("lib_build", &config);
    assert!(!ok && stderr.contains("unexpected tensors `layers.2.bias`"), "{stderr}");

    // llc: a gap in the bias-free network is named too.
    let llc = |model: &Path, extra: (&str, serde_json::Value)| {
        let mut config = serde_json::json!({
            "model": abs(model.to_path_buf()), "bias": false, "activation": "identity",
            "inputs": abs(dln.join("inputs.npy")), "targets": abs(dln.join("targets.npy")), "loss": "mse",
            "lr": 1e-4, "batch_size": 500, "num_chains": 1, "num_draws": 5, "out_dir": "llc_out",
        });
        config[extra.0] = extra.1;
        run_example("llc", &config)
    };
    let gapped = tmp.path().join("gapped.safetensors");
    rewrite_model(&dln.join("model.safetensors"), &gapped, |n| (n != "layers.1.weight").then(|| n.to_string()));
    let (ok, stderr, _dir) = llc(&gapped, ("seed", 0.into()));
    assert!(!ok && stderr.contains("`layers.1.weight` not found"), "{stderr}");
    let (ok, stderr, _dir) = llc(&gapped, ("tensor_names", 3.into()));
    assert!(!ok && stderr.contains("tensor_names"), "{stderr}");

    // Other names, mapped back by "tensor_names": the same report as the original file.
    let renamed = tmp.path().join("renamed.safetensors");
    rewrite_model(&digits, &renamed, |n| Some(n.replace("layers.", "net.")));
    let names: serde_json::Map<String, serde_json::Value> = (0..3)
        .flat_map(|i| ["weight", "bias"].map(|p| (format!("net.{i}.{p}"), format!("layers.{i}.{p}").into())))
        .collect();
    let diagnose_digits = |model: &Path, names: Option<&serde_json::Map<String, serde_json::Value>>| {
        let case = fixtures().join("digits_mlp");
        let mut config = serde_json::json!({
            "model": abs(model.to_path_buf()), "activation": "relu", "inputs": abs(case.join("inputs.npy")),
            "out_dir": "diag"
        });
        if let Some(names) = names {
            config["tensor_names"] = names.clone().into();
        }
        run_example("diagnose", &config)
    };
    let (ok, stderr, original) = diagnose_digits(&digits, None);
    assert!(ok, "{stderr}");
    let (ok, stderr, mapped) = diagnose_digits(&renamed, Some(&names));
    assert!(ok, "{stderr}");
    assert_eq!(
        read_json(&mapped.path().join("diag/degeneracy.json")),
        read_json(&original.path().join("diag/degeneracy.json"))
    );
    let (ok, stderr, _dir) = diagnose_digits(&renamed, None);
    assert!(!ok && stderr.contains("`layers.0.weight` not found"), "{stderr}");
}

/// The files of a folder with their bytes.
fn snapshot(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect()
}

/// [`run_in`] with an environment variable set.
fn run_with_env(dir: &Path, name: &str, args: &[&str], env: Option<(&str, &str)>) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["run", "--release", "--quiet", "--manifest-path"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .args(["--example", name, "--"])
        .args(args)
        .current_dir(dir);
    if let Some((k, v)) = env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn output_folders_are_replaced_whole_and_only_when_complete() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut config = digits_config("out");
    config["edge_formula"] = "squared".into();
    std::fs::write(d.join("all.json"), config.to_string()).unwrap();
    let (ok, text) = run_in(d, "lib_build", &["all.json"]);
    assert!(ok, "{text}");
    let first = snapshot(&d.join("out"));
    assert!(first.contains_key("E_hat_2_layers_2__output.npy") && first.contains_key("C_2_layers_2.npy"));

    // A write that fails partway (the 4th file) leaves the previous result byte for byte.
    let (ok, text) = run_with_env(d, "lib_build", &["all.json"], Some(("DEGENERACY_FAIL_AFTER_FILES", "3")));
    assert!(!ok && text.contains("simulated write failure"), "{text}");
    assert_eq!(snapshot(&d.join("out")), first, "the previous result is untouched");
    let leftovers: Vec<_> = std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(leftovers.iter().all(|n| !n.to_string_lossy().contains("staging")), "{leftovers:?}");

    // A rerun with fewer node layers leaves exactly the new run's files.
    config["node_layers"] = serde_json::json!(["layers.0", "layers.2", "output"]);
    std::fs::write(d.join("fewer.json"), config.to_string()).unwrap();
    let (ok, text) = run_in(d, "lib_build", &["fewer.json"]);
    assert!(ok, "{text}");
    let second = snapshot(&d.join("out"));
    let mut names: Vec<&str> = second.keys().map(String::as_str).collect();
    names.sort_unstable();
    let mut expected = vec![".degeneracy-job", "modules.json", "report.json"];
    for (k, node) in [(0, "layers_0"), (1, "layers_2")] {
        for prefix in ["C", "C_pinv", "Lambda", "gram_eigvals"] {
            expected.push(Box::leak(format!("{prefix}_{k}_{node}.npy").into_boxed_str()));
        }
    }
    expected.extend(["E_hat_0_layers_0__layers_2.npy", "E_hat_1_layers_2__output.npy"]);
    expected.sort_unstable();
    assert_eq!(names, expected);

    // A folder a job did not write is never replaced.
    std::fs::create_dir(d.join("mine")).unwrap();
    std::fs::write(d.join("mine/notes.txt"), "keep me").unwrap();
    let mut foreign = digits_config("mine");
    std::fs::write(d.join("foreign.json"), foreign.to_string()).unwrap();
    let (ok, text) = run_in(d, "lib_build", &["foreign.json"]);
    assert!(!ok && text.contains("mine") && text.contains("refusing to replace"), "{text}");
    assert_eq!(std::fs::read_to_string(d.join("mine/notes.txt")).unwrap(), "keep me");

    // An out_dir that cannot be created fails before any computation, naming it.
    std::fs::write(d.join("a_file"), "").unwrap();
    foreign["out_dir"] = "a_file/out".into();
    std::fs::write(d.join("unwritable.json"), foreign.to_string()).unwrap();
    let (ok, text) = run_in(d, "lib_build", &["unwritable.json"]);
    assert!(!ok && text.contains("a_file"), "{text}");
}

#[test]
fn jobs_without_shards_refuse_extra_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let case = fixtures().join("digits_mlp");
    let config = serde_json::json!({
        "model": abs(case.join("model.safetensors")), "inputs": abs(case.join("inputs.npy")), "out_dir": "out"
    });
    std::fs::write(dir.path().join("d.json"), config.to_string()).unwrap();
    for (job, args) in [("diagnose", vec!["d.json", "--shard", "0/2"]), ("ablate", vec!["d.json", "extra"])] {
        let (ok, text) = run_in(dir.path(), job, &args);
        assert!(!ok && text.contains("unexpected argument"), "{job}: {text}");
        assert!(!dir.path().join("out").exists(), "{job} ran anyway");
    }
}

/// Every numeric key of `lib_build`, `diagnose`, `ablate` and `llc`, at values outside its documented
/// range (0, −1, NaN, u64::MAX, just above the bound, where those are invalid), is an error naming
/// the key before any computation.
#[test]
fn numeric_config_keys_are_checked_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let case = fixtures().join("digits_mlp");
    let (model, inputs, labels) =
        (abs(case.join("model.safetensors")), abs(case.join("inputs.npy")), abs(case.join("labels.npy")));
    let max = "18446744073709551615";
    let above_batch = (degeneracy::data::MAX_BATCH_SIZE + 1).to_string();
    let above_points = (degeneracy::ablation::Schedule::MAX_POINTS + 1).to_string();
    let above_intervals = (degeneracy::estimate::Quadrature::MAX_INTERVALS + 1).to_string();
    // (job, config with VALUE where the key's value goes, key, invalid values)
    let build = format!(r#""model": "{model}", "inputs": "{inputs}", "out_dir": "out""#);
    let ablate = format!(r#"{build}, "labels": "{labels}", "eval": "accuracy", "ablation_type": "orthogonal""#);
    let dln = fixtures().join("llc_dln");
    let llc = format!(
        r#"{{"model": "{}", "activation": "identity", "bias": false, "inputs": "{}", "targets": "{}", "loss": "mse", "lr": 1e-4, "num_draws": 2000, "out_dir": "out", "KEY": VALUE}}"#,
        abs(dln.join("model.safetensors")),
        abs(dln.join("inputs.npy")),
        abs(dln.join("targets.npy"))
    );
    let above_chains = (degeneracy::llc::LlcConfig::MAX_CHAINS + 1).to_string();
    let max_steps = degeneracy::llc::LlcConfig::MAX_STEPS.to_string();
    let above_steps = (degeneracy::llc::LlcConfig::MAX_STEPS + 1).to_string();
    let cases: Vec<(&str, String, &str, Vec<&str>)> = vec![
        (
            "lib_build",
            format!(r#"{{{build}, "batch_size": VALUE}}"#),
            "batch_size",
            vec!["0", "-1", "NaN", max, &above_batch],
        ),
        (
            "lib_build",
            format!(r#"{{{build}, "integration_method": "gauss-legendre", "n_intervals": VALUE}}"#),
            "n_intervals",
            vec!["-1", "NaN", max, &above_intervals],
        ),
        (
            "lib_build",
            format!(r#"{{{build}, "truncation_threshold": VALUE}}"#),
            "truncation_threshold",
            vec!["-1", "NaN"],
        ),
        (
            "diagnose",
            format!(r#"{{{build}, "batch_size": VALUE}}"#),
            "batch_size",
            vec!["0", "-1", "NaN", max, &above_batch],
        ),
        ("diagnose", format!(r#"{{{build}, "rank_tol": VALUE}}"#), "rank_tol", vec!["-1", "NaN", max, "1"]),
        (
            "ablate",
            format!(r#"{{{ablate}, "schedule": {{"type": "bisect"}}, "score_target_difference": VALUE}}"#),
            "score_target_difference",
            vec!["-1", "NaN"],
        ),
        (
            "ablate",
            format!(r#"{{{ablate}, "schedule": {{"type": "linear", "n_points": VALUE}}}}"#),
            "n_points",
            vec!["0", "1", "-1", "NaN", max, &above_points],
        ),
        (
            "ablate",
            format!(r#"{{{ablate}, "schedule": {{"type": "exponential", "base": 1.05, "all_below": VALUE}}}}"#),
            "all_below",
            vec!["-1", "NaN", max, &above_points],
        ),
        (
            "ablate",
            format!(r#"{{{ablate}, "schedule": {{"type": "exponential", "base": VALUE, "all_below": 3}}}}"#),
            "base",
            vec!["0", "-1", "NaN"],
        ),
        (
            "ablate",
            format!(r#"{{{ablate}, "schedule": {{"type": "explicit", "points": [VALUE]}}}}"#),
            "points",
            vec!["-1", "NaN", max, &above_points],
        ),
        ("ablate", format!(r#"{{{ablate}, "schedule": {{"type": "explicit", "points": []}}}}"#), "points", vec!["-"]),
        (
            "ablate",
            format!(r#"{{{ablate}, "batch_size": VALUE, "schedule": {{"type": "bisect"}}}}"#),
            "batch_size",
            vec!["0", max],
        ),
        ("llc", llc.replace("KEY", "num_chains"), "num_chains", vec!["0", "-1", "NaN", max, &above_chains]),
        ("llc", llc.replace("KEY", "num_draws"), "num_draws", vec!["0", "-1", "NaN", max, &above_steps]),
        ("llc", llc.replace("KEY", "num_burnin_steps"), "num_burnin_steps", vec!["-1", "NaN", max, &above_steps]),
        ("llc", llc.replace("KEY", "num_burnin_steps"), "num_burnin_steps + num_draws", vec![&max_steps]),
        ("llc", llc.replace("KEY", "num_init_loss_batches"), "num_init_loss_batches", vec!["0", "-1", "NaN", max]),
        ("llc", llc.replace("KEY", "batch_size"), "batch_size", vec!["0", "-1", "NaN", max, &above_batch]),
    ];
    for (job, template, key, values) in cases {
        for value in values {
            let path = d.join("config.json");
            std::fs::write(&path, template.replace("VALUE", value)).unwrap();
            let (ok, text) = run_in(d, job, &["config.json"]);
            assert!(!ok && text.contains(key), "{job} {key} = {value}: {text}");
            assert!(!d.join("out").exists(), "{job} {key} = {value}: wrote outputs");
        }
    }
}

/// The `llc_dln` fixture as an `llc` job config writing to `out`.
fn dln_llc_config(out: &str) -> serde_json::Value {
    let case = fixtures().join("llc_dln");
    serde_json::json!({
        "model": abs(case.join("model.safetensors")), "activation": "identity", "bias": false,
        "inputs": abs(case.join("inputs.npy")), "targets": abs(case.join("targets.npy")), "loss": "mse",
        "lr": 1e-4, "nbeta": 1085.7362047581294, "batch_size": 500, "num_chains": 2, "num_draws": 100, "seed": 0,
        "out_dir": out,
    })
}

fn keys(v: &serde_json::Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

#[test]
fn llc_job_calibrates_then_estimates_at_the_recommended_setting() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut config = dln_llc_config("cal");
    config["calibrate"] = serde_json::json!({"lr": [1e-4, 3e-4, 1e-2], "localization": [1.0, 10.0], "num_draws": 300});
    config["max_rhat"] = 1.2.into(); // unknown top-level key: refused by name
    std::fs::write(d.join("bad.json"), config.to_string()).unwrap();
    let (ok, text) = run_in(d, "llc", &["bad.json"]);
    assert!(!ok && text.contains("unknown key `max_rhat`"), "{text}");
    config.as_object_mut().unwrap().remove("max_rhat");
    config["calibrate"]["max_rhat"] = 1.2.into();
    config["calibrate"]["max_relative_slope"] = 0.2.into();
    std::fs::write(d.join("cal.json"), config.to_string()).unwrap();
    let (ok, text) = run_in(d, "llc", &["cal.json"]);
    assert!(ok, "{text}");
    let cal = read_json(&d.join("cal/calibration.json"));
    assert_eq!(keys(&cal), ["recommended", "settings"]);
    let settings = cal["settings"].as_array().unwrap();
    assert_eq!(settings.len(), 6);
    for s in settings {
        assert_eq!(
            keys(s),
            ["diverged", "llc_mean", "localization", "lr", "mala_acceptance", "nbeta", "rhat", "stationary"]
        );
    }
    assert!(settings.iter().filter(|s| s["lr"] == 1e-2).all(|s| s["diverged"] == true && s["llc_mean"].is_null()));
    assert_eq!(keys(&cal["recommended"]), ["localization", "lr", "nbeta"]);
    let summary = read_json(&d.join("cal/summary.json"));
    // The full estimate ran at the recommended setting, with the job's chains and draws.
    assert_eq!(summary["settings"]["lr"], cal["recommended"]["lr"]);
    assert_eq!(summary["settings"]["localization"], cal["recommended"]["localization"]);
    assert_eq!(summary["settings"]["num_draws"], 100);
    assert!(summary["calibration"]["settings"].is_array());
    let svg = std::fs::read_to_string(d.join("cal/calibration.svg")).unwrap();
    roxmltree::Document::parse(&svg).unwrap();
    // A block sweeping both axes, or neither, is refused by name.
    config["calibrate"]["nbeta"] = serde_json::json!([100.0]);
    std::fs::write(d.join("both.json"), config.to_string()).unwrap();
    let (ok, text) = run_in(d, "llc", &["both.json"]);
    assert!(!ok && text.contains("not both"), "{text}");
}

#[test]
fn llc_job_restricts_to_named_tensors_and_follows_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = fixtures().join("llc_dln/model.safetensors");
    // A second checkpoint: the same network with its first layer scaled by 2 and its last by ½
    // (the same function; the rescaling changes the parameters, not what the network computes).
    let mut mlp = io::load_mlp_with(&model, degeneracy::Activation::Identity, &io::LoadOptions::bias_free()).unwrap();
    let mut w = mlp.params();
    w[..100].iter_mut().for_each(|v| *v *= 2.0);
    w[200..].iter_mut().for_each(|v| *v *= 0.5);
    degeneracy::Layer::set_params(&mut mlp, &w).unwrap();
    io::save_mlp(d.join("rescaled.safetensors"), &mlp).unwrap();
    let mut config = dln_llc_config("traj");
    config.as_object_mut().unwrap().remove("model");
    config["checkpoints"] = serde_json::json!([abs(model), "rescaled.safetensors"]);
    config["parameters"] = serde_json::json!(["layers.1.weight"]);
    std::fs::write(d.join("traj.json"), config.to_string()).unwrap();
    let (ok, text) = run_in(d, "llc", &["traj.json"]);
    assert!(ok, "{text}");
    let t = read_json(&d.join("traj/trajectory.json"));
    let points = t.as_array().unwrap();
    assert_eq!(points.len(), 2);
    for p in points {
        assert_eq!(keys(p), ["checkpoint", "healthy_chains", "llc_mean", "llc_std"]);
        assert_eq!(p["healthy_chains"], 2);
    }
    assert_eq!(points[1]["checkpoint"], "rescaled.safetensors");
    let summary = read_json(&d.join("traj/summary.json"));
    assert_eq!(summary["checkpoints"][0]["n_sampled_params"], 100);
    let svg = std::fs::read_to_string(d.join("traj/trajectory.svg")).unwrap();
    let doc = roxmltree::Document::parse(&svg).unwrap();
    assert_eq!(doc.descendants().filter(|n| n.has_tag_name("circle")).count(), 2, "one point per checkpoint");
    // `model` and `checkpoints` together, an unknown tensor, a bad preset: refused by name.
    config["model"] = abs(fixtures().join("llc_dln/model.safetensors")).into();
    std::fs::write(d.join("both.json"), config.to_string()).unwrap();
    let (ok, text) = run_in(d, "llc", &["both.json"]);
    assert!(!ok && text.contains("`checkpoints`"), "{text}");
    let mut config = dln_llc_config("one");
    config["parameters"] = serde_json::json!(["layers.7.weight"]);
    std::fs::write(d.join("unknown.json"), config.to_string()).unwrap();
    let (ok, text) = run_in(d, "llc", &["unknown.json"]);
    assert!(!ok && text.contains("invalid parameters = layers.7.weight") && text.contains("layers.2.weight"), "{text}");
    config.as_object_mut().unwrap().remove("parameters");
    config["preset"] = "pytorch".into();
    std::fs::write(d.join("preset.json"), config.to_string()).unwrap();
    let (ok, text) = run_in(d, "llc", &["preset.json"]);
    assert!(!ok && text.contains("invalid preset"), "{text}");
}

#[test]
fn llc_job_without_a_healthy_chain_writes_its_summary_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut config = dln_llc_config("div");
    config["lr"] = 0.5.into();
    config["preset"] = "devinterp".into();
    config.as_object_mut().unwrap().remove("nbeta");
    std::fs::write(d.join("div.json"), config.to_string()).unwrap();
    let (ok, text) = run_in(d, "llc", &["div.json"]);
    assert!(!ok && text.contains("no healthy chain"), "{text}");
    let summary = read_json(&d.join("div/summary.json"));
    assert!(summary["llc_mean"].is_null());
    assert_eq!(summary["n_excluded_chains"], 2);
    assert!(summary["divergences"].as_array().unwrap().iter().all(|v| v.is_object()));
    // The preset's conventions are recorded: nβ from the batch size, no localisation.
    assert_eq!(summary["nbeta_source"], "batch_size / ln batch_size");
    assert!((summary["nbeta"].as_f64().unwrap() - 500.0 / 500f64.ln()).abs() < 1e-9);
    assert_eq!(summary["settings"]["localization"], 0.0);
    assert!(d.join("div/loss_trace.npy").exists());
}

#[test]
fn llc_checks_its_out_dir_before_sampling_and_keeps_the_previous_result_on_failure() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("a_file"), "").unwrap();
    std::fs::write(d.join("bad.json"), dln_llc_config("a_file/out").to_string()).unwrap();
    let (ok, text) = run_in(d, "llc", &["bad.json"]);
    assert!(!ok && text.contains("a_file") && !text.contains("λ̂ ="), "failed after sampling: {text}");

    std::fs::write(d.join("ok.json"), dln_llc_config("out").to_string()).unwrap();
    let (ok, text) = run_in(d, "llc", &["ok.json"]);
    assert!(ok, "{text}");
    let first = snapshot(&d.join("out"));
    assert!(first.contains_key("summary.json") && first.contains_key("loss_trace.npy"));
    // A run that fails after its out_dir was checked (here: targets of another length, found
    // when the data are assembled) leaves it byte for byte.
    let targets = io::read_matrix(fixtures().join("llc_dln/targets.npy")).unwrap();
    io::write_matrix(d.join("short.npy"), &targets.rows(0..10).to_owned()).unwrap();
    let mut broken = dln_llc_config("out");
    broken["targets"] = abs(d.join("short.npy")).into();
    std::fs::write(d.join("broken.json"), broken.to_string()).unwrap();
    let (ok, text) = run_in(d, "llc", &["broken.json"]);
    assert!(!ok, "{text}");
    assert_eq!(snapshot(&d.join("out")), first);
}

/// The jobs on the fixture transformer (`modadd_transformer`, rib's seed-0 modular-addition
/// model): `ablate`, `llc` and `diagnose` take `lib_build`'s model keys.
mod transformer_jobs {
    use super::*;
    use degeneracy::Matrix;
    use degeneracy::io::NpyData;

    const P: usize = 113;

    fn case() -> PathBuf {
        fixtures().join("modadd_transformer").canonicalize().unwrap()
    }

    /// The model keys of every job, as `lib_build` takes them.
    fn model_keys() -> serde_json::Value {
        let c = case();
        serde_json::json!({
            "model": c.join("model.safetensors"), "model_config": c.join("model_config.json"),
            "last_pos_module_type": "add_resid1",
        })
    }

    fn with(mut base: serde_json::Value, extra: serde_json::Value) -> serde_json::Value {
        for (k, v) in extra.as_object().unwrap() {
            base[k] = v.clone();
        }
        base
    }

    fn ints(path: PathBuf) -> (Vec<usize>, Vec<i64>) {
        let a = io::read_npy(&path).unwrap();
        match a.data {
            NpyData::Int(v) => (a.shape, v),
            NpyData::Float(_) => panic!("{}: integer array expected", path.display()),
        }
    }

    fn floats(path: PathBuf) -> (Vec<usize>, Vec<f64>) {
        let a = io::read_npy(&path).unwrap();
        match a.data {
            NpyData::Float(v) => (a.shape, v),
            NpyData::Int(_) => panic!("{}: float array expected", path.display()),
        }
    }

    /// The first `n` training rows and labels, written to `dir`.
    fn train_subset(dir: &Path, n: usize) -> (PathBuf, PathBuf) {
        let (_, tokens) = ints(case().join("tokens.npy"));
        let (_, labels) = ints(case().join("labels.npy"));
        let (t, l) = (dir.join(format!("tokens_{n}.npy")), dir.join(format!("labels_{n}.npy")));
        io::write_ints(&t, &[n, 3], &tokens[..3 * n]).unwrap();
        io::write_ints(&l, &[n], &labels[..n]).unwrap();
        (t, l)
    }

    /// The test split (every (a, b) not in `tokens.npy`, a-major) and its labels (a + b) mod p,
    /// written to `dir`.
    fn test_split(dir: &Path) -> (PathBuf, PathBuf, usize) {
        let (_, tokens) = ints(case().join("tokens.npy"));
        let mut seen = vec![false; P * P];
        for row in tokens.chunks(3) {
            seen[row[0] as usize * P + row[1] as usize] = true;
        }
        let rest: Vec<usize> = (0..P * P).filter(|&k| !seen[k]).collect();
        let rows: Vec<i64> = rest.iter().flat_map(|&k| [(k / P) as i64, (k % P) as i64, P as i64]).collect();
        let labels: Vec<i64> = rest.iter().map(|&k| ((k / P + k % P) % P) as i64).collect();
        let (t, l) = (dir.join("test_tokens.npy"), dir.join("test_labels.npy"));
        io::write_ints(&t, &[rest.len(), 3], &rows).unwrap();
        io::write_ints(&l, &[rest.len()], &labels).unwrap();
        (t, l, rest.len())
    }

    #[test]
    fn ablate_builds_on_the_train_split_and_scores_on_the_test_split() {
        let tmp = tempfile::tempdir().unwrap();
        let (test_tokens, test_labels, n_test) = test_split(tmp.path());
        assert_eq!(n_test, 8939);
        let config = with(
            model_keys(),
            serde_json::json!({
                "inputs": case().join("tokens.npy"), "node_layers": ["ln1.0", "ln2.0", "unembed", "output"],
                "basis_formula": "jacobian", "truncation_threshold": 1e-15, "batch_size": 512,
                "eval": "accuracy", "ablation_type": "node",
                "schedule": {"type": "exponential", "base": 2.0, "all_below": 1},
                "eval_inputs": test_tokens, "eval_labels": test_labels, "out_dir": "out",
            }),
        );
        let (ok, stderr, dir) = run_example("ablate", &config);
        assert!(ok, "{stderr}");
        let report = read_json(&dir.path().join("out/ablation.json"));
        // The fixture README: 99.9553 % on the 8939-row test split, i.e. 8935 rows right.
        let accuracy = 8935.0 / 8939.0;
        assert!((report["no_ablation_result"].as_f64().unwrap() - accuracy).abs() < 1e-15, "{report}");
        assert_eq!((report["n_build_samples"].as_u64(), report["n_eval_samples"].as_u64()), (Some(3830), Some(8939)));
        let results = report["results"].as_object().unwrap();
        assert_eq!(results.keys().collect::<Vec<_>>(), ["ln1.0", "ln2.0", "unembed"]);
        for (node, curve) in results {
            let curve = curve.as_array().unwrap();
            let (n, score) = (&curve.last().unwrap()[0], curve.last().unwrap()[1].as_f64().unwrap());
            // Everything kept: the model's accuracy on the test split.
            assert!((score - accuracy).abs() < 1e-15, "{node}: {score}");
            // The README's kept dimensions.
            match node.as_str() {
                "ln1.0" => assert_eq!(n, 115),
                // rib's 116th Λ (1.7e-19 of the largest) is below what this eigensolver resolves
                // (transformer_tests' compare_run): 115 or 116.
                "unembed" => assert!(n == 115 || n == 116, "{node}: {n}"),
                _ => assert!((108..=114).contains(&n.as_u64().unwrap()), "{node}: {n}"),
            }
            assert!(curve[0][1].as_f64().unwrap() < 0.05, "{node}: nothing kept is chance level");
        }

        // Scored on the build's own rows (the default): the README's 100 % on the train split.
        let mut own = config.clone();
        let map = own.as_object_mut().unwrap();
        map.remove("eval_inputs");
        map.remove("eval_labels");
        own["labels"] = case().join("labels.npy").to_string_lossy().into();
        own["ablation_type"] = "edge".into();
        own["schedule"] = serde_json::json!({"type": "explicit", "points": [0, 14706]});
        let (ok, stderr, dir) = run_example("ablate", &own);
        assert!(ok, "{stderr}");
        let report = read_json(&dir.path().join("out/ablation.json"));
        assert_eq!(report["no_ablation_result"], 1.0);
        assert_eq!(report["n_eval_samples"], 3830);
        let required = report["n_edges_required"].as_object().unwrap();
        assert_eq!(required.keys().collect::<Vec<_>>(), ["ln1.0", "ln2.0", "unembed"]);
        for (node, probes) in report["results"].as_object().unwrap() {
            let probes = probes.as_array().unwrap();
            // 0 edges: chance; 14706 = 129 × 114 is more than any E_hat has: the model itself.
            assert!(probes[0][1].as_f64().unwrap() < 0.05, "{node}");
            assert_eq!(probes.last().unwrap()[1], 1.0, "{node}");
        }

        // Keys that do not fit are refused by name.
        let refuse = |patch: serde_json::Value, remove: &[&str], needle: &str| {
            let mut bad = with(config.clone(), patch);
            for k in remove {
                bad.as_object_mut().unwrap().remove(*k);
            }
            let (ok, stderr, dir) = run_example("ablate", &bad);
            assert!(!ok && stderr.contains(needle), "{needle}: {stderr}");
            assert!(!dir.path().join("out").exists());
        };
        refuse(serde_json::json!({}), &["eval_inputs"], "eval_inputs");
        refuse(serde_json::json!({"labels": case().join("labels.npy")}), &[], "`labels`");
        refuse(serde_json::json!({}), &["eval_labels"], "eval_labels");
        refuse(serde_json::json!({"eval_input": "x.npy"}), &[], "eval_input");
        refuse(serde_json::json!({"activation": "gelu"}), &[], "activation");
        refuse(serde_json::json!({"bias": false}), &[], "bias");
        refuse(serde_json::json!({"last_pos_module_type": "add_resid2"}), &[], "last_pos_module_type");
        refuse(serde_json::json!({}), &["model_config"], "model_config");
    }

    #[test]
    fn ablate_eval_keys_score_an_mlp_too() {
        let case = fixtures().join("digits_mlp");
        let schedule = serde_json::json!({"type": "explicit", "points": [0, 5, 11]});
        let mut config = ablate_config("node", schedule);
        config["node_layers"] = serde_json::json!(["layers.2", "output"]);
        let (ok, stderr, dir) = run_example("ablate", &config);
        assert!(ok, "{stderr}");
        let default = read_json(&dir.path().join("out/ablation.json"));
        // The same rows given as the scoring split score the same.
        config.as_object_mut().unwrap().remove("labels");
        config["eval_inputs"] = abs(case.join("inputs.npy")).into();
        config["eval_labels"] = abs(case.join("labels.npy")).into();
        let (ok, stderr, dir) = run_example("ablate", &config);
        assert!(ok, "{stderr}");
        let split = read_json(&dir.path().join("out/ablation.json"));
        assert_eq!(split["results"], default["results"]);
        assert_eq!(split["no_ablation_result"], 0.99609375);
    }

    #[test]
    fn llc_of_a_transformer_is_the_cross_entropy_at_the_last_position() {
        let tmp = tempfile::tempdir().unwrap();
        let n = 128;
        let (tokens, labels) = train_subset(tmp.path(), n);
        let config = with(
            model_keys(),
            serde_json::json!({
                "inputs": tokens, "labels": labels, "loss": "cross_entropy", "lr": 1e-7, "nbeta": 10.0,
                "batch_size": n, "num_chains": 1, "num_draws": 4, "num_init_loss_batches": 1, "seed": 0,
                "parameters": ["blocks.0.mlp.W_out"],
            }),
        );
        let d = tmp.path();
        std::fs::write(d.join("ce.json"), with(config.clone(), serde_json::json!({"out_dir": "ce"})).to_string())
            .unwrap();
        let (ok, text) = run_in(d, "llc", &["ce.json"]);
        assert!(ok, "{text}");
        let summary = read_json(&d.join("ce/summary.json"));
        // init_loss is the full-batch cross-entropy at w*: from the fixture's own logits (the
        // last position, TransformerLens), not from this crate's forward pass.
        let (shape, logits) = floats(case().join("logits.npy"));
        let (_, all_labels) = ints(case().join("labels.npy"));
        let v = shape[1];
        let ce: f64 = (0..n)
            .map(|i| {
                let row = &logits[i * v..(i + 1) * v];
                let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x));
                max + row.iter().map(|&x| (x - max).exp()).sum::<f64>().ln() - row[all_labels[i] as usize]
            })
            .sum::<f64>()
            / n as f64;
        let init = summary["init_loss"].as_f64().unwrap();
        assert!((init - ce).abs() <= 1e-9 * ce, "init_loss {init} vs cross-entropy of logits.npy {ce}");
        // The README's shapes: 114·128 + 3·128 + 3·4·128·32 + 3·4·32 + 4·32·128 + 128 + 128·512
        // + 512 + 512·128 + 128 + 128·114 + 114 parameters; W_out alone is sampled.
        let n_params = 114 * 128 + 3 * 128 + 3 * 4 * 128 * 32 + 3 * 4 * 32 + 4 * 32 * 128 + 128 + 128 * 512 + 512;
        assert_eq!(summary["n_params"], n_params + 512 * 128 + 128 + 128 * 114 + 114);
        assert_eq!(summary["n_sampled_params"], 512 * 128);
        assert_eq!(summary["n_samples"], n);
        assert_eq!(summary["settings"]["activation"], "relu");
        assert_eq!(summary["settings"]["last_pos_module_type"], "add_resid1");
        assert!(summary["llc_mean"].as_f64().unwrap().is_finite());
        assert!(d.join("ce/loss_trace.npy").exists());

        // The behavioural loss: zero at w* exactly.
        let mut behavioural = with(config.clone(), serde_json::json!({"loss": "behavioural", "out_dir": "b"}));
        behavioural.as_object_mut().unwrap().remove("labels");
        std::fs::write(d.join("b.json"), behavioural.to_string()).unwrap();
        let (ok, text) = run_in(d, "llc", &["b.json"]);
        assert!(ok, "{text}");
        assert_eq!(read_json(&d.join("b/summary.json"))["init_loss"], 0.0);

        // A tensor the transformer does not have, an MLP key, a transformer key without
        // `model_config`: refused by name.
        let refuse = |patch: serde_json::Value, remove: &str, needle: &str| {
            let mut bad = with(config.clone(), patch);
            bad.as_object_mut().unwrap().remove(remove);
            bad["out_dir"] = "bad".into();
            std::fs::write(d.join("bad.json"), bad.to_string()).unwrap();
            let (ok, text) = run_in(d, "llc", &["bad.json"]);
            assert!(!ok && text.contains(needle), "{needle}: {text}");
        };
        refuse(serde_json::json!({"parameters": ["layers.0.weight"]}), "", "blocks.0.mlp.W_out");
        refuse(serde_json::json!({"tensor_names": {"a": "b"}}), "", "tensor_names");
        refuse(serde_json::json!({"isolate_ln_var": "yes"}), "", "isolate_ln_var");
        refuse(serde_json::json!({}), "model_config", "model_config");
    }

    /// `E[f fᵀ]` of `[rows, width]` activations, its rank at `tol` relative to the largest
    /// eigenvalue, checking that no eigenvalue sits near the cut.
    fn dense_rank(f: &Matrix, tol: f64) -> usize {
        let g = Matrix::from_fn(f.ncols(), f.ncols(), |i, j| {
            (0..f.nrows()).map(|r| f[(r, i)] * f[(r, j)]).sum::<f64>() / f.nrows() as f64
        });
        let (values, _) = degeneracy::linalg::symmetric_eigen(&g).unwrap();
        let max = values.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let cut = tol * max;
        // Two computations of the same Gram differ by ~1e-14 of its largest eigenvalue: a count
        // is comparable only if no eigenvalue lies within 1 % of the cut.
        let closest = values.iter().map(|v| (v.abs() / cut).ln().abs()).fold(f64::INFINITY, f64::min);
        assert!(closest > 0.01, "an eigenvalue within {:.1e} of the cut: pick another tolerance", closest);
        values.iter().filter(|v| v.abs() > cut).count()
    }

    #[test]
    fn diagnose_reports_ranks_and_relu_groups_of_a_transformer() {
        let tmp = tempfile::tempdir().unwrap();
        let n = 256;
        let (tokens, _) = train_subset(tmp.path(), n);
        let config = with(
            model_keys(),
            serde_json::json!({
                "inputs": tokens, "node_layers": ["ln1.0", "ln2.0", "unembed", "output"], "rank_tol": 3e-10,
                "out_dir": "diag",
            }),
        );
        let (ok, stderr, dir) = run_example("diagnose", &config);
        assert!(ok, "{stderr}");
        let d = read_json(&dir.path().join("diag/degeneracy.json"));
        let nodes = d["nodes"].as_array().unwrap();
        let names: Vec<&str> = nodes.iter().map(|n| n["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["ln1.0", "ln2.0", "unembed"]);
        // Activation ranks: dense ranks of the fixture's own node activations (rib's hooks, the
        // first 256 samples, every position as a row). The spectra at ln2.0 and unembed run on
        // continuously (README), so rank_tol is one with no eigenvalue near the cut (3e-10: 115,
        // 62, 77 with numpy on these files).
        for (k, name) in names.iter().enumerate() {
            let (shape, acts) = floats(case().join(format!("node_acts_first256_{k}_{}.npy", name.replace('.', "_"))));
            let f = Matrix::from_vec(shape[0] * shape[1], shape[2], acts).unwrap();
            assert_eq!(nodes[k]["dim"], 128, "{name}");
            assert_eq!(nodes[k]["activation_rank"], dense_rank(&f, 3e-10), "{name}");
        }
        // Jacobian rank at `unembed`: the output is `r W_U + c b_U`, so Σ_x JᵀJ = n W_U W_Uᵀ.
        let mut file = io::TensorFile::open(case().join("model.safetensors")).unwrap();
        let w_u = file.take_matrix("unembed.W_U", 128, 114).unwrap();
        assert_eq!(nodes[2]["jacobian_rank"], dense_rank(&w_u.transpose(), 3e-10));
        // ReLU groups at `unembed` (the MLP block ln2.0 → unembed): from the fixture's `ln2.0`
        // activations `[mid, c]` and `W_in`, `b_in`; the block's bias unit (index 512) always fires.
        let w_in = file.take_matrix("blocks.0.mlp.W_in", 128, 512).unwrap();
        let b_in = file.take_vector("blocks.0.mlp.b_in", 512).unwrap();
        let (_, mid) = floats(case().join("node_acts_first256_1_ln2_0.npy"));
        let fires = |x: usize, u: usize| {
            let row = &mid[x * 129..(x + 1) * 129];
            (0..128).map(|i| row[i] * w_in[(i, u)]).sum::<f64>() + row[128] * b_in[u] > 0.0
        };
        let pattern: Vec<Vec<bool>> = (0..512).map(|u| (0..n).map(|x| fires(x, u)).collect()).collect();
        let dead: Vec<usize> = (0..512).filter(|&u| pattern[u].iter().all(|&b| !b)).collect();
        let mut always_on: Vec<usize> = (0..512).filter(|&u| pattern[u].iter().all(|&b| b)).collect();
        always_on.push(512);
        let mut groups: std::collections::BTreeMap<&[bool], Vec<usize>> = Default::default();
        for u in (0..512).filter(|u| !dead.contains(u) && !always_on.contains(u)) {
            groups.entry(&pattern[u]).or_default().push(u);
        }
        let mut sync: Vec<Vec<usize>> = groups.into_values().filter(|g| g.len() > 1).collect();
        sync.sort();
        let relu = &nodes[2]["relu"];
        let list = |v: &serde_json::Value| -> Vec<usize> {
            v.as_array().unwrap().iter().map(|u| u.as_u64().unwrap() as usize).collect()
        };
        assert_eq!(list(&relu["dead"]), dead);
        assert_eq!(list(&relu["always_on"]), always_on);
        let mut reported: Vec<Vec<usize>> = relu["sync_groups"].as_array().unwrap().iter().map(list).collect();
        reported.iter_mut().for_each(|g| g.sort());
        reported.sort();
        assert_eq!(reported, sync);
        eprintln!("unembed: {} dead, {} always on, {} synchronised groups", dead.len(), always_on.len(), sync.len());
        // Not counted where the sections expose nothing: no ReLUs before ln1.0 and ln2.0
        // (attention), no affine layer after them; counted after `unembed` (the unembedding).
        for k in 0..2 {
            assert!(nodes[k]["relu"].is_null() && nodes[k]["free_directions"].is_null(), "{}", names[k]);
        }
        assert!(nodes[2]["free_directions"].is_object());
        assert!(d["n_params"].is_null() && d["effective_params_bound"].is_null());

        // A node list that does not end at the output, or is out of order: refused by name.
        for layers in [serde_json::json!(["ln1.0", "unembed"]), serde_json::json!(["ln2.0", "ln1.0", "output"])] {
            let (ok, stderr, _dir) =
                run_example("diagnose", &with(config.clone(), serde_json::json!({"node_layers": layers})));
            assert!(!ok && stderr.contains("node_layers"), "{stderr}");
        }
    }
}

/// The paper's experiment as an example (`examples/modadd_transformer.rs`).
mod modadd_transformer {
    use super::*;
    use degeneracy::transformer::{LastPosModule, Transformer, read_tokens};
    use degeneracy::{Layer, Matrix};

    fn keys(v: &serde_json::Value) -> Vec<String> {
        super::keys(v)
    }

    fn svg_texts(path: &Path) -> Vec<String> {
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let doc = roxmltree::Document::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(doc.root_element().tag_name().name(), "svg");
        let texts = doc.descendants().filter(|n| n.is_text()).filter_map(|n| n.text());
        texts.map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).collect()
    }

    /// The default path (a model trained in code; fewer epochs than the default, so it runs in
    /// seconds): the report's keys, both pictures, and the accuracies against the checkpoint it
    /// writes, recomputed here.
    #[test]
    fn the_default_path_trains_builds_ablates_and_draws() {
        let dir = tempfile::tempdir().unwrap();
        let (ok, text) = run_in(dir.path(), "modadd_transformer", &["--out", "out", "--epochs", "400"]);
        assert!(ok, "{text}");
        let out = dir.path().join("out");
        let report = read_json(&out.join("report.json"));
        assert_eq!(
            keys(&report),
            [
                "dims",
                "edges_needed",
                "edges_total",
                "fourier",
                "model",
                "modules",
                "node_ablation",
                "pictures",
                "seconds",
                "settings"
            ]
        );
        assert_eq!(report["model"]["source"]["kind"], "trained");
        let p = report["model"]["p"].as_u64().unwrap() as usize;

        // The checkpoint it wrote; the held-out pairs are every pair not in tokens.npy.
        let model = Transformer::load(out.join("model_config.json"), out.join("model.safetensors"))
            .unwrap()
            .with_last_pos_module(Some(LastPosModule::AddResid1));
        let train = read_tokens(out.join("tokens.npy")).unwrap();
        let mut seen = vec![false; p * p];
        for i in 0..train.nrows() {
            seen[train[(i, 0)] as usize * p + train[(i, 1)] as usize] = true;
        }
        let rest: Vec<usize> = (0..p * p).filter(|&k| !seen[k]).collect();
        let test = Matrix::from_fn(rest.len(), 3, |i, c| [(rest[i] / p) as f64, (rest[i] % p) as f64, p as f64][c]);
        let mut logits = Matrix::default();
        model.forward(test.view(), &mut logits).unwrap();
        let right = (0..rest.len())
            .filter(|&i| {
                let row = logits.row(i);
                let best = (0..row.len()).fold(0, |b, j| if row[j] > row[b] { j } else { b });
                best == (rest[i] / p + rest[i] % p) % p
            })
            .count();
        let accuracy = right as f64 / rest.len() as f64;
        assert_eq!(report["model"]["n_test"], rest.len());
        assert!((report["model"]["test_accuracy"].as_f64().unwrap() - accuracy).abs() < 1e-12);

        for basis in ["lib", "pca"] {
            let curves = report["node_ablation"][basis].as_object().unwrap();
            assert_eq!(curves.keys().collect::<Vec<_>>(), ["ln1.0", "ln2.0", "unembed"], "{basis}");
            for (node, curve) in curves {
                let last = curve.as_array().unwrap().last().unwrap();
                // Every direction kept: the model's own held-out accuracy.
                assert_eq!(last[0], report["dims"][basis][node], "{basis} {node}");
                assert!((last[1].as_f64().unwrap() - accuracy).abs() < 1e-12, "{basis} {node}: {last}");
            }
            let needed = report["edges_needed"][basis].as_object().unwrap();
            assert_eq!(needed.keys().collect::<Vec<_>>(), ["ln1.0", "ln2.0", "unembed"], "{basis}");
            let total: u64 = needed.values().map(|v| v.as_u64().unwrap()).sum();
            assert!(needed.values().all(|v| v.as_u64().unwrap() > 0), "{basis}: {needed:?}");
            assert_eq!(report["edges_total"][basis], total);
        }
        // Fourier labels: folded frequencies, shares in [0, 1], one per LIB direction.
        for (node, labels) in report["fourier"].as_object().unwrap() {
            let labels = labels.as_array().unwrap();
            assert_eq!(labels.len() as u64, report["dims"]["lib"][node].as_u64().unwrap(), "{node}");
            for l in labels {
                assert!(l["a"].as_u64().unwrap() as usize <= p / 2 && l["b"].as_u64().unwrap() as usize <= p / 2);
                assert!((0.0..=1.0).contains(&l["share"].as_f64().unwrap()), "{l}");
            }
        }
        assert!(report["modules"]["Q"].as_f64().unwrap().is_finite());
        assert_eq!(report["pictures"], serde_json::json!(["ablation.svg", "modules.svg"]));
        let ablation = svg_texts(&out.join("ablation.svg"));
        for title in ["node ablation at ln1.0", "node ablation at ln2.0", "node ablation at unembed", "LIB", "PCA"] {
            assert!(ablation.iter().any(|t| t == title), "ablation.svg lacks `{title}`");
        }
        // modules.svg: one label per LIB direction (output left out): "const", "mixed", or
        // "a{k} b{k} {share}%" with a share of at least 50 %.
        let modules = svg_texts(&out.join("modules.svg"));
        let is_label = |t: &str| {
            let parts: Vec<&str> = t.split(' ').collect();
            match parts.as_slice() {
                ["const"] | ["mixed"] => true,
                [a, b, share] => {
                    let freq = |s: &str, c: char| s.strip_prefix(c).and_then(|k| k.parse::<usize>().ok());
                    let pct = share.strip_suffix('%').and_then(|v| v.parse::<f64>().ok());
                    freq(a, 'a').is_some_and(|k| k <= p / 2)
                        && freq(b, 'b').is_some_and(|k| k <= p / 2)
                        && pct.is_some_and(|v| (50.0..=100.0).contains(&v))
                }
                _ => false,
            }
        };
        let directions: u64 = report["dims"]["lib"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
        assert_eq!(modules.iter().filter(|t| is_label(t)).count() as u64, directions, "{modules:?}");
        // The checkpoint it wrote runs again through --model, to the same results.
        let (ok, text) = run_in(dir.path(), "modadd_transformer", &["--model", "out", "--out", "again"]);
        assert!(ok, "{text}");
        let again = read_json(&dir.path().join("again/report.json"));
        assert_eq!(again["model"]["source"]["kind"], "checkpoint");
        for key in ["edges_needed", "node_ablation", "dims", "fourier"] {
            assert_eq!(again[key], report[key], "{key}");
        }
        assert_eq!(again["model"]["test_accuracy"], report["model"]["test_accuracy"]);
        // Bad arguments are refused by name, before anything is written.
        for (args, needle) in [(&["--epochs"][..], "--epochs needs a value"), (&["--epoch", "3"][..], "`--epoch`")] {
            let (ok, text) = run_in(dir.path(), "modadd_transformer", args);
            assert!(!ok && text.contains(needle), "{text}");
        }
    }

    /// On rib's seed-0 checkpoint (the fixture): the edges needed per node layer on the test
    /// split, against rib's stored results (`notes/paper.md`: LIB 133 / 82 / 633, PCA
    /// 167 / 114 / 682; the fixture test `edge_ablation_counts_match_the_paper` explains the
    /// tolerance), and both pictures. About three minutes.
    #[test]
    #[ignore = "slow: about three minutes; run with --ignored"]
    fn on_the_fixture_checkpoint_it_needs_the_papers_edges() {
        let dir = tempfile::tempdir().unwrap();
        let fixture = abs(fixtures().join("modadd_transformer"));
        let (ok, text) = run_in(dir.path(), "modadd_transformer", &["--model", &fixture, "--out", "out"]);
        assert!(ok, "{text}");
        eprintln!("{text}");
        let report = read_json(&dir.path().join("out/report.json"));
        assert_eq!((report["model"]["n_train"].as_u64(), report["model"]["n_test"].as_u64()), (Some(3830), Some(8939)));
        let needed = |basis: &str| -> Vec<u64> {
            ["ln1.0", "ln2.0", "unembed"].iter().map(|n| report["edges_needed"][basis][n].as_u64().unwrap()).collect()
        };
        assert_eq!(needed("pca"), [167, 114, 682]);
        for (n, paper) in needed("lib").iter().zip([133, 82, 633]) {
            assert!(n.abs_diff(paper) <= 4, "{:?}", needed("lib"));
        }
        for svg in ["ablation.svg", "modules.svg"] {
            assert!(svg_texts(&dir.path().join("out").join(svg)).len() > 10, "{svg}");
        }
    }
}

/// `lib_build` streams an MLP's inputs from their `.npy` file: eight times the rows (287 MB more
/// data) leave its peak memory within a quarter of the larger file's size, where reading the
/// inputs whole raises it by at least the file (the reported `peak_memory_bytes`, Linux only).
#[test]
fn lib_build_memory_does_not_grow_with_the_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let mlp = degeneracy::Mlp::init(&[64, 32, 10], degeneracy::Activation::Relu, true, 3).unwrap();
    io::save_mlp(dir.path().join("model.safetensors"), &mlp).unwrap();
    let peak = |rows: usize| -> (u64, u64) {
        let inputs = degeneracy::Matrix::from_fn(rows, 64, |i, j| ((i * 64 + j) as f64 * 0.618).sin());
        let file = dir.path().join(format!("inputs_{rows}.npy"));
        io::write_matrix(&file, &inputs).unwrap();
        drop(inputs);
        let out = format!("out_{rows}");
        let config = serde_json::json!({
            "model": "model.safetensors", "inputs": file.file_name().unwrap().to_str().unwrap(),
            "node_layers": ["layers.0", "layers.1", "output"], "basis_formula": "jacobian", "out_dir": out
        });
        let cfg = dir.path().join(format!("config_{rows}.json"));
        std::fs::write(&cfg, config.to_string()).unwrap();
        let (ok, log) = run_in(dir.path(), "lib_build", &[cfg.to_str().unwrap()]);
        assert!(ok, "{log}");
        let report = read_json(&dir.path().join(out).join("report.json"));
        assert_eq!(report["n_samples"], rows);
        let size = std::fs::metadata(&file).unwrap().len();
        std::fs::remove_file(&file).unwrap();
        (report["peak_memory_bytes"].as_u64().expect("Linux reports VmHWM"), size)
    };
    let (small, _) = peak(70_000);
    let (large, size) = peak(560_000);
    println!(
        "peak memory: 70k rows {:.1} MB, 560k rows {:.1} MB, larger file {:.1} MB",
        small as f64 / 1e6,
        large as f64 / 1e6,
        size as f64 / 1e6
    );
    assert!(large < small + size / 4, "peak {large} B at 560k rows vs {small} B at 70k rows ({size} B file)");
}
