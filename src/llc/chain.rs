//! One sampling chain: the SGLD / RMSprop-SGLD / SGNHT update with its per-step diagnostics.

use super::config::{LlcConfig, Sampler, SgldParams};
use super::loss_model::LossModel;
use super::streams::{BatchOrder, Purpose, SHARED_LANE, stream};
use crate::error::{Error, Result};
use rand::rngs::{ChaCha8Rng, Xoshiro256PlusPlus};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

/// Why a chain stopped.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum DivergenceCause {
    /// The minibatch loss at the step was NaN or infinite.
    NonFiniteLoss {
        /// The value returned by the model.
        value: f64,
    },
    /// The loss was finite but its gradient was not.
    NonFiniteGradient,
    /// The update produced NaN or infinite parameters.
    NonFiniteParameters,
}

/// Where and why a chain diverged. The chain stops there; the steps before it are kept.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Divergence {
    /// The step (0-based) at which the non-finite value appeared.
    pub step: usize,
    /// What was non-finite.
    pub cause: DivergenceCause,
}

/// What one step measured, all at the pre-update point w_t.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Minibatch loss L_{B_t}(w_t).
    pub loss: f64,
    /// Norm of the applied loss drift: ‖(ε/2)·nβ·G⊙g‖ for SGLD (G = 1) and RMSprop-SGLD,
    /// ‖ε·nβ·g‖ for SGNHT (what was added to the parameters / momentum, devinterp issue #90).
    pub grad_norm: f64,
    /// Norm of the applied noise ‖√ε·σ·√G⊙ξ‖ (SGNHT: ‖√(2Aε)·σ·ξ‖).
    pub noise_norm: f64,
    /// ‖w_t − w*‖.
    pub distance: f64,
    /// MALA acceptance probability of the previous transition w_{t−1} → w_t (see
    /// [`Chain::step`]); `None` at step 0 and for SGNHT.
    pub mala_acceptance: Option<f64>,
}

/// One chain of the localised, tempered posterior
/// p(w) ∝ exp(−nβ·L(w) − (γ/2)‖w − w*‖² − (λ_wd/2)‖w‖²), started at w*.
///
/// Each [`Chain::step`] draws the next minibatch B_t, evaluates L_{B_t}(w_t) and g = ∇L_{B_t}(w_t)
/// *before* the update (the recorded loss is at w_t, as devinterp), then applies, with
/// ∇U = nβ·g + γ(w_t − w*) + λ_wd·w_t and ξ ∼ N(0, I):
/// * SGLD: w ← w − (ε/2)∇U + √ε·σ·ξ;
/// * RMSprop-SGLD: V ← αV + (1 − α)g⊙g, G = 1/(√V + eps), w ← w − (ε/2)G⊙∇U + √ε·σ·√G⊙ξ;
/// * SGNHT: v ← (1 − α)v − ε∇U + √(2Aε)·σ·ξ, w ← w + v, α ← α + ‖v‖²/d − ε
///   (v₀ = √ε·σ·N(0, I), α₀ = A);
///
/// then clamps to the box [w* − b, w* + b] if one is set (SGNHT also reverses the momentum of
/// every clamped coordinate).
///
/// The MALA diagnostic treats each Langevin step as a proposal with potential
/// U(w) = nβ·L_B(w) + (γ/2)‖w − w*‖² + (λ_wd/2)‖w‖² and
/// log q(x | y) = −‖x − y + (ε/2)G⊙∇U(y)‖²_{G⁻¹} / (2ε):
/// α = min(1, exp(log q(w_{t−1} | w_t) − log q(w_t | w_{t−1}) + U(w_{t−1}) − U(w_t))), where
/// U(w_t), ∇U(w_t) come from B_t and U(w_{t−1}), ∇U(w_{t−1}) from B_{t−1} (devinterp 1.x's
/// `MalaAcceptanceRate` does the same; with full batches it is exact MALA). For RMSprop-SGLD,
/// G is the preconditioner that made the proposal.
///
/// Noise: each step keys a Xoshiro256++ with 256 bits of the chain's ChaCha8 noise stream and
/// draws its d normals from it (ziggurat), twice as fast as drawing them from ChaCha8 directly.
///
/// A chain owns its model clone, parameter buffers and random streams, so it is independent
/// of every other chain and of the thread running it. No step allocates (after the model's
/// first call).
#[derive(Debug)]
pub struct Chain<M> {
    model: M,
    params: SgldParams,
    index: usize,
    w: Vec<f64>,
    w_star: Vec<f64>,
    grad: Vec<f64>,
    drift: Vec<f64>,
    /// This step's standard normals.
    xi: Vec<f64>,
    prev_w: Vec<f64>,
    prev_drift: Vec<f64>,
    /// RMSprop: V. SGNHT: momentum v. SGLD: unused.
    state: Vec<f64>,
    /// RMSprop: the preconditioner G of the last update (for MALA).
    prev_g: Vec<f64>,
    prev_u: f64,
    thermostat: f64,
    noise: ChaCha8Rng,
    batches: BatchOrder,
    init_loss: f64,
    step: usize,
    divergence: Option<Divergence>,
}

