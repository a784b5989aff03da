//! Core of nmfre: non-negative matrix factorisation with random effects
//! (NMF-RE), `Y = X (Theta A + U) + E`, estimated by alternating ridge and
//! multiplicative updates with a cap on the random effects' degrees of
//! freedom, and inference on Theta without re-optimisation.
//!
//! Method: K. Satoh (2026), "Wild Bootstrap Inference for Non-Negative Matrix
//! Factorization with Random Effects", arXiv:2603.01468.
//!
//! All matrices are column-major, as R stores them. This crate has no R
//! dependency; the bridge crate converts R objects.

mod accelerate;
mod columns;
pub mod dense;
pub mod dfcap;
pub mod error;
pub mod fit;
pub mod inference;
pub mod init;
pub mod linalg;
pub mod multistart;
pub mod scan;
pub mod simulate;

pub use dense::Dense;
pub use dfcap::CapRule;
pub use error::{NmfreError, Result};
pub use fit::{
    fit, fit_from_start, start_values, Data, Fit, FitOptions, StartSummary, StartValues, StopReason, ThetaMode,
};
pub use inference::{infer, BootstrapOptions, Conditioning, Inference, InferenceOptions, InformationRule, Sigma2Rule, WeightKind};
pub use scan::scan_rates;
pub use simulate::{simulate, Distribution, Simulation, SimulationOptions};
