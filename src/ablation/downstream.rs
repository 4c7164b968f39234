//! A section after a node layer, fed with basis coordinates. When the section starts with an
//! affine + elementwise layer, its pre-activations are a linear map of the coordinates, so any
//! subset of coordinates costs one small GEMM (or a running sum) instead of rebuilding the
//! activations and running the whole first layer; otherwise the coordinates are mapped back to
//! activations and the section runs as a whole.

use crate::error::Result;
use crate::linalg::gemm;
use crate::matrix::{Matrix, MatrixView};
use crate::nn::Section;

/// `u ↦ section(u C⁺)` for coordinates `u`, split as `finish(u · coord_map)`.
pub(crate) struct Downstream<'a> {
    /// `None` at the network output (the identity).
    section: Option<Box<dyn Section + 'a>>,
    /// `[dim, width]`: coordinates to what [`Downstream::finish`] consumes: the first layer's
    /// pre-activations and (if it carries it) the constant coordinate, `[C⁺ W_fᵀ | C⁺[:, c]]`;
    /// or `C⁺` itself (the activations).
    coord_map: Matrix,
    /// `[W_f; e_cᵀ]` (`[width, orig]`): the same from the activations themselves, for the fast
    /// path; `None` when `coord_map` is `C⁺`.
    full_map: Option<Matrix>,
}

impl<'a> Downstream<'a> {
    /// The map for coordinates with pseudo-inverse `c_pinv` (`[dim, orig]`) through `section`
    /// (`None`: the identity, at the network output).
    pub(crate) fn new(c_pinv: &Matrix, section: Option<Box<dyn Section + 'a>>) -> Result<Self> {
        let fast = section.as_ref().and_then(|s| s.split_first()).map(|(first, _)| {
            let w = first.folded_weight();
            let (d1, orig) = w.shape();
            let constant = orig - 1;
            Matrix::from_fn(d1 + usize::from(first.carries_constant()), orig, |i, j| {
                if i < d1 { w[(i, j)] } else { f64::from(u8::from(j == constant)) }
            })
        });
        let coord_map = match &fast {
            Some(full) => c_pinv.matmul(&full.transpose())?,
            None => c_pinv.clone(),
        };
        Ok(Downstream { section, coord_map, full_map: fast })
    }

    /// `[dim, width]`: row `j` is what coordinate `j` adds to the input of [`Downstream::finish`].
    pub(crate) fn coord_map(&self) -> &Matrix {
        &self.coord_map
    }

    /// Width of the input of [`Downstream::finish`].
    pub(crate) fn width(&self) -> usize {
        self.coord_map.ncols()
    }

    /// The input of [`Downstream::finish`] for the unprojected activations `f` (`[rows, orig]`),
    /// into `out` (`rows · width` values).
    pub(crate) fn preactivations_of(&self, f: MatrixView<'_>, out: &mut [f64]) {
        match &self.full_map {
            Some(full) => gemm(out, f, false, full.view(), true, 1.0, false),
            None => out.copy_from_slice(f.as_slice()),
        }
    }

    /// Runs the section on `p` (`[rows, width]`, the output of the coordinate map) in place: `p`
    /// becomes the section's output.
    pub(crate) fn finish(&self, p: &mut Matrix) -> Result<()> {
        let Some(section) = &self.section else { return Ok(()) };
        let mut y = Matrix::default();
        match (&self.full_map, section.split_first()) {
            (Some(_), Some((first, rest))) => {
                first.activate_in_place(p);
                let Some(rest) = rest else { return Ok(()) };
                rest.forward(p.view(), &mut y)?;
            }
            _ => section.forward(p.view(), &mut y)?,
        }
        *p = y;
        Ok(())
    }
}
