//! A section after a node layer, fed with basis coordinates: the first layer's pre-activations
//! are a linear map of the coordinates, so any subset of coordinates costs one small GEMM (or a
//! running sum) instead of rebuilding the activations and running the whole first layer.

use crate::error::Result;
use crate::linalg::gemm;
use crate::matrix::{Matrix, MatrixView};
use crate::nn::{FoldedLinear, Section};
use crate::scratch::ScratchMatrix;

/// `u ↦ section(u C⁺)` for coordinates `u`, split as `finish(u · coord_map)`.
pub(crate) struct Downstream {
    /// `[C⁺ W_fᵀ | C⁺[:, c]]` (`[dim, width]`): coordinates to the first layer's pre-activations
    /// and (if the layer carries it) the input's constant coordinate `c`. `C⁺` alone when there
    /// is no section (the node is the network output).
    coord_map: Matrix,
    /// `[W_f; e_cᵀ]` (`[width, orig]`): the same from the activations themselves (no basis).
    full_map: Option<Matrix>,
    first: Option<FoldedLinear>,
    rest: Vec<FoldedLinear>,
}

impl Downstream {
    /// The map for coordinates with pseudo-inverse `c_pinv` (`[dim, orig]`) through `section`
    /// (`None`: the identity, at the network output).
    pub(crate) fn new(c_pinv: &Matrix, section: Option<&Section>) -> Result<Self> {
        let Some(section) = section else {
            return Ok(Downstream { coord_map: c_pinv.clone(), full_map: None, first: None, rest: Vec::new() });
        };
        let first = section.layers()[0].clone();
        let w = first.folded_weight();
        let (d1, orig) = w.shape();
        let constant = orig - 1;
        let carries = first.carries_constant();
        let full = Matrix::from_fn(d1 + usize::from(carries), orig, |i, j| {
            if i < d1 { w[(i, j)] } else { f64::from(u8::from(j == constant)) }
        });
        let coord_map = c_pinv.matmul(&full.transpose())?;
        let rest = section.layers()[1..].to_vec();
        Ok(Downstream { coord_map, full_map: Some(full), first: Some(first), rest })
    }

    /// `[dim, width]`: row `j` is what coordinate `j` adds to the pre-activations.
    pub(crate) fn coord_map(&self) -> &Matrix {
        &self.coord_map
    }

    /// Width of the pre-activations (plus the constant coordinate when carried).
    pub(crate) fn width(&self) -> usize {
        self.coord_map.ncols()
    }

    /// The pre-activations of the unprojected activations `f` (`[rows, orig]`), into `out`
    /// (`rows · width` values).
    pub(crate) fn preactivations_of(&self, f: MatrixView<'_>, out: &mut [f64]) {
        match &self.full_map {
            Some(full) => gemm(out, f, false, full.view(), true, 1.0, false),
            None => out.copy_from_slice(f.as_slice()),
        }
    }

    /// Applies the first layer's activation (and carries the constant coordinate), then the rest
    /// of the section, in place: `p` (`[rows, width]`) becomes the section's output. Temporaries
    /// come from the thread's buffer pool (fresh multi-megabyte allocations page-fault more than
    /// the arithmetic costs).
    pub(crate) fn finish(&self, p: &mut Matrix) {
        let Some(first) = &self.first else { return };
        let act = first.activation();
        let d1 = first.folded_weight().nrows();
        let carries = first.carries_constant();
        for i in 0..p.nrows() {
            let row = p.row_mut(i);
            for v in &mut row[..d1] {
                *v = act.value(*v);
            }
            if carries {
                row[d1] = first.constant_carrier(row[d1]).0;
            }
        }
        if self.rest.is_empty() {
            return;
        }
        let (mut z, mut y) = (ScratchMatrix::take(), ScratchMatrix::take());
        for layer in &self.rest {
            layer.forward(p.view(), &mut z, &mut y);
            std::mem::swap(p, &mut *y);
        }
    }
}
