//! Restricted (weight-refined) LLC: which parameter coordinates a chain samples, named tensors
//! and layers of a model, and the parameters of an interaction-graph module.
//!
//! A restricted estimate samples the coordinates of a [`ParamSubset`] and holds every other
//! coordinate at w*: it is the learning coefficient of w_S ↦ L(w_S, w*_rest). For a loss that
//! splits, L(w_A, w_B) = L_A(w_A) + L_B(w_B), the posterior factorises and the restricted
//! estimates add up to the whole one (tested on closed forms in `tests/llc_tests.rs`).

use crate::basis::{Basis, NodeBasis};
use crate::error::{Error, Result};
use crate::graph::Modules;
use crate::nn::{Mlp, Sequential};
use crate::transformer::Transformer;
use serde::{Deserialize, Serialize};
use std::ops::Range;

/// A set of parameter coordinates to sample (the rest are held at w*), with a label for
/// reports. Indices are kept increasing and distinct.
///
/// ```
/// use degeneracy::llc::ParamSubset;
/// let s = ParamSubset::new("first and last", [9, 0])?;
/// assert_eq!(s.indices(), &[0, 9]);
/// assert!(s.check(10).is_ok() && s.check(9).is_err());
/// assert!(ParamSubset::new("twice", [1, 1]).is_err());
/// # Ok::<(), degeneracy::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamSubset {
    label: String,
    indices: Vec<usize>,
}

impl ParamSubset {
    /// The coordinates `indices` (any order), labelled `label`. Errors on an empty set or a
    /// repeated index (both name `parameters`).
    pub fn new(label: impl Into<String>, indices: impl IntoIterator<Item = usize>) -> Result<Self> {
        let label = label.into();
        let mut indices: Vec<usize> = indices.into_iter().collect();
        indices.sort_unstable();
        if indices.is_empty() {
            return Err(Error::invalid("parameters", &label, "selects no parameter"));
        }
        if let Some(w) = indices.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::invalid("parameters", &label, format!("index {} appears twice", w[0])));
        }
        Ok(ParamSubset { label, indices })
    }

    /// The coordinates `range` (non-empty).
    pub fn range(label: impl Into<String>, range: Range<usize>) -> Result<Self> {
        Self::new(label, range)
    }

    /// The union of `subsets` (which must not overlap), labelled `label`.
    pub fn union<'a>(label: impl Into<String>, subsets: impl IntoIterator<Item = &'a ParamSubset>) -> Result<Self> {
        Self::new(label, subsets.into_iter().flat_map(|s| s.indices.iter().copied()))
    }

    /// The label (a tensor or layer name, `module 3`, …).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The coordinates, increasing.
    pub fn indices(&self) -> &[usize] {
        &self.indices
    }

    /// Number of coordinates k.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    /// Never true (an empty subset cannot be built); for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// Errors (naming `parameters`) unless every index is below `n_params`.
    pub fn check(&self, n_params: usize) -> Result<()> {
        match self.indices.last() {
            Some(&last) if last >= n_params => Err(Error::invalid(
                "parameters",
                &self.label,
                format!("index {last} is out of range for a model with {n_params} parameters"),
            )),
            _ => Ok(()),
        }
    }

    /// Whether the subset is every coordinate of a model with `n_params` parameters.
    pub fn is_all(&self, n_params: usize) -> bool {
        self.indices.len() == n_params && self.indices.last() == Some(&(n_params - 1))
    }
}

/// One named parameter tensor: where it sits in the flat parameter vector.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamTensor {
    /// The tensor's name (`layers.1.weight`: the safetensors name for an [`Mlp`]).
    pub name: String,
    /// The layer it belongs to (`layers.1`), for per-layer breakdowns.
    pub layer: String,
    /// Its shape (`[out, in]` for a weight, row-major in the flat vector).
    pub shape: Vec<usize>,
    /// Its first coordinate in the flat parameter vector.
    pub offset: usize,
}

impl ParamTensor {
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the tensor has no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Its coordinates in the flat parameter vector.
    pub fn range(&self) -> Range<usize> {
        self.offset..self.offset + self.len()
    }
}

