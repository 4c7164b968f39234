//! Hyper-parameters: the sampler ([`SgldConfig`] → checked [`SgldParams`]) and the estimator
//! ([`LlcConfig`]), validated into typed errors before any sampling.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// Which stochastic-gradient MCMC update a chain uses. Formulas in [`super::Chain`] and
/// `docs/llc.md`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "method")]
pub enum Sampler {
    /// SGLD in devinterp's convention (`sgmcmc_sgld`):
    /// w ← w − (ε/2)(nβ g + γ(w − w*) + λ_wd w) + √ε σ ξ.
    Sgld,
    /// RMSprop-preconditioned SGLD as devinterp 2.0.1 has it (`rmsprop_sgld`, no Γ correction):
    /// V ← αV + (1 − α) g², G = 1/(√V + eps), w ← w − (ε/2) G(nβ g + γ(w − w*) + λ_wd w) + √ε √G σ ξ.
    RmspropSgld {
        /// Decay α of the squared-gradient average (devinterp: 0.99).
        alpha: f64,
        /// Offset in the preconditioner's denominator (devinterp: 0.1).
        eps: f64,
    },
    /// Stochastic-gradient Nosé–Hoover thermostat (Ding et al. 2014), with the localising
    /// prior, in the (ε = h², v = h·p, α = h·ξ) parameterisation: v ← (1 − α)v − ε∇U +
    /// √(2Aε) σ ξ, w ← w + v, α ← α + ‖v‖²/d − ε.
    Sgnht {
        /// Diffusion constant A (also the thermostat's start value; devinterp: 0.01).
        diffusion: f64,
    },
}

impl Sampler {
    /// RMSprop-SGLD with devinterp's defaults (α = 0.99, eps = 0.1).
    pub fn rmsprop_sgld() -> Self {
        Sampler::RmspropSgld { alpha: 0.99, eps: 0.1 }
    }

    /// SGNHT with devinterp's default diffusion A = 0.01.
    pub fn sgnht() -> Self {
        Sampler::Sgnht { diffusion: 0.01 }
    }

    /// Parses `sgld` (also devinterp's `sgmcmc_sgld`), `rmsprop_sgld` or `sgnht`, with default
    /// sampler constants.
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "sgld" | "sgmcmc_sgld" => Ok(Sampler::Sgld),
            "rmsprop_sgld" => Ok(Self::rmsprop_sgld()),
            "sgnht" => Ok(Self::sgnht()),
            _ => Err(Error::invalid("sampler", name, "expected sgld, rmsprop_sgld or sgnht")),
        }
    }

    /// The canonical name.
    pub fn name(&self) -> &'static str {
        match self {
            Sampler::Sgld => "sgld",
            Sampler::RmspropSgld { .. } => "rmsprop_sgld",
            Sampler::Sgnht { .. } => "sgnht",
        }
    }

    fn check(&self) -> Result<()> {
        match *self {
            Sampler::Sgld => Ok(()),
            Sampler::RmspropSgld { alpha, eps } => {
                if !(0.0..1.0).contains(&alpha) {
                    return Err(Error::invalid("rmsprop alpha", alpha, "must lie in [0, 1)"));
                }
                positive("rmsprop eps", eps)
            }
            Sampler::Sgnht { diffusion } => positive("sgnht diffusion", diffusion),
        }
    }
}

fn positive(name: &str, v: f64) -> Result<()> {
    if v > 0.0 && v.is_finite() { Ok(()) } else { Err(Error::invalid(name, v, "must be positive and finite")) }
}

fn non_negative(name: &str, v: f64) -> Result<()> {
    if v >= 0.0 && v.is_finite() { Ok(()) } else { Err(Error::invalid(name, v, "must be non-negative and finite")) }
}

