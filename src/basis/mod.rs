//! Bases of node layers: the Local Interaction Basis (LIB) and, for comparison, PCA and the
//! neuron basis.
//!
//! A basis maps folded activations `f = [h, 1]` (rows) to coordinates `f̂ = f · C` and back,
//! `f ≈ f̂ · C⁺`. The LIB is built from the output backwards: whiten the activations (PCA of
//! the Gram matrix), rotate to the eigenvectors of the Gram of the Jacobians of the next
//! node's basis coordinates, and scale each direction by the square root of its eigenvalue Λ,
//! which measures how much the rest of the network uses it. The exact algorithm and its
//! sources are in `docs/math.md`.

mod fit;
mod frame;
mod jacobian_gram;

pub use fit::{build_bases, fit_bases};
pub use jacobian_gram::JacobianGramAccumulator;
pub(crate) use jacobian_gram::{basis_cotangents, cotangent_group};

use crate::error::{Error, Result};
use crate::estimate::{Quadrature, StochasticSources};
use crate::matrix::{Matrix, MatrixView};
use crate::nn::Network;
use serde::{Deserialize, Serialize};

/// A linear change of coordinates at a node layer.
///
/// Implement this for bases computed elsewhere; the edge, ablation and modularity code only
/// needs `C` and `C⁺`.
pub trait Basis {
    /// `C`, shape `[orig, dim]`: coordinates are `f̂ = f · C`.
    fn c(&self) -> &Matrix;

    /// `C⁺`, shape `[dim, orig]`: `f ≈ f̂ · C⁺` (exact on the kept subspace).
    fn c_pinv(&self) -> &Matrix;

    /// Importance of each direction, in column order (Λ for the LIB, the variance for PCA).
    fn spectrum(&self) -> Option<&[f64]> {
        None
    }

    /// Width of the activations the basis acts on (folded: including the constant).
    fn orig_dim(&self) -> usize {
        self.c().nrows()
    }

    /// Number of basis directions.
    fn dim(&self) -> usize {
        self.c().ncols()
    }

    /// Coordinates `f · C` of a batch of (folded) activations.
    fn transform(&self, activations: MatrixView<'_>) -> Result<Matrix> {
        if activations.ncols() != self.orig_dim() {
            return Err(Error::shape(
                "Basis::transform",
                &[activations.nrows(), self.orig_dim()],
                &[activations.nrows(), activations.ncols()],
            ));
        }
        activations.matmul(self.c().view())
    }

    /// Activations `f̂ · C⁺` rebuilt from coordinates.
    fn inverse(&self, coordinates: MatrixView<'_>) -> Result<Matrix> {
        if coordinates.ncols() != self.dim() {
            return Err(Error::shape(
                "Basis::inverse",
                &[coordinates.nrows(), self.dim()],
                &[coordinates.nrows(), coordinates.ncols()],
            ));
        }
        coordinates.matmul(self.c_pinv().view())
    }
}

/// Appends the constant coordinate 1 to every row: `h ↦ [h, 1]`, the folded activations the
/// bases of hidden node layers act on.
pub fn fold(h: MatrixView<'_>) -> Matrix {
    let d = h.ncols();
    Matrix::from_fn(h.nrows(), d + 1, |i, j| if j < d { h[(i, j)] } else { 1.0 })
}

/// Which basis to build at each node layer (rib's `basis_formula`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BasisFormula {
    /// The LIB: eigenvectors of the Jacobian Gram in whitened coordinates (rib's current one).
    #[serde(rename = "jacobian")]
    Jacobian,
    /// rib's older LIB variant built from `−‖F(f) − F(αf)‖²` (pairs with functional edges).
    #[serde(rename = "(1-alpha)^2")]
    OneMinusAlphaSquared,
    /// PCA (`W = Y U`, not whitened), centred when `center` is set.
    #[serde(rename = "svd")]
    Svd,
    /// The identity: the neurons themselves.
    #[serde(rename = "neuron")]
    Neuron,
}

impl BasisFormula {
    /// Parses rib's names: `jacobian`, `(1-alpha)^2`, `svd`, `neuron`.
    pub fn from_name(name: &str) -> Result<Self> {
        Ok(match name {
            "jacobian" => BasisFormula::Jacobian,
            "(1-alpha)^2" => BasisFormula::OneMinusAlphaSquared,
            "svd" | "pca" => BasisFormula::Svd,
            "neuron" => BasisFormula::Neuron,
            _ => return Err(Error::invalid("basis_formula", name, "expected jacobian, (1-alpha)^2, svd or neuron")),
        })
    }

    /// rib's name.
    pub fn name(self) -> &'static str {
        match self {
            BasisFormula::Jacobian => "jacobian",
            BasisFormula::OneMinusAlphaSquared => "(1-alpha)^2",
            BasisFormula::Svd => "svd",
            BasisFormula::Neuron => "neuron",
        }
    }

    /// Whether the basis depends on the next node layer's basis (the LIB variants).
    pub fn is_interaction(self) -> bool {
        matches!(self, BasisFormula::Jacobian | BasisFormula::OneMinusAlphaSquared)
    }
}

