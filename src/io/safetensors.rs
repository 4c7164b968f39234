//! MLP weights in safetensors files (PyTorch `nn.Linear` names and layout).

use crate::error::{Error, Result};
use crate::matrix::Matrix;
use crate::nn::{Activation, Linear, Mlp};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::path::Path;

/// How linear layer `i`'s tensors are named: templates in which `{i}` is replaced by the index.
///
/// The default is PyTorch's `nn.Sequential` naming, `layers.{i}.weight` and `layers.{i}.bias`.
/// ```
/// let naming = degeneracy::io::TensorNaming::new("fc{i}.w", "fc{i}.b");
/// assert_eq!(naming.weight(2), "fc2.w");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorNaming {
    weight: String,
    bias: String,
}

impl Default for TensorNaming {
    fn default() -> Self {
        TensorNaming::new("layers.{i}.weight", "layers.{i}.bias")
    }
}

impl TensorNaming {
    /// Templates for the weight (`[out, in]`) and bias (`[out]`) of layer `{i}`.
    pub fn new(weight: &str, bias: &str) -> Self {
        TensorNaming { weight: weight.to_string(), bias: bias.to_string() }
    }

    /// The weight name of layer `i`.
    pub fn weight(&self, i: usize) -> String {
        self.weight.replace("{i}", &i.to_string())
    }

    /// The bias name of layer `i`.
    pub fn bias(&self, i: usize) -> String {
        self.bias.replace("{i}", &i.to_string())
    }
}

fn to_f64(path: &Path, name: &str, t: &TensorView<'_>) -> Result<Vec<f64>> {
    let bytes = t.data();
    // Tensor bytes are little-endian and may be unaligned: decode chunk by chunk.
    Ok(match t.dtype() {
        Dtype::F64 => bytes.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))).collect(),
        Dtype::F32 => {
            bytes.chunks_exact(4).map(|c| f64::from(f32::from_le_bytes(c.try_into().expect("4 bytes")))).collect()
        }
        other => {
            return Err(Error::Dtype {
                path: path.into(),
                name: name.into(),
                found: format!("{other:?}"),
                expected: "F64 or F32",
            });
        }
    })
}

/// Loads an MLP saved with the default naming; `hidden` is the activation after every linear
/// layer but the last. Biases are optional, element types F64 or F32.
pub fn load_mlp(path: impl AsRef<Path>, hidden: Activation) -> Result<Mlp> {
    load_mlp_with(path, hidden, &TensorNaming::default())
}

/// Loads an MLP whose tensors follow `naming`. Layers are read for `i = 0, 1, …` while the
/// weight `naming.weight(i)` exists.
pub fn load_mlp_with(path: impl AsRef<Path>, hidden: Activation, naming: &TensorNaming) -> Result<Mlp> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| Error::malformed(path, "safetensors", e.to_string()))?;
    let names = st.names();
    let mut linears = Vec::new();
    loop {
        let i = linears.len();
        let wname = naming.weight(i);
        if !names.contains(&wname.as_str()) {
            break;
        }
        let w = st.tensor(&wname).map_err(|e| Error::malformed(path, "safetensors", e.to_string()))?;
        let [out, inp] = w.shape()[..] else {
            return Err(Error::ShapeMismatch {
                op: "safetensors weight [out, in]",
                expected: vec![0, 0],
                found: w.shape().to_vec(),
            });
        };
        let weight = Matrix::from_vec(out, inp, to_f64(path, &wname, &w)?)?;
        let bname = naming.bias(i);
        let bias = if names.contains(&bname.as_str()) {
            let b = st.tensor(&bname).map_err(|e| Error::malformed(path, "safetensors", e.to_string()))?;
            if b.shape() != [out] {
                return Err(Error::ShapeMismatch {
                    op: "safetensors bias [out]",
                    expected: vec![out],
                    found: b.shape().to_vec(),
                });
            }
            Some(to_f64(path, &bname, &b)?)
        } else {
            None
        };
        let lin = Linear::new(weight, bias).map_err(|e| match e {
            Error::NonFinite { row, col, value, .. } => {
                Error::NonFinite { what: format!("{}: tensor `{wname}` or its bias", path.display()), row, col, value }
            }
            other => other,
        })?;
        linears.push(lin);
    }
    if linears.is_empty() {
        return Err(Error::MissingTensor { path: path.into(), name: naming.weight(0) });
    }
    Mlp::new(linears, hidden)
}

/// Saves an MLP (F64, default naming) so PyTorch's `load_state_dict` reads it back.
pub fn save_mlp(path: impl AsRef<Path>, mlp: &Mlp) -> Result<()> {
    let path = path.as_ref();
    let naming = TensorNaming::default();
    let le = |v: &[f64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let mut buffers: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (i, lin) in mlp.linears().iter().enumerate() {
        let (out, inp) = lin.weight().shape();
        buffers.push((naming.weight(i), vec![out, inp], le(lin.weight().as_slice())));
        if let Some(b) = lin.bias() {
            buffers.push((naming.bias(i), vec![out], le(b)));
        }
    }
    let views = buffers
        .iter()
        .map(|(name, shape, data)| Ok((name.clone(), TensorView::new(Dtype::F64, shape.clone(), data)?)))
        .collect::<std::result::Result<Vec<_>, safetensors::SafeTensorError>>()
        .map_err(|e| Error::malformed(path, "safetensors", e.to_string()))?;
    let bytes =
        safetensors::serialize(views, None).map_err(|e| Error::malformed(path, "safetensors", e.to_string()))?;
    std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
}
