//! Typed errors of the core. The bridge turns each into an R error message.

use std::fmt;

/// Reasons a fit or an inference call cannot start or cannot finish.
#[derive(Debug, Clone, PartialEq)]
pub enum NmfreError {
    /// An argument has the wrong shape or an invalid value; the text names it.
    InvalidInput(String),
    /// A factorisation or solve failed on a matrix that should be positive definite.
    Numerical(String),
    /// The user interrupted the computation.
    Interrupted,
}

impl fmt::Display for NmfreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NmfreError::InvalidInput(text) => write!(f, "{text}"),
            NmfreError::Numerical(text) => write!(f, "numerical failure: {text}"),
            NmfreError::Interrupted => write!(f, "computation interrupted by the user"),
        }
    }
}

impl std::error::Error for NmfreError {}

pub type Result<T> = std::result::Result<T, NmfreError>;

/// Returns `InvalidInput` unless `matrix` has `rows` x `cols` entries.
pub fn check_shape(name: &str, len: usize, rows: usize, cols: usize) -> Result<()> {
    if len != rows * cols {
        return Err(NmfreError::InvalidInput(format!(
            "`{name}` has {len} entries but must be {rows} x {cols} = {}",
            rows * cols
        )));
    }
    Ok(())
}