/// The named tensors of a model's flat parameter vector, in order. This is what the `llc` job's
/// `"parameters": ["layers.1.weight", …]` names refer to, and what per-tensor and per-layer
/// breakdowns iterate over.
///
/// ```
/// use degeneracy::llc::ParamLayout;
/// use degeneracy::{Activation, Mlp};
/// let mlp = Mlp::init(&[3, 4, 2], Activation::Relu, true, 0)?;
/// let layout = ParamLayout::mlp(&mlp);
/// let names: Vec<&str> = layout.tensors().iter().map(|t| t.name.as_str()).collect();
/// assert_eq!(names, ["layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias"]);
/// let second = layout.select(&["layers.1.weight", "layers.1.bias"])?;
/// assert_eq!(second.indices(), (16..26).collect::<Vec<_>>());
/// assert!(layout.select(&["layers.2.weight"]).is_err()); // names the tensors it has
/// # Ok::<(), degeneracy::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamLayout {
    tensors: Vec<ParamTensor>,
    n_params: usize,
}

impl ParamLayout {
    /// A layout of consecutive tensors `(name, layer, shape)` starting at coordinate 0. Errors
    /// on a repeated name or an empty tensor.
    pub fn new(tensors: impl IntoIterator<Item = (String, String, Vec<usize>)>) -> Result<Self> {
        let mut out: Vec<ParamTensor> = Vec::new();
        let mut offset = 0;
        for (name, layer, shape) in tensors {
            if out.iter().any(|t| t.name == name) {
                return Err(Error::invalid("parameters", &name, "tensor name appears twice in the layout"));
            }
            let t = ParamTensor { name, layer, shape, offset };
            if t.is_empty() {
                return Err(Error::invalid("parameters", &t.name, "tensor has no entry"));
            }
            offset += t.len();
            out.push(t);
        }
        Ok(ParamLayout { tensors: out, n_params: offset })
    }

    /// An MLP's tensors in its flat order, with PyTorch's (and the safetensors files') names:
    /// `layers.{i}.weight` `[out, in]`, then `layers.{i}.bias` `[out]` if the layer has one.
    pub fn mlp(mlp: &Mlp) -> Self {
        let mut tensors = Vec::new();
        for (i, lin) in mlp.linears().iter().enumerate() {
            let (out, inp) = lin.weight().shape();
            let layer = format!("layers.{i}");
            tensors.push((format!("{layer}.weight"), layer.clone(), vec![out, inp]));
            if lin.bias().is_some() {
                tensors.push((format!("{layer}.bias"), layer, vec![out]));
            }
        }
        Self::new(tensors).expect("an MLP's tensors are named uniquely and non-empty")
    }

    /// A transformer's tensors in its flat order ([`crate::transformer::TransformerWeights::named`])
    /// under their TransformerLens names and shapes (`blocks.0.attn.W_Q` `[n_heads, d_model,
    /// d_head]`, …), grouped into layers by the name without its last part (`blocks.0.attn`,
    /// `blocks.0.mlp`, `embed`, `pos_embed`, `unembed`): restricted LLCs of a transformer name
    /// its tensors as its state dict does.
    ///
    /// ```
    /// use degeneracy::llc::ParamLayout;
    /// use degeneracy::transformer::{Transformer, TransformerConfig, TransformerWeights};
    /// let config = TransformerConfig::from_json_str(
    ///     r#"{"n_layers": 1, "d_model": 8, "n_heads": 2, "d_head": 4, "d_mlp": 16, "d_vocab": 5,
    ///         "n_ctx": 3, "act_fn": "relu", "normalization_type": null}"#,
    /// )?;
    /// let model = Transformer::new(config.clone(), TransformerWeights::random(&config, 0.1, 0)?)?;
    /// let layout = ParamLayout::transformer(&model);
    /// assert_eq!(layout.n_params(), degeneracy::Layer::n_params(&model));
    /// assert_eq!(layout.tensor("blocks.0.attn.W_Q")?.shape, [2, 8, 4]);
    /// let layers: Vec<String> = layout.per_layer().iter().map(|s| s.label().to_string()).collect();
    /// assert_eq!(layers, ["embed", "pos_embed", "blocks.0.attn", "blocks.0.mlp", "unembed"]);
    /// # Ok::<(), degeneracy::Error>(())
    /// ```
    pub fn transformer(model: &Transformer) -> Self {
        Self::new(model.weights().named().into_iter().map(|(name, t)| {
            let layer = name.rsplit_once('.').map_or(name.as_str(), |(l, _)| l).to_string();
            (name, layer, t.shape.clone())
        }))
        .expect("a transformer's tensors are named uniquely and non-empty")
    }

