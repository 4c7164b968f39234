//! The network core: layers, MLPs with named node layers, losses and a small trainer.

mod activation;
mod layer;
mod linear;
mod loss;
mod mlp;
mod section;
mod train;

pub use activation::{Activation, Elementwise};
pub use layer::Layer;
pub use linear::Linear;
pub(crate) use loss::argmax;
pub use loss::{Loss, TargetsView, accuracy};
pub use mlp::{ForwardTrace, Mlp, OUTPUT_NODE};
pub use section::{FoldedLinear, Section};
pub use train::{Optimizer, TrainConfig, TrainReport, evaluate, train, train_with};