/// The sampler's hyper-parameters as given (unchecked); [`SgldConfig::validate`] turns them into
/// [`SgldParams`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SgldConfig {
    /// The update rule.
    pub sampler: Sampler,
    /// Step size ε (devinterp `lr`), > 0.
    pub lr: f64,
    /// Localisation strength γ ≥ 0 of the prior (γ/2)‖w − w*‖².
    pub localization: f64,
    /// nβ, the inverse temperature times n; `None` = n / ln n (Lau et al.'s β* = 1/ln n).
    pub nbeta: Option<f64>,
    /// Weight decay λ_wd ≥ 0 (a Gaussian prior centred at 0).
    pub weight_decay: f64,
    /// Noise multiplier σ ≥ 0 (1 samples the posterior; anything else does not).
    pub noise_level: f64,
    /// Clamp every coordinate to `[w* − b, w* + b]` after each step.
    pub bounding_box: Option<f64>,
}

impl SgldConfig {
    /// SGLD with step size `lr`, γ = 1, nβ = n/ln n, no weight decay, σ = 1, no box.
    pub fn new(lr: f64) -> Self {
        SgldConfig {
            sampler: Sampler::Sgld,
            lr,
            localization: 1.0,
            nbeta: None,
            weight_decay: 0.0,
            noise_level: 1.0,
            bounding_box: None,
        }
    }

    /// Checks every value that does not depend on the data.
    pub fn check(&self) -> Result<()> {
        self.sampler.check()?;
        positive("lr", self.lr)?;
        non_negative("localization", self.localization)?;
        if let Some(nb) = self.nbeta {
            positive("nbeta", nb)?;
        }
        non_negative("weight_decay", self.weight_decay)?;
        non_negative("noise_level", self.noise_level)?;
        if let Some(b) = self.bounding_box {
            positive("bounding_box", b)?;
        }
        Ok(())
    }

    /// The checked parameters for a data set of `n_samples` samples (resolves the default nβ).
    ///
    /// ```
    /// use degeneracy::llc::SgldConfig;
    /// let p = SgldConfig::new(1e-4).validate(10_000)?;
    /// assert!((p.nbeta() - 10_000.0 / 10_000f64.ln()).abs() < 1e-9);
    /// assert!(SgldConfig::new(0.0).validate(100).is_err());
    /// # Ok::<(), degeneracy::Error>(())
    /// ```
    pub fn validate(&self, n_samples: usize) -> Result<SgldParams> {
        self.check()?;
        let (nbeta, nbeta_is_default) = match self.nbeta {
            Some(nb) => (nb, false),
            None => (default_nbeta(n_samples)?, true),
        };
        Ok(SgldParams {
            sampler: self.sampler,
            lr: self.lr,
            localization: self.localization,
            nbeta,
            nbeta_is_default,
            weight_decay: self.weight_decay,
            noise_level: self.noise_level,
            bounding_box: self.bounding_box,
        })
    }
}

/// nβ = n / ln n (Lau et al.'s β* = 1/ln n); errors for n < 2. Unlike devinterp's
/// `default_nbeta`, `n` is the number of samples, not the batch size.
pub fn default_nbeta(n_samples: usize) -> Result<f64> {
    if n_samples < 2 {
        return Err(Error::invalid(
            "nbeta",
            "n / ln n",
            format!("undefined for n = {n_samples}; set nbeta explicitly"),
        ));
    }
    let n = n_samples as f64;
    Ok(n / n.ln())
}

/// Checked sampler hyper-parameters (made by [`SgldConfig::validate`]); nβ is resolved.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SgldParams {
    sampler: Sampler,
    lr: f64,
    localization: f64,
    nbeta: f64,
    nbeta_is_default: bool,
    weight_decay: f64,
    noise_level: f64,
    bounding_box: Option<f64>,
}

impl SgldParams {
    /// The update rule.
    pub fn sampler(&self) -> Sampler {
        self.sampler
    }
    /// Step size ε.
    pub fn lr(&self) -> f64 {
        self.lr
    }
    /// Localisation γ.
    pub fn localization(&self) -> f64 {
        self.localization
    }
    /// The nβ used.
    pub fn nbeta(&self) -> f64 {
        self.nbeta
    }
    /// Whether nβ is the default n / ln n (rather than given).
    pub fn nbeta_is_default(&self) -> bool {
        self.nbeta_is_default
    }
    /// Weight decay λ_wd.
    pub fn weight_decay(&self) -> f64 {
        self.weight_decay
    }
    /// Noise multiplier σ.
    pub fn noise_level(&self) -> f64 {
        self.noise_level
    }
    /// Half-width of the box around w*, if any.
    pub fn bounding_box(&self) -> Option<f64> {
        self.bounding_box
    }
}

