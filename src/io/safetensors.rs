//! MLP weights in safetensors files (PyTorch `nn.Linear` names and layout).

use crate::error::{Error, Result};
use crate::io::TensorFile;
use crate::nn::{Activation, Linear, Mlp};
use safetensors::tensor::{Dtype, TensorView};
use std::collections::{BTreeMap, BTreeSet};
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

/// How a safetensors file describes an MLP: the tensor names, whether the layers have biases,
/// and a map from the file's names to the expected ones. A bias-free model is declared here,
/// never inferred from a missing tensor (a lost bias must not load as a different model).
///
/// ```
/// use degeneracy::io::{LoadOptions, TensorNaming};
/// // A bias-free checkpoint whose first layer is called `embed.weight`.
/// let options = LoadOptions {
///     bias: false,
///     rename: [("embed.weight".to_string(), "layers.0.weight".to_string())].into(),
///     ..LoadOptions::default()
/// };
/// assert_eq!(options.naming, TensorNaming::default());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// Names of layer `i`'s weight and bias (default `layers.{i}.weight`, `layers.{i}.bias`).
    pub naming: TensorNaming,
    /// Whether every layer has a bias (default `true`). With `true` a missing bias is
    /// [`Error::MissingTensor`]; with `false` a bias in the file is [`Error::UnexpectedTensor`].
    pub bias: bool,
    /// Tensor names of the file (keys) to read under the expected names (values); applied
    /// before anything else. A key the file lacks is [`Error::MissingTensor`].
    pub rename: BTreeMap<String, String>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { naming: TensorNaming::default(), bias: true, rename: BTreeMap::new() }
    }
}

impl LoadOptions {
    /// The default naming, without biases (e.g. the deep linear networks of LLC studies).
    pub fn bias_free() -> Self {
        LoadOptions { bias: false, ..LoadOptions::default() }
    }
}

impl From<TensorNaming> for LoadOptions {
    fn from(naming: TensorNaming) -> Self {
        LoadOptions { naming, ..LoadOptions::default() }
    }
}

impl TensorNaming {
    /// The index `i` of a weight name (`layers.7.weight` → 7), if `name` is `self.weight(i)`.
    fn weight_index(&self, name: &str) -> Option<usize> {
        let (prefix, _) = self.weight.split_once("{i}")?;
        let rest = name.strip_prefix(prefix)?;
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let i: usize = rest[..digits].parse().ok()?;
        (self.weight(i) == name).then_some(i)
    }

    fn validate(&self) -> Result<()> {
        if !self.weight.contains("{i}") {
            return Err(Error::invalid("weight naming", &self.weight, "must contain {i}, the layer index"));
        }
        if self.bias == self.weight {
            return Err(Error::invalid("bias naming", &self.bias, "must differ from the weight naming"));
        }
        Ok(())
    }
}

/// Loads an MLP saved with the default naming and a bias in every layer; `hidden` is the
/// activation after every linear layer but the last. See [`load_mlp_with`] for the checks, and
/// for bias-free models or other names.
pub fn load_mlp(path: impl AsRef<Path>, hidden: Activation) -> Result<Mlp> {
    load_mlp_with(path, hidden, &LoadOptions::default())
}

/// Loads an MLP described by `options`, accounting for every tensor of the file.
///
/// The layers are the weights whose names follow `options.naming` (`layers.{i}.weight`), and
/// their indices must be `0..n`. Each weight is `[out, in]` (PyTorch's `nn.Linear`), each bias
/// `[out]`, element types `F64` or `F32`, all values finite, all widths positive. Errors name
/// the file and the tensor:
/// - [`Error::MissingTensor`]: no layer at all, a gap in the indices (the first missing
///   weight), a missing bias (with `bias: true`), a name-map key the file lacks;
/// - [`Error::UnexpectedTensor`]: tensors nothing reads (typos, orphan biases, biases of a
///   bias-free model);
/// - [`Error::TransposedTensor`]: a weight stored `[in, out]`, when the bias, the previous
///   layer or (without a bias) the next layer says so; a square weight cannot be told apart;
/// - [`Error::TensorShape`]: a weight whose input width does not match the previous layer's
///   output, a bias of the wrong length, a tensor of the wrong rank;
/// - [`Error::Empty`]: a layer of width 0;
/// - [`Error::Dtype`], [`Error::NonFinite`], [`Error::Malformed`] (not a safetensors file).
///
/// Everything is checked before any tensor is decoded.
pub fn load_mlp_with(path: impl AsRef<Path>, hidden: Activation, options: &LoadOptions) -> Result<Mlp> {
    let path = path.as_ref();
    let naming = &options.naming;
    naming.validate()?;
    let mut file = TensorFile::open(path)?.renamed(&options.rename)?;
    let missing = |name: String| Error::MissingTensor { path: path.into(), name };

    // The layers are the file's weights, indices 0..n without gaps.
    let mut indices: Vec<usize> = file.names().filter_map(|name| naming.weight_index(name)).collect();
    indices.sort_unstable();
    if let Some(k) = indices.iter().enumerate().position(|(k, &i)| i != k) {
        return Err(missing(naming.weight(k)));
    }
    let n = indices.len();
    if n == 0 {
        return Err(missing(naming.weight(0)));
    }
    let wanted = |i: usize| std::iter::once(naming.weight(i)).chain(options.bias.then(|| naming.bias(i)));
    let expected: BTreeSet<String> = (0..n).flat_map(wanted).collect();
    let mut unexpected: Vec<String> =
        file.names().filter(|name| !expected.contains(*name)).map(|name| file.name_in_file(name).to_string()).collect();
    if !unexpected.is_empty() {
        unexpected.sort();
        return Err(Error::UnexpectedTensor { path: path.into(), names: unexpected });
    }
    if let Some(name) = expected.iter().find(|name| !file.contains(name)) {
        // Weights are all there (indices 0..n), so this is a bias.
        return Err(missing(name.clone()));
    }

    let shapes = layer_shapes(&file, naming, n, options.bias)?;
    // Dtypes and values of every tensor before decoding any.
    for (i, &(out, inp)) in shapes.iter().enumerate() {
        file.check(&naming.weight(i), &[out, inp])?;
        if options.bias {
            file.check(&naming.bias(i), &[out])?;
        }
    }
    let mut linears = Vec::with_capacity(n);
    for (i, &(out, inp)) in shapes.iter().enumerate() {
        let weight = file.take_matrix(&naming.weight(i), out, inp)?;
        let bias = if options.bias { Some(file.take_vector(&naming.bias(i), out)?) } else { None };
        linears.push(Linear::new(weight, bias)?);
    }
    file.finish()?;
    Mlp::new(linears, hidden)
}