/// How `M'` of the `jacobian` formula (and the edges' Jacobians) are computed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JacobianPath {
    /// The closed form wherever the section is a single `Linear → σ` layer or a residual block
    /// around one (one data pass for all node layers), vector–Jacobian products elsewhere.
    #[default]
    Auto,
    /// Vector–Jacobian products everywhere (one data pass per node layer): the reference.
    Generic,
    /// As `Auto`, with the exact sums of the vector–Jacobian products over output positions (and
    /// optionally directions) replaced by random sources (rib's `n_stochastic_sources_*`): for
    /// long contexts. The closed forms stay exact.
    Stochastic(StochasticSources),
}

impl JacobianPath {
    /// Whether closed forms are used where a section has one.
    pub fn closed_forms(self) -> bool {
        self != JacobianPath::Generic
    }

    /// The sources, if any.
    pub fn sources(self) -> Option<StochasticSources> {
        match self {
            JacobianPath::Stochastic(s) => Some(s),
            _ => None,
        }
    }
}

/// Settings of a basis build (rib's `RibBuildConfig`, the parts that shape the bases).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LibConfig {
    /// Which basis.
    pub basis_formula: BasisFormula,
    /// Centre activations (the constant direction becomes basis direction 0).
    pub center: bool,
    /// Gram eigenvalues `≤` and Λ `<` this are dropped (the reference's two rules).
    pub truncation_threshold: f64,
    /// Give the last node layer a PCA basis instead of the identity.
    pub rotate_final_node_layer: bool,
    /// Integrated-gradient rule for `M'`.
    pub quadrature: Quadrature,
    /// Rows per batch (memory bound and unit of parallel work).
    pub batch_size: usize,
    /// Node layers (`layers.k`, `output`), increasing; `None` = all of them.
    pub node_layers: Option<Vec<String>>,
    /// Closed form or generic path for the `jacobian` formula.
    pub jacobian_path: JacobianPath,
}

impl Default for LibConfig {
    /// The LIB as in the papers' configs (jacobian basis, centred, plain gradients), with a
    /// threshold of 1e-10 that sits in the spectral gaps of float64 builds.
    fn default() -> Self {
        LibConfig {
            basis_formula: BasisFormula::Jacobian,
            center: true,
            truncation_threshold: 1e-10,
            rotate_final_node_layer: false,
            quadrature: Quadrature::Gradient,
            batch_size: 1024,
            node_layers: None,
            jacobian_path: JacobianPath::Auto,
        }
    }
}

impl LibConfig {
    /// Checks the settings; errors name the offending field.
    pub fn validate(&self) -> Result<()> {
        if !(self.truncation_threshold >= 0.0 && self.truncation_threshold.is_finite()) {
            return Err(Error::invalid("truncation_threshold", self.truncation_threshold, "must be finite and ≥ 0"));
        }
        crate::data::check_batch_size(self.batch_size)?;
        self.quadrature.validate()?;
        if let Some(sources) = self.jacobian_path.sources() {
            sources.validate()?;
        }
        if self.center && self.basis_formula == BasisFormula::Neuron {
            return Err(Error::invalid("center", true, "centring is not defined for the neuron basis"));
        }
        Ok(())
    }

    /// The rule of the derivative moments [`crate::estimate::NodeStatistics`] must collect for
    /// the closed-form Jacobian Grams (`None` when the build does not use them).
    pub fn statistics_quadrature(&self) -> Option<Quadrature> {
        (self.basis_formula == BasisFormula::Jacobian && self.jacobian_path.closed_forms()).then_some(self.quadrature)
    }

    /// How many passes over the data [`build_bases`] makes after the statistics pass: one per
    /// node layer whose `M'` has no closed form (the `(1-alpha)^2` formula, sections that are
    /// neither one affine + elementwise layer nor a residual block around one,
    /// [`JacobianPath::Generic`]); 0 for PCA, neurons, and the
    /// `jacobian` LIB of an MLP's consecutive node layers.
    pub fn extra_passes(&self, net: &dyn Network) -> Result<usize> {
        if !self.basis_formula.is_interaction() {
            return Ok(0);
        }
        let nodes = self.node_indices(net)?;
        let mut passes = 0;
        for pair in nodes.windows(2) {
            let section = net.section(pair[0], pair[1])?;
            let structured = section.structure().is_some() || section.residual().is_some();
            let closed = self.statistics_quadrature().is_some() && structured;
            passes += usize::from(!closed);
        }
        Ok(passes)
    }