impl<M: LossModel> Chain<M> {
    /// Chain `index` of a run configured by `config` with checked sampler parameters `params`.
    /// Computes `init_loss` from the first `num_init_loss_batches` minibatches this chain will
    /// see. Callers have checked shapes (see [`super::LlcEstimator::chain`]).
    pub(crate) fn new(
        mut model: M,
        w_star: &[f64],
        params: SgldParams,
        config: &LlcConfig,
        index: usize,
    ) -> Result<Self> {
        let d = w_star.len();
        let n = model.n_samples();
        let lane = if config.shared_batch_order { SHARED_LANE } else { index as u64 };
        let batches = BatchOrder::new(n, config.batch_size, stream(config.seed, lane, Purpose::Data));
        // The same stream again: the first minibatches the chain will see.
        let mut probe = BatchOrder::new(n, config.batch_size, stream(config.seed, lane, Purpose::Data));
        let mut sum = 0.0;
        for _ in 0..config.num_init_loss_batches {
            sum += model.loss(w_star, probe.next_batch())?;
        }
        let init_loss = sum / config.num_init_loss_batches as f64;
        if !init_loss.is_finite() {
            return Err(Error::NonFinite {
                what: "init_loss (minibatch loss at w*)".into(),
                row: index,
                col: 0,
                value: init_loss,
            });
        }
        let mut noise = stream(config.seed, index as u64, Purpose::Noise);
        let (state, prev_g, thermostat) = match params.sampler() {
            Sampler::Sgld => (Vec::new(), Vec::new(), 0.0),
            Sampler::RmspropSgld { .. } => (vec![0.0; d], vec![0.0; d], 0.0),
            Sampler::Sgnht { diffusion } => {
                let s = (params.lr()).sqrt() * params.noise_level();
                let v = (0..d)
                    .map(|_| {
                        let xi: f64 = StandardNormal.sample(&mut noise);
                        s * xi
                    })
                    .collect::<Vec<f64>>();
                (v, Vec::new(), diffusion)
            }
        };
        Ok(Chain {
            model,
            params,
            index,
            w: w_star.to_vec(),
            w_star: w_star.to_vec(),
            grad: vec![0.0; d],
            drift: vec![0.0; d],
            xi: vec![0.0; d],
            prev_w: vec![0.0; d],
            prev_drift: vec![0.0; d],
            state,
            prev_g,
            prev_u: 0.0,
            thermostat,
            noise,
            batches,
            init_loss,
            step: 0,
            divergence: None,
        })
    }

    /// This chain's index.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Mean minibatch loss at w* over the first `num_init_loss_batches` batches of this chain.
    pub fn init_loss(&self) -> f64 {
        self.init_loss
    }

    /// The current parameters w_t.
    pub fn params(&self) -> &[f64] {
        &self.w
    }

    /// Steps taken so far.
    pub fn steps_taken(&self) -> usize {
        self.step
    }

    /// The SGNHT thermostat α (0 for the other samplers).
    pub fn thermostat(&self) -> f64 {
        self.thermostat
    }

    /// Set once the chain has diverged; further steps are refused.
    pub fn divergence(&self) -> Option<Divergence> {
        self.divergence
    }