/// Where the default nβ (when [`SgldConfig::nbeta`] is `None`) comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NbetaDefault {
    /// n / ln n with n the number of samples the loss is defined on (Lau et al.'s
    /// β* = 1/ln n). This crate's default: λ̂ then does not change when only the batch size does.
    #[default]
    SampleCount,
    /// b / ln b with b the batch size, and 1 when b ≤ 1 (devinterp's `default_nbeta(dataloader)`).
    BatchSize,
}

/// Which standard deviation over chains `llc_std` (and `llc_draws_std`) reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChainStd {
    /// Population std, ddof 0 (devinterp 2.0.1's xarray `std`). This crate's default, so that
    /// `llc_std` is comparable with devinterp 2.0.1's outputs and the `llc_dln` fixture.
    #[default]
    Population,
    /// Sample std, ddof 1 (devinterp 1.x's `LLCEstimator`, torch's `std()`, which its own
    /// tests use); NaN with a single healthy chain.
    Sample,
}

impl ChainStd {
    /// The delta degrees of freedom: 0 or 1.
    pub fn ddof(self) -> usize {
        match self {
            ChainStd::Population => 0,
            ChainStd::Sample => 1,
        }
    }
}

/// How `init_loss` L̂₀, the loss at w* that λ̂ subtracts, is averaged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InitLoss {
    /// Every chain averages its loss at w* over the first `num_init_loss_batches` minibatches
    /// *it will see*; L̂₀ is the mean over chains (devinterp 2.0.1). This crate's default.
    #[default]
    PerChain,
    /// One value for every chain: the mean over the first min(`num_chains`, ⌊n / b⌋)
    /// minibatches of one pass of the shared batch order, i.e. never more than one epoch
    /// (devinterp 1.x's `get_init_loss_multi_batch(loader, num_chains)`, which its tests call).
    /// `num_init_loss_batches` is not used.
    Shared,
}

/// Everything an LLC estimate is configured by. Build with [`LlcConfig::new`] and the chained
/// setters; [`super::LlcEstimator::new`] validates.
///
/// Defaults follow devinterp 2.0.1's `sample()` except where noted: 4 chains, 200 draws, batch
/// 32, no burn-in, 1 step between draws, 32 init-loss batches, seed 100, batches shared across
/// chains; γ = 1 (devinterp: 0, i.e. no localisation) and nβ = n/ln n (devinterp: required, its
/// `default_nbeta` takes the batch size). [`LlcConfig::devinterp_compatible`] switches to
/// devinterp's conventions.
///
/// ```
/// use degeneracy::llc::{LlcConfig, Sampler};
/// let c = LlcConfig::new(1e-4).localization(1.0).batch_size(500).num_draws(2000).sampler(Sampler::Sgld);
/// assert_eq!(c.total_steps(), Some(2000));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlcConfig {
    /// The sampler's hyper-parameters.
    pub sgld: SgldConfig,
    /// Minibatch size m (≤ n). Batches are drawn without replacement within an epoch; the last
    /// incomplete batch of an epoch is dropped (devinterp's `drop_last=True`).
    pub batch_size: usize,
    /// Number of independent chains C.
    pub num_chains: usize,
    /// Draws per chain.
    pub num_draws: usize,
    /// Steps before the first draw.
    pub num_burnin_steps: usize,
    /// Steps between draws (thinning), ≥ 1.
    pub num_steps_bw_draws: usize,
    /// Minibatches averaged for `init_loss` (the loss at w*), ≥ 1.
    pub num_init_loss_batches: usize,
    /// Seed of every random stream.
    pub seed: u64,
    /// All chains see the same minibatch sequence (devinterp's
    /// `match_sampling_input_ids_across_chains`, default true); otherwise each chain has its own.
    pub shared_batch_order: bool,
    /// Where the default nβ comes from (used when `sgld.nbeta` is `None`).
    #[serde(default)]
    pub nbeta_default: NbetaDefault,
    /// Population (ddof 0) or sample (ddof 1) std over chains.
    #[serde(default)]
    pub chain_std: ChainStd,
    /// How `init_loss` is averaged.
    #[serde(default)]
    pub init_loss: InitLoss,
}

