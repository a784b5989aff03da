# Calls into the Rust bridge. Every bridge function returns list(ok, ...);
# a failure carries a message that is raised here as an ordinary R error.
# Each wrapper names its routine in .Call() directly, so that R CMD check can
# verify the registration.

rust_result <- function(result) {
  if (!isTRUE(result$ok)) {
    message <- result$error
    if (identical(message, "computation interrupted by the user")) {
      stop("nmfre was interrupted by the user.", call. = FALSE)
    }
    stop(message, call. = FALSE)
  }
  result$ok <- NULL
  result
}

rust_fit <- function(Y, A, options) {
  rust_result(.Call(wrap__nmfre_fit_rust, Y, nrow(Y), ncol(Y), A, nrow(A), options))
}

rust_infer <- function(Y, A, fitted, options) {
  rust_result(.Call(wrap__nmfre_infer_rust, Y, nrow(Y), ncol(Y), A, nrow(A), fitted, options))
}

# Counts and locates non-finite, negative and zero values in one pass.
rust_summarise <- function(values) {
  rust_result(.Call(wrap__nmfre_summarise_rust, values))
}

rust_scan <- function(Y, A, options, rates, verbose) {
  options$rates <- as.double(rates)
  options$verbose <- verbose
  rust_result(.Call(wrap__nmfre_scan_rust, Y, nrow(Y), ncol(Y), A, nrow(A), options))
}

rust_simulate <- function(X, Theta, A, options) {
  options[c("P", "Q", "K", "N")] <- list(nrow(X), ncol(X), nrow(A), ncol(A))
  rust_result(.Call(wrap__nmfre_simulate_rust, X, Theta, A, options))
}
