//! The network core: layers, sections between node layers, the [`Network`] trait the
//! estimators consume, MLPs and sequences of boxed layers, losses and a small trainer.

mod activation;
mod layer;
mod linear;
mod loss;
mod mlp;
mod network;
mod section;
mod sequential;
mod train;

pub use activation::{Activation, Elementwise};
pub(crate) use layer::check_backward_shapes;
pub use layer::{Layer, LayerKind, Linearized};
pub use linear::Linear;
pub(crate) use loss::argmax;
pub use loss::{Loss, TargetsView, accuracy};
pub use mlp::{ForwardTrace, Mlp, OUTPUT_NODE};
pub use network::{Network, NodeLayer};
pub(crate) use network::{check_nodes, checked_section};
pub use section::{Chain, FoldedLinear, NodeShape, ResidualLayer, Section};
pub use sequential::{NodeSpec, Sequential};
pub use train::{Optimizer, TrainConfig, TrainReport, evaluate, train, train_observed, train_with};