impl LlcConfig {
    /// SGLD with step size `lr` and the defaults above.
    pub fn new(lr: f64) -> Self {
        LlcConfig {
            sgld: SgldConfig::new(lr),
            batch_size: 32,
            num_chains: 4,
            num_draws: 200,
            num_burnin_steps: 0,
            num_steps_bw_draws: 1,
            num_init_loss_batches: 32,
            seed: 100,
            shared_batch_order: true,
            nbeta_default: NbetaDefault::SampleCount,
            chain_std: ChainStd::Population,
            init_loss: InitLoss::PerChain,
        }
    }

    /// devinterp's conventions, for reproducing numbers computed with it (its own tests, its
    /// users' notebooks): localisation γ = 0, nβ = b / ln b from the batch size (unless set
    /// with [`LlcConfig::nbeta`]), `llc_std` with ddof 1, and one `init_loss` for every chain
    /// averaged over at most one epoch ([`InitLoss::Shared`]). Everything else is unchanged;
    /// setters called afterwards override it. `docs/llc.md` puts these next to this crate's
    /// defaults with the reason for each.
    ///
    /// ```
    /// use degeneracy::llc::{ChainStd, InitLoss, LlcConfig, NbetaDefault};
    /// let c = LlcConfig::new(6e-4).batch_size(1000).devinterp_compatible();
    /// assert_eq!(c.sgld.localization, 0.0);
    /// assert_eq!(c.nbeta_default, NbetaDefault::BatchSize);
    /// assert_eq!((c.chain_std, c.init_loss), (ChainStd::Sample, InitLoss::Shared));
    /// // An explicit γ after the preset wins (devinterp's RRR test passes localization = 1).
    /// assert_eq!(c.localization(1.0).sgld.localization, 1.0);
    /// ```
    pub fn devinterp_compatible(mut self) -> Self {
        self.sgld.localization = 0.0;
        self.nbeta_default = NbetaDefault::BatchSize;
        self.chain_std = ChainStd::Sample;
        self.init_loss = InitLoss::Shared;
        self
    }

    /// Sets where the default nβ comes from.
    pub fn nbeta_default(mut self, rule: NbetaDefault) -> Self {
        self.nbeta_default = rule;
        self
    }
    /// Sets the std over chains (ddof 0 or 1).
    pub fn chain_std(mut self, std: ChainStd) -> Self {
        self.chain_std = std;
        self
    }
    /// Sets how `init_loss` is averaged.
    pub fn init_loss(mut self, rule: InitLoss) -> Self {
        self.init_loss = rule;
        self
    }

    /// The checked sampler parameters for a loss over `n_samples` samples: [`SgldConfig::validate`]
    /// with the default nβ taken from [`LlcConfig::nbeta_default`].
    pub fn sgld_params(&self, n_samples: usize) -> Result<SgldParams> {
        match (self.sgld.nbeta, self.nbeta_default) {
            (None, NbetaDefault::BatchSize) => {
                let b = self.batch_size as f64;
                let nbeta = if self.batch_size <= 1 { 1.0 } else { b / b.ln() };
                let mut p = SgldConfig { nbeta: Some(nbeta), ..self.sgld }.validate(n_samples)?;
                p.nbeta_is_default = true;
                Ok(p)
            }
            _ => self.sgld.validate(n_samples),
        }
    }