    /// The network's node indices this config selects.
    pub fn node_indices(&self, net: &dyn Network) -> Result<Vec<usize>> {
        let nodes: Vec<usize> = match &self.node_layers {
            None => (0..net.node_layers().len()).collect(),
            Some(names) => names.iter().map(|n| net.node_index(n)).collect::<Result<_>>()?,
        };
        if nodes.is_empty() || nodes.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::invalid(
                "node_layers",
                format!("{:?}", self.node_layers),
                "need increasing node layers",
            ));
        }
        Ok(nodes)
    }
}

/// The basis of one node layer, with what it was built from.
///
/// [`fit_bases`] builds them; [`NodeBasis::new`] wraps a basis computed elsewhere (a sparse
/// dictionary, a rotation, …) so that it flows through the edges, the interaction graph, the
/// modules and the ablations like the crate's own.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeBasis {
    /// Node layer name (`layers.k`, `output`, …).
    pub node: String,
    /// The formula; `None` for a basis not built here (an unrotated final node layer, a user's).
    pub formula: Option<BasisFormula>,
    /// Whether column 0 of `C` is the constant direction (its edges are not counted in the
    /// graph and are always kept by edge masks).
    pub has_constant_direction: bool,
    c: Matrix,
    c_pinv: Matrix,
    /// The orthogonal frame `W = Y U` and `W⁺` (PCA and LIB), for ablations in that basis.
    pub w: Option<(Matrix, Matrix)>,
    /// Λ in `C` column order (LIB only, or given).
    pub lambda: Option<Vec<f64>>,
    /// The full Gram spectrum, descending (empty for a basis not built here).
    pub gram_eigenvalues: Vec<f64>,
    /// The mean of the (folded) activations, empty if not computed.
    pub mean: Vec<f64>,
    /// The kept Gram eigenvalues `D` in frame order (the constant direction first when
    /// centred): the PCA directions' variances, in `C` column order for `svd`.
    pub gram_kept: Vec<f64>,
}

impl NodeBasis {
    /// A basis of node layer `node` given by `C` (`[width, dim]`: coordinates `f̂ = f C` of the
    /// folded activations `f`) and `C⁺` (`[dim, width]`: `f ≈ f̂ C⁺`); both finite.
    ///
    /// ```
    /// use degeneracy::Matrix;
    /// use degeneracy::basis::{Basis, NodeBasis};
    /// // A rotation of a 2-unit node's units, the constant coordinate (last) kept apart.
    /// let (c, s) = (0.6, 0.8);
    /// let r = Matrix::from_rows(&[[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])?;
    /// let basis = NodeBasis::new("layers.1", r.clone(), r.transpose())?;
    /// assert_eq!(basis.dim(), 3);
    /// # Ok::<(), degeneracy::Error>(())
    /// ```
    pub fn new(node: impl Into<String>, c: Matrix, c_pinv: Matrix) -> Result<Self> {
        if c_pinv.shape() != (c.ncols(), c.nrows()) {
            return Err(Error::shape(
                "NodeBasis: C⁺ must be [dim, width]",
                &[c.ncols(), c.nrows()],
                &[c_pinv.nrows(), c_pinv.ncols()],
            ));
        }
        if c.ncols() == 0 || c.nrows() == 0 {
            return Err(Error::Empty { what: "NodeBasis: C has no direction".into() });
        }
        c.check_finite("NodeBasis C")?;
        c_pinv.check_finite("NodeBasis C⁺")?;
        Ok(NodeBasis {
            node: node.into(),
            formula: None,
            has_constant_direction: false,
            c,
            c_pinv,
            w: None,
            lambda: None,
            gram_eigenvalues: Vec::new(),
            mean: Vec::new(),
            gram_kept: Vec::new(),
        })
    }

    /// With Λ (one finite value per direction), e.g. a dictionary's importances.
    pub fn with_lambda(mut self, lambda: Vec<f64>) -> Result<Self> {
        if lambda.len() != self.c.ncols() {
            return Err(Error::shape("NodeBasis::with_lambda", &[self.c.ncols()], &[lambda.len()]));
        }
        if let Some(k) = lambda.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite { what: "NodeBasis Λ".into(), row: 0, col: k, value: lambda[k] });
        }
        self.lambda = Some(lambda);
        Ok(self)
    }

    /// Marks column 0 as the constant direction (see [`NodeBasis::has_constant_direction`]).
    pub fn with_constant_direction(mut self, constant: bool) -> Self {
        self.has_constant_direction = constant;
        self
    }

    /// Whether the basis rotates (false for the identity of an unrotated final node layer).
    pub fn is_rotated(&self) -> bool {
        self.formula.is_some() || self.c != Matrix::identity(self.c.nrows()) || self.c_pinv != self.c
    }
}

impl Basis for NodeBasis {
    fn c(&self) -> &Matrix {
        &self.c
    }

    fn c_pinv(&self) -> &Matrix {
        &self.c_pinv
    }

    fn spectrum(&self) -> Option<&[f64]> {
        match (&self.lambda, self.formula) {
            (Some(l), _) => Some(l),
            (None, Some(BasisFormula::Svd)) => Some(&self.gram_kept),
            _ => None,
        }
    }
}