    /// One step (see the type's documentation). A non-finite loss, gradient or update marks the
    /// chain as diverged (see [`Chain::divergence`]) and the returned record carries the loss;
    /// the update is not applied when the loss or gradient is non-finite. Errors if the model
    /// errors or if the chain has already diverged.
    pub fn step(&mut self) -> Result<StepRecord> {
        if let Some(d) = self.divergence {
            return Err(Error::invalid("chain", self.index, format!("diverged at step {}; no further steps", d.step)));
        }
        let t = self.step;
        let p = self.params;
        let (eps, nbeta, gamma, wd, sigma) = (p.lr(), p.nbeta(), p.localization(), p.weight_decay(), p.noise_level());
        let batch = self.batches.next_batch();
        let loss = self.model.loss_and_grad(&self.w, batch, &mut self.grad)?;
        let mut rec = StepRecord { loss, grad_norm: 0.0, noise_norm: 0.0, distance: 0.0, mala_acceptance: None };
        if !loss.is_finite() {
            self.divergence = Some(Divergence { step: t, cause: DivergenceCause::NonFiniteLoss { value: loss } });
            return Ok(rec);
        }

        // One pass: ∇U, distance, norms, the MALA sums against w_{t−1}, and w_t saved.
        let is_sgnht = matches!(p.sampler(), Sampler::Sgnht { .. });
        let half = 0.5 * eps;
        let coef = Coefficients { nbeta, gamma, wd, half };
        let bufs = Buffers {
            w: &self.w,
            grad: &self.grad,
            w_star: &self.w_star,
            drift: &mut self.drift,
            prev_w: &mut self.prev_w,
            prev_drift: &self.prev_drift,
            // RMSprop: the G that made the last proposal; SGLD: unused (any slice of length d).
            prev_g: if self.prev_g.is_empty() { &self.w_star } else { &self.prev_g },
        };
        let mala = t > 0 && !is_sgnht;
        let pre = !self.prev_g.is_empty();
        let sums = match (is_sgnht, mala, pre) {
            (true, _, _) => fused_pass::<false, false, false>(bufs, coef),
            (false, false, _) => fused_pass::<false, true, false>(bufs, coef),
            (false, true, false) => fused_pass::<true, true, false>(bufs, coef),
            (false, true, true) => fused_pass::<true, true, true>(bufs, coef),
        };
        rec.distance = sums.dist2.sqrt();
        if !sums.gnorm2.is_finite() {
            self.divergence = Some(Divergence { step: t, cause: DivergenceCause::NonFiniteGradient });
            return Ok(rec);
        }
        let gnorm2 = sums.gnorm2;
        let u = nbeta * loss + 0.5 * gamma * sums.dist2 + 0.5 * wd * sums.wnorm2;
        if mala {
            let log_ratio = (sums.fwd - sums.bwd) / (2.0 * eps) + self.prev_u - u;
            rec.mala_acceptance = Some(if log_ratio >= 0.0 { 1.0 } else { log_ratio.exp() });
        }
        if !is_sgnht {
            std::mem::swap(&mut self.drift, &mut self.prev_drift);
            self.prev_u = u;
        }
        // After the swap the current ∇U is in `prev_drift` for the Langevin samplers.
        let drift = if is_sgnht { &self.drift } else { &self.prev_drift };

        let sqrt_eps = eps.sqrt();
        let (mut drift2, mut noise2, mut check) = (0.0, 0.0, 0.0);
        // The noise first, in one tight loop (the update loops below then keep their
        // accumulators in registers), from a Xoshiro256++ keyed by 256 bits of the chain's
        // ChaCha8 noise stream: ~3.3 ns per normal instead of ~6 ns drawing from ChaCha8
        // directly, which matters at thousands of parameters (see `docs/llc.md`).
        let mut key = [0u8; 32];
        self.noise.fill_bytes(&mut key);
        let mut step_rng = Xoshiro256PlusPlus::from_seed(key);
        for x in self.xi.iter_mut() {
            *x = StandardNormal.sample(&mut step_rng);
        }
        let params = self.w.iter_mut().zip(drift).zip(&self.xi);
        match p.sampler() {
            Sampler::Sgld => {
                let s = sqrt_eps * sigma;
                for ((w, &dr), &xi) in params {
                    let b = s * xi;
                    noise2 += b * b;
                    *w += b - half * dr;
                    check += *w;
                }
                drift2 = (half * nbeta).powi(2) * gnorm2;
            }
            Sampler::RmspropSgld { alpha, eps: reg } => {
                let aux = self.state.iter_mut().zip(self.prev_g.iter_mut()).zip(&self.grad);
                for (((w, &dr), &xi), ((v, pre_out), &g)) in params.zip(aux) {
                    *v = alpha * *v + (1.0 - alpha) * g * g;
                    let pre = 1.0 / (v.sqrt() + reg);
                    *pre_out = pre;
                    let (a, b) = (half * pre * nbeta * g, sqrt_eps * sigma * pre.sqrt() * xi);
                    drift2 += a * a;
                    noise2 += b * b;
                    *w += b - half * pre * dr;
                    check += *w;
                }
            }
            Sampler::Sgnht { diffusion } => {
                let s = (2.0 * diffusion * eps).sqrt() * sigma;
                let keep = 1.0 - self.thermostat;
                let mut v2 = 0.0;
                for (((w, &dr), &xi), v) in params.zip(self.state.iter_mut()) {
                    let b = s * xi;
                    noise2 += b * b;
                    *v = keep * *v - eps * dr + b;
                    v2 += *v * *v;
                    *w += *v;
                    check += *w;
                }
                drift2 = (eps * nbeta).powi(2) * gnorm2;
                self.thermostat += v2 / self.w.len().max(1) as f64 - eps;
            }
        }
        if let Some(b) = p.bounding_box() {
            let sgnht = is_sgnht;
            for i in 0..self.w.len() {
                let (lo, hi) = (self.w_star[i] - b, self.w_star[i] + b);
                if sgnht && (self.w[i] <= lo || self.w[i] >= hi) {
                    self.state[i] = -self.state[i];
                }
                self.w[i] = self.w[i].clamp(lo, hi);
            }
        }
        rec.grad_norm = drift2.sqrt();
        rec.noise_norm = noise2.sqrt();
        self.step += 1;
        if !check.is_finite() || !self.thermostat.is_finite() {
            self.divergence = Some(Divergence { step: t, cause: DivergenceCause::NonFiniteParameters });
        }
        Ok(rec)
    }
}

