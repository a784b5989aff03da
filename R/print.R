# print() and summary() for nmfre fits. Small .prt_* helpers shared by both,
# in the manner of lme4's printing.

format_number <- function(x, digits = 4) format(signif(x, digits), trim = TRUE)

.prt_title <- function(x) {
  theta <- if (x$theta == "nonneg") "non-negative Theta" else "sign-free Theta"
  cat(sprintf("Non-negative matrix factorization with random effects (%s)\n", theta))
}

.prt_call <- function(x) {
  if (!is.null(x$formula)) {
    cat("Formula:", paste(deparse(x$formula, width.cutoff = 500L), collapse = " "), "\n")
  }
  if (!is.null(x$data_name)) cat("   Data:", x$data_name, "\n")
  if (is.null(x$formula) && !is.null(x$call)) {
    cat("Call:", paste(deparse(x$call, width.cutoff = 500L), collapse = " "), "\n")
  }
}

.prt_dims <- function(x) {
  cat(sprintf("Rank: %d; measurements (P): %d; units (N): %d; covariates (K): %d\n",
              x$rank, nrow(x$Y), ncol(x$Y), nrow(x$A)))
}

.prt_convergence <- function(x) {
  status <- if (x$converged) "converged" else "NOT converged"
  cat(sprintf("Objective: %s; %s after %d iterations (%s)\n",
              format_number(utils::tail(x$objective, 1), 8), status, x$iterations,
              x$stop_reason))
}

.prt_cap <- function(x) {
  cap <- x$cap
  if (cap$type == "off") {
    cat(sprintf("df cap: off; dfU = %s of N * rank = %d\n", format_number(x$dfU),
                ncol(x$Y) * x$rank))
    return(invisible())
  }
  rule <- if (cap$type == "rate") sprintf("rate %s", format_number(cap$rate)) else "absolute"
  state <- if (cap$binding) "binding" else if (cap$hit) "hit during the fit, not binding" else "not hit"
  cat(sprintf("df cap (%s): dfU = %s of cap %s (ratio %s, %s)\n", rule,
              format_number(x$dfU), format_number(cap$value), format_number(cap$ratio, 3),
              state))
}

.prt_variances <- function(x) {
  table <- data.frame(
    Variance = c(x$tau2, x$sigma2),
    `Std.Dev.` = sqrt(c(x$tau2, x$sigma2)),
    check.names = FALSE,
    row.names = c("Unit (tau2)", "Residual (sigma2)")
  )
  print(table, digits = 4)
  cat(sprintf("lambda = sigma2 / tau2 = %s\n", format_number(x$lambda)))
}

#' @export
print.nmfre <- function(x, digits = max(3L, getOption("digits") - 3L), ...) {
  .prt_title(x)
  .prt_call(x)
  .prt_dims(x)
  .prt_convergence(x)
  .prt_cap(x)
  cat("Random effects:\n")
  .prt_variances(x)
  cat("Theta (covariate effects on the latent scores):\n")
  print(x$Theta, digits = digits)
  invisible(x)
}