    /// A [`Sequential`]'s parameters, one flat tensor `layers.{k}` per layer with parameters
    /// (boxed layers do not name their tensors).
    pub fn sequential(seq: &Sequential) -> Result<Self> {
        Self::new(seq.layers().iter().enumerate().filter(|(_, l)| l.n_params() > 0).map(|(k, l)| {
            let name = format!("layers.{k}");
            (name.clone(), name, vec![l.n_params()])
        }))
    }

    /// The tensors, in flat order.
    pub fn tensors(&self) -> &[ParamTensor] {
        &self.tensors
    }

    /// Total number of parameters.
    pub fn n_params(&self) -> usize {
        self.n_params
    }

    /// The tensor `name`; the error names `parameters` and lists the tensors there are.
    pub fn tensor(&self, name: &str) -> Result<&ParamTensor> {
        self.tensors.iter().find(|t| t.name == name).ok_or_else(|| {
            let names: Vec<&str> = self.tensors.iter().map(|t| t.name.as_str()).collect();
            Error::invalid("parameters", name, format!("no such tensor; this model has {names:?}"))
        })
    }

    /// The coordinates of the tensors `names` (at least one, no repeats), labelled with the
    /// names joined by `+`.
    pub fn select<S: AsRef<str>>(&self, names: &[S]) -> Result<ParamSubset> {
        if names.is_empty() {
            return Err(Error::invalid("parameters", "[]", "name at least one tensor"));
        }
        let mut indices = Vec::new();
        for (i, n) in names.iter().enumerate() {
            if names[..i].iter().any(|m| m.as_ref() == n.as_ref()) {
                return Err(Error::invalid("parameters", n.as_ref(), "tensor named twice"));
            }
            indices.extend(self.tensor(n.as_ref())?.range());
        }
        let label = names.iter().map(AsRef::as_ref).collect::<Vec<_>>().join("+");
        ParamSubset::new(label, indices)
    }

    /// One subset per tensor, labelled with its name.
    pub fn per_tensor(&self) -> Vec<ParamSubset> {
        self.tensors.iter().map(|t| ParamSubset::range(t.name.clone(), t.range()).expect("non-empty")).collect()
    }

    /// One subset per layer (the tensors sharing [`ParamTensor::layer`]), in order of first
    /// appearance, labelled with the layer's name.
    pub fn per_layer(&self) -> Vec<ParamSubset> {
        let mut layers: Vec<(String, Vec<usize>)> = Vec::new();
        for t in &self.tensors {
            match layers.iter_mut().find(|(l, _)| *l == t.layer) {
                Some((_, idx)) => idx.extend(t.range()),
                None => layers.push((t.layer.clone(), t.range().collect())),
            }
        }
        layers.into_iter().map(|(l, idx)| ParamSubset::new(l, idx).expect("non-empty, distinct")).collect()
    }
}

/// The parameters assigned to one module of the interaction graph (see [`module_parameters`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModuleParams {
    /// The module's id in [`Modules`].
    pub module: usize,
    /// Its size: the number of basis directions in it ([`Modules::sizes`]).
    pub directions: usize,
    /// Per node layer of the graph, the units (neurons) assigned to the module.
    pub units: Vec<(String, Vec<usize>)>,
    /// The parameters: weights between two of its units, and biases of its units.
    pub params: ParamSubset,
}