#[derive(Clone, Copy)]
struct Coefficients {
    nbeta: f64,
    gamma: f64,
    wd: f64,
    half: f64,
}

struct Buffers<'a> {
    w: &'a [f64],
    grad: &'a [f64],
    w_star: &'a [f64],
    drift: &'a mut [f64],
    prev_w: &'a mut [f64],
    prev_drift: &'a [f64],
    prev_g: &'a [f64],
}

#[derive(Default)]
struct Sums {
    dist2: f64,
    gnorm2: f64,
    wnorm2: f64,
    fwd: f64,
    bwd: f64,
}

/// ∇U = nβ·g + γ(w − w*) + λ_wd·w into `drift`, ‖w − w*‖², ‖g‖², ‖w‖², and (if `MALA`) the
/// proposal sums ‖w_t − w_{t−1} + (ε/2)G∇U(w_{t−1})‖²_{G⁻¹} (forward) and
/// ‖w_{t−1} − w_t + (ε/2)G∇U(w_t)‖²_{G⁻¹} (backward), G = `prev_g` if `PRE` else 1; then (if
/// `SAVE`) w_t into `prev_w`. One pass over the coordinates.
#[inline(always)]
fn fused_pass<const MALA: bool, const SAVE: bool, const PRE: bool>(b: Buffers<'_>, c: Coefficients) -> Sums {
    let mut s = Sums::default();
    let it = b.drift.iter_mut().zip(b.w).zip(b.grad).zip(b.w_star);
    for ((((dr, &w), &g), &ws), ((pw, &pd), &pg)) in it.zip(b.prev_w.iter_mut().zip(b.prev_drift).zip(b.prev_g)) {
        let cw = w - ws;
        let d = c.nbeta * g + c.gamma * cw + c.wd * w;
        *dr = d;
        s.dist2 += cw * cw;
        s.gnorm2 += g * g;
        s.wnorm2 += w * w;
        if MALA {
            let dw = w - *pw;
            if PRE {
                let (f, bk) = (dw + c.half * pg * pd, -dw + c.half * pg * d);
                s.fwd += f * f / pg;
                s.bwd += bk * bk / pg;
            } else {
                let (f, bk) = (dw + c.half * pd, -dw + c.half * d);
                s.fwd += f * f;
                s.bwd += bk * bk;
            }
        }
        if SAVE {
            *pw = w;
        }
    }
    s
}
