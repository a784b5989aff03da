# Native routines registered by the Rust bridge (src/rust/bridge). They are
# called only through call_rust(), which turns their error lists into R
# errors.
#' @useDynLib nmfre, .registration = TRUE
NULL