/// The parameters of each module of an MLP's interaction graph.
///
/// **What "a module's parameters" means.** A module is a set of *basis directions* (LIB, PCA or
/// neuron directions) of several node layers. A basis direction is a combination of a layer's
/// units, and a parameter couples one unit of a layer to one unit of the next, so a module has
/// no exact set of parameter coordinates unless its directions are supported on disjoint sets
/// of units (the neuron basis; block-diagonal networks, where the LIB recovers the blocks).
/// The map used here is the one that is exact in that case:
/// 1. every unit i of a node layer goes to the module of the direction j that puts the largest
///    share of its pattern on it, argmax_j C⁺[j, i]² / Σ_u C⁺[j, u]² (`f ≈ f̂ C⁺`, so row j of C⁺
///    is direction j's pattern over the units; the constant direction and the constant
///    coordinate are left out; normalising each pattern keeps a large module from taking every
///    unit by its size alone);
/// 2. weight W_k[i, j] of linear layer k belongs to module m when its input unit j (node layer
///    `layers.k`) and its output unit i (node layer k + 1) both belong to m; bias `b_k[i]` goes
///    with its output unit. When node layer k + 1 is not in the graph (the output, which
///    interaction graphs usually leave out), the output side is unconstrained: W_k[i, j] goes
///    with its input unit j and the biases of that layer belong to no module.
///
/// Parameters coupling units of two different modules belong to none. Modules with no
/// parameter are left out; the rest come in id order. Errors if a graph layer is not a node of
/// `mlp` or has no basis in `bases`, or a basis does not fit its node's width.
pub fn module_parameters(mlp: &Mlp, bases: &[NodeBasis], modules: &Modules) -> Result<Vec<ModuleParams>> {
    let n_nodes = mlp.n_layers() + 1;
    let widths = mlp.widths();
    // Per node index: the module of each unit (None when the node is not in the graph).
    let mut unit_module: Vec<Option<Vec<usize>>> = vec![None; n_nodes];
    for (l, name) in modules.layers.iter().enumerate() {
        let node = (0..n_nodes).find(|&k| mlp.node_name(k) == *name).ok_or_else(|| Error::UnknownNode {
            name: name.clone(),
            available: (0..n_nodes).map(|k| mlp.node_name(k)).collect(),
        })?;
        let basis = bases.iter().find(|b| b.node == *name).ok_or_else(|| Error::UnknownNode {
            name: name.clone(),
            available: bases.iter().map(|b| b.node.clone()).collect(),
        })?;
        let c_pinv = basis.c_pinv();
        let units = widths[node];
        let membership = &modules.membership[l];
        if c_pinv.nrows() != membership.len() || c_pinv.ncols() < units {
            return Err(Error::shape(
                "module_parameters: basis C⁺ [directions, ≥ units]",
                &[membership.len(), units],
                &[c_pinv.nrows(), c_pinv.ncols()],
            ));
        }
        let first = usize::from(basis.has_constant_direction);
        // Each direction's pattern over the units, normalised: a unit then goes to the module of
        // the direction that puts the largest share of its weight on it (a large module does not
        // win units by its size alone).
        let norms: Vec<f64> =
            (0..c_pinv.nrows()).map(|j| (0..units).map(|i| c_pinv[(j, i)].powi(2)).sum::<f64>()).collect();
        let mut owner = Vec::with_capacity(units);
        for i in 0..units {
            let mut best: Option<(f64, usize)> = None;
            for (j, &m) in membership.iter().enumerate().skip(first) {
                if norms[j] > 0.0 {
                    let share = c_pinv[(j, i)].powi(2) / norms[j];
                    if best.is_none_or(|(b, _)| share > b) {
                        best = Some((share, m));
                    }
                }
            }
            owner.push(best.map_or(usize::MAX, |(_, m)| m));
        }
        unit_module[node] = Some(owner);
    }
    let layout = ParamLayout::mlp(mlp);
    let mut per_module: Vec<Vec<usize>> = vec![Vec::new(); modules.sizes.len()];
    for (k, lin) in mlp.linears().iter().enumerate() {
        let Some(input) = &unit_module[k] else { continue };
        let output = unit_module[k + 1].as_ref();
        let weight = layout.tensor(&format!("layers.{k}.weight"))?;
        let (out, inp) = lin.weight().shape();
        for i in 0..out {
            for (j, &m) in input.iter().enumerate().take(inp) {
                if m != usize::MAX && output.is_none_or(|o| o[i] == m) {
                    per_module[m].push(weight.offset + i * inp + j);
                }
            }
        }
        if let (Some(o), Ok(bias)) = (output, layout.tensor(&format!("layers.{k}.bias"))) {
            for (i, &m) in o.iter().enumerate().take(out) {
                if m != usize::MAX {
                    per_module[m].push(bias.offset + i);
                }
            }
        }
    }
    let mut result = Vec::new();
    for (m, idx) in per_module.into_iter().enumerate() {
        if idx.is_empty() {
            continue;
        }
        let units = modules
            .layers
            .iter()
            .filter_map(|name| {
                let node = (0..n_nodes).find(|&k| mlp.node_name(k) == *name)?;
                let owners = unit_module[node].as_ref()?;
                Some((name.clone(), (0..owners.len()).filter(|&i| owners[i] == m).collect()))
            })
            .collect();
        result.push(ModuleParams {
            module: m,
            directions: modules.sizes[m],
            units,
            params: ParamSubset::new(format!("module {m}"), idx)?,
        });
    }
    Ok(result)
}