    /// Sets the update rule.
    pub fn sampler(mut self, sampler: Sampler) -> Self {
        self.sgld.sampler = sampler;
        self
    }
    /// Sets the step size ε.
    pub fn lr(mut self, lr: f64) -> Self {
        self.sgld.lr = lr;
        self
    }
    /// Sets the localisation γ.
    pub fn localization(mut self, gamma: f64) -> Self {
        self.sgld.localization = gamma;
        self
    }
    /// Sets nβ explicitly.
    pub fn nbeta(mut self, nbeta: f64) -> Self {
        self.sgld.nbeta = Some(nbeta);
        self
    }
    /// Sets the weight decay λ_wd.
    pub fn weight_decay(mut self, wd: f64) -> Self {
        self.sgld.weight_decay = wd;
        self
    }
    /// Sets the noise multiplier σ.
    pub fn noise_level(mut self, sigma: f64) -> Self {
        self.sgld.noise_level = sigma;
        self
    }
    /// Sets the box half-width around w*.
    pub fn bounding_box(mut self, b: f64) -> Self {
        self.sgld.bounding_box = Some(b);
        self
    }
    /// Sets the minibatch size.
    pub fn batch_size(mut self, m: usize) -> Self {
        self.batch_size = m;
        self
    }
    /// Sets the number of chains.
    pub fn num_chains(mut self, c: usize) -> Self {
        self.num_chains = c;
        self
    }
    /// Sets the draws per chain.
    pub fn num_draws(mut self, k: usize) -> Self {
        self.num_draws = k;
        self
    }
    /// Sets the burn-in steps.
    pub fn num_burnin_steps(mut self, b: usize) -> Self {
        self.num_burnin_steps = b;
        self
    }
    /// Sets the steps between draws.
    pub fn num_steps_bw_draws(mut self, s: usize) -> Self {
        self.num_steps_bw_draws = s;
        self
    }
    /// Sets the number of init-loss minibatches.
    pub fn num_init_loss_batches(mut self, k: usize) -> Self {
        self.num_init_loss_batches = k;
        self
    }
    /// Sets the seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
    /// Sets whether chains share one minibatch sequence.
    pub fn shared_batch_order(mut self, shared: bool) -> Self {
        self.shared_batch_order = shared;
        self
    }

    /// The most chains of one run (each keeps its traces until the report is built).
    pub const MAX_CHAINS: usize = 1 << 16;
    /// The most steps of one chain, burn-in included (2³⁰ ≈ 10⁹: about a day of the cheapest
    /// step measured, and 40 GiB of traces per chain).
    pub const MAX_STEPS: usize = 1 << 30;
    /// The most minibatches averaged for `init_loss`.
    pub const MAX_INIT_LOSS_BATCHES: usize = 1 << 20;

    /// Steps per chain: `num_burnin_steps + num_draws · num_steps_bw_draws` (`None` on overflow).
    pub fn total_steps(&self) -> Option<usize> {
        self.num_draws.checked_mul(self.num_steps_bw_draws)?.checked_add(self.num_burnin_steps)
    }

    /// Checks every value that does not depend on the model: counts within their bounds ([`LlcConfig::MAX_CHAINS`], [`LlcConfig::MAX_STEPS`] for each step count and
    /// for their total, [`LlcConfig::MAX_INIT_LOSS_BATCHES`], [`crate::data::MAX_BATCH_SIZE`]),
    /// each error naming the key (the total names all three).
    ///
    /// ```
    /// use degeneracy::llc::LlcConfig;
    /// let c = LlcConfig::new(1e-4).num_draws(LlcConfig::MAX_STEPS).num_burnin_steps(1);
    /// assert!(c.check().unwrap_err().to_string().contains("num_burnin_steps + num_draws"));
    /// ```
    pub fn check(&self) -> Result<()> {
        self.sgld.check()?;
        crate::data::check_batch_size(self.batch_size)?;
        for (name, v, min, max) in [
            ("num_chains", self.num_chains, 1, Self::MAX_CHAINS),
            ("num_draws", self.num_draws, 1, Self::MAX_STEPS),
            ("num_burnin_steps", self.num_burnin_steps, 0, Self::MAX_STEPS),
            ("num_steps_bw_draws", self.num_steps_bw_draws, 1, Self::MAX_STEPS),
            ("num_init_loss_batches", self.num_init_loss_batches, 1, Self::MAX_INIT_LOSS_BATCHES),
        ] {
            if !(min..=max).contains(&v) {
                return Err(Error::invalid(name, v, format!("must lie in {min}..={max}")));
            }
        }
        if self.total_steps().is_none_or(|t| t > Self::MAX_STEPS) {
            return Err(Error::invalid(
                "num_burnin_steps + num_draws × num_steps_bw_draws",
                format!("{} + {} × {}", self.num_burnin_steps, self.num_draws, self.num_steps_bw_draws),
                format!("the steps per chain, at most {}", Self::MAX_STEPS),
            ));
        }
        Ok(())
    }
}
