# Native routines registered by the Rust bridge (src/rust/bridge). They are
# called only through the rust_* wrappers in rust.R, which turn their error
# lists into R errors.
#' @useDynLib nmfre, .registration = TRUE
NULL
