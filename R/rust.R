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

rust_scan <- function(values) {
  rust_result(.Call(wrap__nmfre_scan_rust, values))
}
