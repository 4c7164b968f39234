//! File formats: `.npy` arrays and safetensors weights.

mod npy;
mod safetensors;
mod tensors;

pub(crate) use self::safetensors::write_f64_tensors;
pub use self::safetensors::{LoadOptions, TensorNaming, load_mlp, load_mlp_with, save_mlp};
pub use self::tensors::TensorFile;
pub use npy::{
    NpyArray, NpyData, NpyRowReader, read_labels, read_matrix, read_npy, read_vector, write_ints, write_matrix,
    write_vector,
};
