//! Stage: files in and out, strictly. The trained model round-trips through safetensors; a file
//! missing a bias and a truncated copy are refused with errors naming the file and tensor; the
//! inputs streamed from a `.npy` file in small chunks give the in-memory Grams.

use crate::StageResult;
use crate::report::Report;
use degeneracy::data::{ActivationSampler, NpySampler};
use degeneracy::estimate::NodeStatistics;
use degeneracy::io;
use degeneracy::{Activation, Dataset, Layer, Linear, Matrix, Mlp};
use serde_json::json;
use std::time::Instant;

/// Saves, reloads and tampers with the model; streams the inputs from a file.
pub fn run(mlp: &Mlp, data: &Dataset, report: &mut Report) -> StageResult<()> {
    let t = Instant::now();
    let dir = report.scratch_dir()?;
    let path = dir.join("model.safetensors");
    io::save_mlp(&path, mlp)?;
    let back = io::load_mlp(&path, Activation::Relu)?;
    let (mut y1, mut y2) = (Matrix::default(), Matrix::default());
    mlp.forward(data.inputs().view(), &mut y1)?;
    back.forward(data.inputs().view(), &mut y2)?;
    let round_trip = y1.as_slice().iter().zip(y2.as_slice()).all(|(a, b)| a == b);

    // The same model with layer 1's bias dropped: loading (biases declared) must refuse it
    // rather than build a layer without a bias.
    let mut linears = mlp.linears().to_vec();
    linears[1] = Linear::new(linears[1].weight().clone(), None)?;
    let missing = dir.join("missing_bias.safetensors");
    io::save_mlp(&missing, &Mlp::new(linears, Activation::Relu)?)?;
    let missing_error = io::load_mlp(&missing, Activation::Relu).err().map(|e| e.to_string());
    let bytes = std::fs::read(&path)?;
    let truncated = dir.join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2])?;
    let truncated_error = io::load_mlp(&truncated, Activation::Relu).err().map(|e| e.to_string());

    // The inputs from a file, 64 rows per chunk: the same Gram as in memory.
    let inputs = dir.join("inputs.npy");
    io::write_matrix(&inputs, data.inputs())?;
    let sampler = NpySampler::open(&inputs, 64)?;
    let nodes: Vec<usize> = (0..mlp.n_nodes()).collect();
    let streamed = NodeStatistics::collect(mlp, &sampler, &nodes, None, 64)?;
    let in_memory = NodeStatistics::collect(mlp, data, &nodes, None, 64)?;
    let gram = |s: &NodeStatistics, k: usize| s.activations(k).map(|a| a.finish().map(|m| m.second_moment()));
    let mut worst = 0.0_f64;
    for &k in &nodes {
        if let (Some(a), Some(b)) = (gram(&streamed, k), gram(&in_memory, k)) {
            let (a, b) = (a?, b?);
            let scale = b.max_abs().max(f64::MIN_POSITIVE);
            worst = a.as_slice().iter().zip(b.as_slice()).fold(worst, |m, (x, y)| m.max((x - y).abs() / scale));
        }
    }

    println!("\n== files: strict loading, streamed inputs ({:.2} s)", t.elapsed().as_secs_f64());
    println!("   model → safetensors → model: outputs {}", if round_trip { "bit for bit" } else { "DIFFER" });
    println!("   without layers.1.bias:   {}", missing_error.as_deref().unwrap_or("LOADED (should not)"));
    println!("   cut in half:             {}", truncated_error.as_deref().unwrap_or("LOADED (should not)"));
    println!(
        "   {} rows streamed in 64-row chunks: Grams within {worst:.1e} of the in-memory pass",
        sampler.n_samples()
    );
    if !round_trip || missing_error.is_none() || truncated_error.is_none() {
        return Err("the files stage found a file handled silently".into());
    }
    report.section(
        "files",
        json!({
            "round_trip_bitwise": round_trip,
            "missing_bias_error": missing_error,
            "truncated_file_error": truncated_error,
            "streamed_gram_max_rel_diff": worst,
            "seconds": t.elapsed().as_secs_f64(),
        }),
    );
    Ok(())
}
