//! One sampling chain: the SGLD / RMSprop-SGLD / SGNHT update with its per-step diagnostics.

use super::config::{InitLoss, LlcConfig, Sampler, SgldParams};
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
/// * SGNHT: v ← (1 − α)v − ε∇U + √(2Aε)·σ·ξ, w ← w + v, α ← α + ‖v‖²/k − ε
///   (v₀ = √ε·σ·N(0, I), α₀ = A);
///
/// then clamps to the box [w* − b, w* + b] if one is set (SGNHT also reverses the momentum of
/// every clamped coordinate).
///
/// **Restricted chains** (an estimator with [`super::LlcEstimator::restrict`]) move only the k
/// sampled coordinates; the others stay at w*. The model's backward pass still computes the
/// whole gradient, but the update, the noise (k normals) and the diagnostics touch k
/// coordinates, so a restricted step costs no more than a full one.
///
/// The MALA diagnostic treats each Langevin step as a proposal. With noise σ the step is exactly
/// the Langevin proposal, at step εσ², for the target π_σ ∝ exp(−U/σ²) (σ = 1: the posterior;
/// otherwise the posterior at temperature σ²), with U(w) = nβ·L_B(w) + (γ/2)‖w − w*‖² +
/// (λ_wd/2)‖w‖² and log q(x | y) = −‖x − y + (ε/2)G⊙∇U(y)‖²_{G⁻¹} / (2εσ²). The acceptance is
/// α = min(1, exp(log q(w_{t−1} | w_t) − log q(w_t | w_{t−1}) + (U(w_{t−1}) − U(w_t))/σ²)), where
/// U(w_t), ∇U(w_t) come from B_t and U(w_{t−1}), ∇U(w_{t−1}) from B_{t−1} (devinterp 1.x's
/// `MalaAcceptanceRate` does the same at σ = 1; with full batches it is exact MALA). It thus
/// measures the discretisation error of what the chain samples, and tends to 1 as ε → 0 for
/// every σ > 0. For RMSprop-SGLD, G is the preconditioner that made the proposal; SGNHT and
/// σ = 0 have none.
///
/// Noise: each step keys a Xoshiro256++ with 256 bits of the chain's ChaCha8 noise stream and
/// draws its k normals from it (ziggurat), twice as fast as drawing them from ChaCha8 directly.
///
/// A chain owns its model clone, parameter buffers and random streams, so it is independent
/// of every other chain and of the thread running it. No step allocates (after the model's
/// first call).
#[derive(Debug)]
pub struct Chain<M> {
    model: M,
    params: SgldParams,
    index: usize,
    /// The full parameter vector handed to the model (inactive coordinates stay at w*).
    w: Vec<f64>,
    w_star: Vec<f64>,
    grad: Vec<f64>,
    /// The sampled coordinates (increasing), `None` = all of them.
    active: Option<Vec<usize>>,
    /// Restricted chains: w, w* and the gradient at the sampled coordinates (empty otherwise).
    w_active: Vec<f64>,
    w_star_active: Vec<f64>,
    grad_active: Vec<f64>,
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
    /// Chain `index` of a run configured by `config` with checked sampler parameters `params`,
    /// moving the coordinates `active` (increasing, in range; `None` = all). Computes
    /// `init_loss` as `config.init_loss` says. Callers have checked shapes and indices (see
    /// [`super::LlcEstimator::chain`]).
    pub(crate) fn new(
        mut model: M,
        w_star: &[f64],
        params: SgldParams,
        config: &LlcConfig,
        index: usize,
        active: Option<&[usize]>,
    ) -> Result<Self> {
        let n = model.n_samples();
        let lane = if config.shared_batch_order { SHARED_LANE } else { index as u64 };
        let batches = BatchOrder::new(n, config.batch_size, stream(config.seed, lane, Purpose::Data));
        let init_loss = match config.init_loss {
            InitLoss::PerChain => {
                // The same stream again: the first minibatches the chain will see.
                let mut probe = BatchOrder::new(n, config.batch_size, stream(config.seed, lane, Purpose::Data));
                let mut sum = 0.0;
                for _ in 0..config.num_init_loss_batches {
                    sum += model.loss(w_star, probe.next_batch())?;
                }
                sum / config.num_init_loss_batches as f64
            }
            InitLoss::Shared => {
                // One pass of the shared order, at most one epoch, one batch per chain.
                let count = config.num_chains.min(n / config.batch_size).max(1);
                let mut probe = BatchOrder::new(n, config.batch_size, stream(config.seed, SHARED_LANE, Purpose::Data));
                let mut sum = 0.0;
                for _ in 0..count {
                    sum += model.loss(w_star, probe.next_batch())?;
                }
                sum / count as f64
            }
        };
        if !init_loss.is_finite() {
            return Err(Error::NonFinite {
                what: "init_loss (minibatch loss at w*)".into(),
                row: index,
                col: 0,
                value: init_loss,
            });
        }
        let active = active.map(<[usize]>::to_vec);
        let gather = |v: &[f64]| active.as_ref().map_or_else(Vec::new, |a| a.iter().map(|&i| v[i]).collect());
        let (w_active, w_star_active) = (gather(w_star), gather(w_star));
        let k = active.as_ref().map_or(w_star.len(), Vec::len);
        let mut noise = stream(config.seed, index as u64, Purpose::Noise);
        let (state, prev_g, thermostat) = match params.sampler() {
            Sampler::Sgld => (Vec::new(), Vec::new(), 0.0),
            Sampler::RmspropSgld { .. } => (vec![0.0; k], vec![0.0; k], 0.0),
            Sampler::Sgnht { diffusion } => {
                let s = (params.lr()).sqrt() * params.noise_level();
                let v = (0..k)
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
            grad: vec![0.0; w_star.len()],
            grad_active: vec![0.0; if active.is_some() { k } else { 0 }],
            active,
            w_active,
            w_star_active,
            drift: vec![0.0; k],
            xi: vec![0.0; k],
            prev_w: vec![0.0; k],
            prev_drift: vec![0.0; k],
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

    /// Mean minibatch loss at w* (see [`InitLoss`] for which minibatches).
    pub fn init_loss(&self) -> f64 {
        self.init_loss
    }

    /// The current parameters w_t (all of them; unsampled coordinates are at w*).
    pub fn params(&self) -> &[f64] {
        &self.w
    }

    /// The sampled coordinates, `None` if the chain moves all of them.
    pub fn active(&self) -> Option<&[usize]> {
        self.active.as_deref()
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
        let Chain {
            model,
            w: w_full,
            w_star: w_star_full,
            grad: grad_full,
            active,
            w_active,
            w_star_active,
            grad_active,
            drift,
            xi,
            prev_w,
            prev_drift,
            state,
            prev_g,
            prev_u,
            thermostat,
            noise,
            batches,
            step,
            divergence,
            ..
        } = self;
        let batch = batches.next_batch();
        let loss = model.loss_and_grad(w_full, batch, grad_full)?;
        let mut rec = StepRecord { loss, grad_norm: 0.0, noise_norm: 0.0, distance: 0.0, mala_acceptance: None };
        if !loss.is_finite() {
            *divergence = Some(Divergence { step: t, cause: DivergenceCause::NonFiniteLoss { value: loss } });
            return Ok(rec);
        }
        // The sampled coordinates: the whole vectors, or compact copies of the active ones.
        let (w, grad, w_star): (&mut [f64], &[f64], &[f64]) = match active {
            None => (w_full, grad_full, w_star_full),
            Some(idx) => {
                for (g, &i) in grad_active.iter_mut().zip(idx.iter()) {
                    *g = grad_full[i];
                }
                (w_active, grad_active, w_star_active)
            }
        };

        // One pass: ∇U, distance, norms, the MALA sums against w_{t−1}, and w_t saved.
        let is_sgnht = matches!(p.sampler(), Sampler::Sgnht { .. });
        let half = 0.5 * eps;
        let coef = Coefficients { nbeta, gamma, wd, half };
        let pre = !prev_g.is_empty();
        let bufs = Buffers {
            w: &*w,
            grad,
            w_star,
            drift: &mut drift[..],
            prev_w: &mut prev_w[..],
            prev_drift: &prev_drift[..],
            // RMSprop: the G that made the last proposal; SGLD: unused (any slice of length k).
            prev_g: if pre { &prev_g[..] } else { w_star },
        };
        let mala = t > 0 && !is_sgnht && sigma > 0.0;
        let sums = match (is_sgnht, mala, pre) {
            (true, _, _) => fused_pass::<false, false, false>(bufs, coef),
            (false, false, _) => fused_pass::<false, true, false>(bufs, coef),
            (false, true, false) => fused_pass::<true, true, false>(bufs, coef),
            (false, true, true) => fused_pass::<true, true, true>(bufs, coef),
        };
        rec.distance = sums.dist2.sqrt();
        if !sums.gnorm2.is_finite() {
            *divergence = Some(Divergence { step: t, cause: DivergenceCause::NonFiniteGradient });
            return Ok(rec);
        }
        let gnorm2 = sums.gnorm2;
        let u = nbeta * loss + 0.5 * gamma * sums.dist2 + 0.5 * wd * sums.wnorm2;
        if mala {
            // The proposal's variance is εσ² and the target exp(−U/σ²).
            let log_ratio = ((sums.fwd - sums.bwd) / (2.0 * eps) + *prev_u - u) / (sigma * sigma);
            rec.mala_acceptance = Some(if log_ratio >= 0.0 { 1.0 } else { log_ratio.exp() });
        }
        if !is_sgnht {
            std::mem::swap(drift, prev_drift);
            *prev_u = u;
        }
        // After the swap the current ∇U is in `prev_drift` for the Langevin samplers.
        let drift: &[f64] = if is_sgnht { &drift[..] } else { &prev_drift[..] };

        let sqrt_eps = eps.sqrt();
        let (mut drift2, mut noise2, mut check) = (0.0, 0.0, 0.0);
        // The noise first, in one tight loop (the update loops below then keep their
        // accumulators in registers), from a Xoshiro256++ keyed by 256 bits of the chain's
        // ChaCha8 noise stream: ~3.3 ns per normal instead of ~6 ns drawing from ChaCha8
        // directly, which matters at thousands of parameters (see `docs/llc.md`).
        let mut key = [0u8; 32];
        noise.fill_bytes(&mut key);
        let mut step_rng = Xoshiro256PlusPlus::from_seed(key);
        for x in xi.iter_mut() {
            *x = StandardNormal.sample(&mut step_rng);
        }
        let k = w.len();
        let params = w.iter_mut().zip(drift).zip(xi.iter());
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
                let aux = state.iter_mut().zip(prev_g.iter_mut()).zip(grad);
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
                let keep = 1.0 - *thermostat;
                let mut v2 = 0.0;
                for (((w, &dr), &xi), v) in params.zip(state.iter_mut()) {
                    let b = s * xi;
                    noise2 += b * b;
                    *v = keep * *v - eps * dr + b;
                    v2 += *v * *v;
                    *w += *v;
                    check += *w;
                }
                drift2 = (eps * nbeta).powi(2) * gnorm2;
                *thermostat += v2 / k.max(1) as f64 - eps;
            }
        }
        if let Some(b) = p.bounding_box() {
            for i in 0..k {
                let (lo, hi) = (w_star[i] - b, w_star[i] + b);
                if is_sgnht && (w[i] <= lo || w[i] >= hi) {
                    state[i] = -state[i];
                }
                w[i] = w[i].clamp(lo, hi);
            }
        }
        if let Some(idx) = active {
            for (&v, &i) in w_active.iter().zip(idx.iter()) {
                w_full[i] = v;
            }
        }
        rec.grad_norm = drift2.sqrt();
        rec.noise_norm = noise2.sqrt();
        *step += 1;
        if !check.is_finite() || !thermostat.is_finite() {
            *divergence = Some(Divergence { step: t, cause: DivergenceCause::NonFiniteParameters });
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