/// Each layer's `(out, in)`, checked against its bias, the previous layer's output width and,
/// for a layer without a bias, the next layer's input width; a weight that fits only when
/// transposed is reported as transposed.
fn layer_shapes(file: &TensorFile, naming: &TensorNaming, n: usize, bias: bool) -> Result<Vec<(usize, usize)>> {
    let path = file.path();
    let shape_of = |name: &str| file.shape(name).expect("every tensor checked present").to_vec();
    let bad_shape = |name: &str, expected: String| Error::TensorShape {
        path: path.into(),
        name: file.name_in_file(name).to_string(),
        expected,
        found: shape_of(name),
    };
    let fits = |x: usize, want: Option<usize>| want.is_none_or(|w| x == w);
    let mut shapes: Vec<(usize, usize)> = Vec::with_capacity(n);
    for i in 0..n {
        let wname = naming.weight(i);
        // The input width the previous layer gives.
        let prev = shapes.last().map(|&(out, _)| out);
        let [a, b] = shape_of(&wname)[..] else {
            let expected = prev.map_or("2-D [out, in]".to_string(), |e| format!("2-D [out, {e}]"));
            return Err(bad_shape(&wname, expected));
        };
        if a == 0 || b == 0 {
            return Err(Error::Empty {
                what: format!(
                    "{}: tensor `{}` of shape [{a}, {b}] (a layer of width 0)",
                    path.display(),
                    file.name_in_file(&wname)
                ),
            });
        }
        let bname = naming.bias(i);
        let bias_len = if bias {
            match shape_of(&bname)[..] {
                [len] => Some(len),
                _ => return Err(bad_shape(&bname, "1-D [out]".into())),
            }
        } else {
            None
        };
        // The output width the bias, else the next layer's input, asks for.
        let next_in = match file.shape(&naming.weight(i + 1)) {
            Some(&[_, next_in]) if i + 1 < n => Some(next_in),
            _ => None,
        };
        let out_hint = bias_len.or(next_in);
        let straight = fits(b, prev) && fits(a, out_hint);
        let swapped = a != b && fits(a, prev) && fits(b, out_hint);
        if !straight {
            if swapped {
                return Err(Error::TransposedTensor {
                    path: path.into(),
                    name: file.name_in_file(&wname).to_string(),
                    expected: vec![b, a],
                    found: vec![a, b],
                });
            }
            if let Some(e) = prev.filter(|&e| b != e) {
                let prev_name = file.name_in_file(&naming.weight(i - 1)).to_string();
                let out = out_hint.unwrap_or(a);
                return Err(bad_shape(&wname, format!("[{out}, {e}] (`{prev_name}` has {e} outputs)")));
            }
            if let Some(len) = bias_len {
                if next_in == Some(len) {
                    let next = file.name_in_file(&naming.weight(i + 1)).to_string();
                    return Err(bad_shape(&wname, format!("[{len}, {b}] (its bias and `{next}` say {len} outputs)")));
                }
                return Err(bad_shape(&bname, format!("[{a}] (`{}` has {a} outputs)", file.name_in_file(&wname))));
            }
            // Only the next layer disagrees: it is checked, and named, next.
        }
        shapes.push((a, b));
    }
    Ok(shapes)
}

/// Saves an MLP (F64, default naming) so PyTorch's `load_state_dict` reads it back; a bias-free
/// model loads back with [`LoadOptions::bias_free`].
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
