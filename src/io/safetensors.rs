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
/// - [`Error::TransposedTensor`]: a weight stored `[in, out]`, when its bias or its neighbours
///   say so (the whole file is weighed: see below); a square weight, or the weight of a
///   bias-free one-layer model, cannot be told apart;
/// - [`Error::TensorShape`]: a weight whose input width does not match the previous layer's
///   output, a bias of the wrong length, a tensor of the wrong rank;
/// - [`Error::Empty`]: a layer of width 0;
/// - [`Error::Dtype`], [`Error::NonFinite`], [`Error::Malformed`] (not a safetensors file).
///
/// Everything is checked before any tensor is decoded, so a failing load allocates little
/// beyond the file's bytes.
///
/// Which tensor is blamed when shapes disagree: of the readings of the weights (each as stored
/// or transposed), the one that breaks the fewest constraints (bias length = output width,
/// input width = previous output width), then transposes the fewest weights, explains the
/// file; its first transposed weight or first broken constraint is reported. A file that
/// chains only with every weight transposed is thus reported as transposed (a checkpoint of
/// the `[in, out]` convention).
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

/// Each layer's `(out, in)`: every weight 2-D with positive widths, every bias 1-D, and the
/// weights, read as `[out, in]` or transposed, chained to each other and to their biases.
///
/// Which tensor is at fault is decided over the whole file: of the readings of the weights
/// (each as stored or transposed), the one with the fewest broken constraints (a bias of
/// another length than its weight's output, a weight whose input is not the previous output),
/// then the fewest transposed weights, explains the file (so a file that chains with every
/// weight transposed reads as a checkpoint of the `[in, out]` convention, and says so). The
/// first transposed weight, or else the first broken constraint, in layer order, is reported.
/// So a weight stored `[in, out]` is named transposed rather than its bias or its neighbour
/// blamed, and a bias of the wrong length is named rather than its weight called transposed.
fn layer_shapes(file: &TensorFile, naming: &TensorNaming, n: usize, bias: bool) -> Result<Vec<(usize, usize)>> {
    let path = file.path();
    let shape_of = |name: &str| file.shape(name).expect("every tensor checked present").to_vec();
    let in_file = |name: &str| file.name_in_file(name).to_string();
    let bad_shape = |name: &str, expected: String| Error::TensorShape {
        path: path.into(),
        name: in_file(name),
        expected,
        found: shape_of(name),
    };
    // Ranks and widths first.
    let mut stored = Vec::with_capacity(n);
    let mut biases = Vec::with_capacity(n);
    for i in 0..n {
        let wname = naming.weight(i);
        let [a, b] = shape_of(&wname)[..] else {
            return Err(bad_shape(&wname, "2-D [out, in]".into()));
        };
        if a == 0 || b == 0 {
            return Err(Error::Empty {
                what: format!(
                    "{}: tensor `{}` of shape [{a}, {b}] (a layer of width 0)",
                    path.display(),
                    in_file(&wname)
                ),
            });
        }
        stored.push((a, b));
        biases.push(if bias {
            let bname = naming.bias(i);
            match shape_of(&bname)[..] {
                [len] => Some(len),
                _ => return Err(bad_shape(&bname, "1-D [out]".into())),
            }
        } else {
            None
        });
    }

    // The reading of layer i: 0 as stored, 1 transposed (not for a square weight).
    let orient = |i: usize, o: usize| if o == 0 { stored[i] } else { (stored[i].1, stored[i].0) };
    let readings = |i: usize| if stored[i].0 == stored[i].1 { 1 } else { 2 };
    // cost[i][o]: (broken constraints, transposed weights) of the best reading of layers 0..=i
    // with layer i read as o; from[i][o]: layer i − 1's reading in it.
    let mut cost = vec![[(usize::MAX, usize::MAX); 2]; n];
    let mut from = vec![[0usize; 2]; n];
    for i in 0..n {
        for o in 0..readings(i) {
            let (out, inp) = orient(i, o);
            let own = usize::from(biases[i].is_some_and(|len| len != out));
            if i == 0 {
                cost[i][o] = (own, o);
                continue;
            }
            for p in 0..readings(i - 1) {
                let (prev, trans) = cost[i - 1][p];
                let broken = own + usize::from(orient(i - 1, p).0 != inp);
                let c = (prev + broken, trans + o);
                if c < cost[i][o] {
                    cost[i][o] = c;
                    from[i][o] = p;
                }
            }
        }
    }
    let mut reading = vec![0; n];
    reading[n - 1] = if cost[n - 1][1] < cost[n - 1][0] { 1 } else { 0 };
    for i in (1..n).rev() {
        reading[i - 1] = from[i][reading[i]];
    }

    let shapes: Vec<(usize, usize)> = (0..n).map(|i| orient(i, reading[i])).collect();
    for i in 0..n {
        let (wname, bname) = (naming.weight(i), naming.bias(i));
        let (out, inp) = shapes[i];
        if reading[i] == 1 {
            return Err(Error::TransposedTensor {
                path: path.into(),
                name: in_file(&wname),
                expected: vec![out, inp],
                found: vec![inp, out],
            });
        }
        if i > 0 && shapes[i - 1].0 != inp {
            let e = shapes[i - 1].0;
            let prev = in_file(&naming.weight(i - 1));
            let out = biases[i].unwrap_or(out);
            return Err(bad_shape(&wname, format!("[{out}, {e}] (`{prev}` has {e} outputs)")));
        }
        if let Some(len) = biases[i].filter(|&len| len != out) {
            // The bias and the next layer agree on another width: the weight is wrong.
            if i + 1 < n && shapes[i + 1].1 == len {
                let next = in_file(&naming.weight(i + 1));
                return Err(bad_shape(&wname, format!("[{len}, {inp}] (its bias and `{next}` say {len} outputs)")));
            }
            return Err(bad_shape(&bname, format!("[{out}] (`{}` has {out} outputs)", in_file(&wname))));
        }
    }
    Ok(shapes)
}

/// Saves an MLP (F64, default naming) so PyTorch's `load_state_dict` reads it back; a bias-free
/// model loads back with [`LoadOptions::bias_free`].
pub fn save_mlp(path: impl AsRef<Path>, mlp: &Mlp) -> Result<()> {
    let naming = TensorNaming::default();
    let mut tensors: Vec<(String, Vec<usize>, &[f64])> = Vec::new();
    for (i, lin) in mlp.linears().iter().enumerate() {
        let (out, inp) = lin.weight().shape();
        tensors.push((naming.weight(i), vec![out, inp], lin.weight().as_slice()));
        if let Some(b) = lin.bias() {
            tensors.push((naming.bias(i), vec![out], b));
        }
    }
    write_f64_tensors(path.as_ref(), tensors)
}

/// Writes `(name, shape, values)` tensors as one F64 safetensors file (C order, little endian).
pub(crate) fn write_f64_tensors(path: &Path, tensors: Vec<(String, Vec<usize>, &[f64])>) -> Result<()> {
    let buffers: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(name, shape, values)| (name, shape, values.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views = buffers
        .iter()
        .map(|(name, shape, data)| Ok((name.clone(), TensorView::new(Dtype::F64, shape.clone(), data)?)))
        .collect::<std::result::Result<Vec<_>, safetensors::SafeTensorError>>()
        .map_err(|e| Error::malformed(path, "safetensors", e.to_string()))?;
    let bytes =
        safetensors::serialize(views, None).map_err(|e| Error::malformed(path, "safetensors", e.to_string()))?;
    std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
}
