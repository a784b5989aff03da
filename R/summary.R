# summary() for nmfre fits: gathers what the report needs into a
# "summary.nmfre" object, which its print method shows in lme4's order.

#' Summarise an nmfre fit
#'
#' Collects the convergence record, scaled residuals, variance components,
#' the coefficient table of Theta and the basis loadings X. The print method
#' shows them in the order of lme4's summary: title, formula and data,
#' convergence, scaled residuals, random effects, numbers of units and
#' measurements, fixed effects with significance stars, and the loadings.
#'
#' The random-effects block gives tau2 and sigma2 with their standard
#' deviations, `lambda = sigma2 / tau2`, the intraclass correlation
#' `ICC = tau2 tr(X'X) / (tau2 tr(X'X) + sigma2 P)` (the share of the
#' variance of a unit's measurements, summed over the P measurements, that
#' comes from its random effects), and dfU against the df cap. When the df
#' rate was chosen automatically (`df_rate = NULL`), the summary says so.
#'
#' @param object An `"nmfre"` fit.
#' @param ... Unused.
#' @return An object of class `"summary.nmfre"`: a list with `theta`,
#'   `formula`, `data_name`, `call`, `layout`, `dims` (P, N, K, rank),
#'   `convergence` (iterations, converged, stop reason, final objective),
#'   `warnings` (the fit's warnings, recomputed), `residuals` (quantiles of
#'   the scaled residuals), `varcor` (see [VarCorr.nmfre()]), `lambda`,
#'   `icc`, `dfU`, `cap`, `df_rate`, `dfscan`, `na_action`, `logLik`,
#'   `AIC`, `BIC`, `coefficients` (the full coefficient table, also returned
#'   by `coef(summary(fit))`, or `NULL` without inference), `inference`
#'   (its settings), `Theta` and `X`.
#' @examples
#' data(Orthodont, package = "nlme")
#' orthodont <- as.data.frame(Orthodont)
#' orthodont$Sex <- relevel(factor(orthodont$Sex, ordered = FALSE), "Female")
#' fit <- nmfre(distance ~ Sex, data = orthodont, unit = ~ Subject,
#'              occasion = ~ age, rank = 1, df_rate = 0.21)
#' summary(fit)
#' coef(summary(fit))
#' @export
summary.nmfre <- function(object, ...) {
  check_fit(object)
  log_likelihood <- logLik(object)
  structure(
    list(
      theta = object$theta, formula = object$formula, data_name = object$data_name,
      call = object$call, layout = object$layout,
      dims = c(P = nrow(object$Y), N = ncol(object$Y), K = nrow(object$A),
               rank = object$rank),
      convergence = list(iterations = object$iterations, converged = object$converged,
                         stop_reason = object$stop_reason,
                         objective = utils::tail(object$objective, 1)),
      optimum = object$optimum,
      certification = list(polish = object$control$polish,
                           tolerance = object$control$kkt_tolerance,
                           tau2_start = object$control$tau2_start),
      warnings = fit_warnings(object),
      residuals = scaled_residual_quantiles(object),
      varcor = VarCorr(object), lambda = object$lambda,
      icc = intraclass_correlation(object$X, object$tau2, object$sigma2),
      dfU = object$dfU, cap = object$cap, df_rate = object$df_rate,
      dfscan = object$dfscan, na_action = object$na_action,
      logLik = as.double(log_likelihood), AIC = stats::AIC(log_likelihood),
      BIC = stats::BIC(log_likelihood),
      coefficients = object$inference$coefficients,
      inference = inference_settings(object$inference),
      Theta = object$Theta, X = object$X
    ),
    class = "summary.nmfre"
  )
}

#' @rdname summary.nmfre
#' @export
coef.summary.nmfre <- function(object, ...) {
  object$coefficients
}

# Re-runs the fit's own warning checks and collects the messages instead of
# raising them.
fit_warnings <- function(fit) {
  messages <- character(0)
  withCallingHandlers(
    warn_fit_problems(fit),
    warning = function(condition) {
      messages <<- c(messages, conditionMessage(condition))
      invokeRestart("muffleWarning")
    }
  )
  messages
}

scaled_residual_quantiles <- function(fit) {
  scaled <- (fit$Y - fitted_matrix(fit, "blup")) / sqrt(fit$sigma2)
  stats::setNames(stats::quantile(scaled, names = FALSE),
                  c("Min", "1Q", "Median", "3Q", "Max"))
}

# The variance of X u_n summed over the P measurements is tau2 tr(X'X); the
# noise adds sigma2 P.
intraclass_correlation <- function(X, tau2, sigma2) {
  unit_part <- tau2 * sum(X^2)
  unit_part / (unit_part + sigma2 * nrow(X))
}

inference_settings <- function(inference) {
  if (is.null(inference)) return(NULL)
  list(se_type = inference$se_type, p_side = inference$p_side, B = inference$B,
       weights = inference$weights, level = inference$level)
}

# ---- printing --------------------------------------------------------------

#' @rdname summary.nmfre
#' @param x A `"summary.nmfre"` object.
#' @param digits Significant digits of the numbers shown.
#' @param signif.stars Show significance stars next to the p-values.
#' @export
print.summary.nmfre <- function(x, digits = max(3L, getOption("digits") - 3L),
                                signif.stars = getOption("show.signif.stars"), ...) {
  .prt_title(x$theta)
  .prt_call(x$formula, x$data_name, x$call)
  .prt_layout(x$layout, x$dims[["N"]])
  .prt_dropped(x$na_action)
  .prt_criteria(x$logLik, x$AIC, x$BIC, digits)
  cat("\n")
  .prt_convergence(x$convergence$iterations, x$convergence$converged,
                   x$convergence$stop_reason, x$convergence$objective)
  .prt_optimum(x$optimum, x$convergence, x$certification)
  .prt_warnings(x$warnings)
  cat("\n")
  .prt_resids(x$residuals, digits)
  cat("\n")
  cat("Random effects:\n")
  .prt_VC(x$varcor, digits)
  .prt_random_extras(x$lambda, x$icc, digits, x$cap, x$certification$tau2_start)
  .prt_cap(x$dfU, x$cap, x$dims[["N"]], x$dims[["rank"]])
  .prt_dfscan(x$df_rate, x$dfscan)
  .prt_counts(x$dims)
  cat("\n")
  .prt_coefficients(x$coefficients, x$inference, x$Theta, digits, signif.stars)
  cat("\n")
  .prt_loadings(x$X, digits)
  invisible(x)
}

.prt_criteria <- function(log_likelihood, aic, bic, digits) {
  values <- c(AIC = aic, BIC = bic, logLik = log_likelihood)
  cat("Marginal likelihood (random effects integrated out):\n")
  print(round(values, 1), digits = digits + 3L)
}

.prt_resids <- function(quantiles, digits) {
  cat("Scaled residuals:\n")
  print(quantiles, digits = digits)
}

.prt_random_extras <- function(lambda, icc, digits, cap = NULL, tau2_start = NULL) {
  cat(sprintf("lambda = sigma2 / tau2 = %s; ICC = %s\n",
              format_number(lambda, digits), format_number(icc, digits)))
  if (!is.null(cap) && cap$type != "off") {
    text <- sprintf(paste0("Note: with the df cap on, tau2 is not estimated: it stays at ",
                           "tau2_start = %s unless the cap lowers it, so tau2, lambda and ",
                           "the ICC depend on that start and on the units of Y."),
                    format(tau2_start))
    cat(strwrap(text, width = 0.9 * getOption("width"), exdent = 2), sep = "\n")
  }
}

.prt_counts <- function(dims) {
  cat(sprintf("Number of units: %d; measurements per unit: %d; covariates: %d; rank: %d\n",
              dims[["N"]], dims[["P"]], dims[["K"]], dims[["rank"]]))
}

# The coefficient table with stars; the bootstrap interval columns stay out
# of the printout (confint(fit, method = "boot") shows them).
.prt_coefficients <- function(table, settings, Theta, digits, signif.stars) {
  if (is.null(table)) {
    cat("Fixed effects (Theta), without inference; see nmfre_inference():\n")
    print(Theta, digits = digits)
    return(invisible())
  }
  cat("Fixed effects (Theta):\n")
  shown <- c("Estimate", "Std. Error", intersect("Boot SE", colnames(table)), "z value",
             grep("^Pr\\(", colnames(table), value = TRUE))
  estimates_and_errors <- seq_len(length(shown) - 2L)
  stats::printCoefmat(table[, shown, drop = FALSE], digits = digits,
                      signif.stars = signif.stars, has.Pvalue = TRUE, P.values = TRUE,
                      cs.ind = estimates_and_errors, tst.ind = length(shown) - 1L)
  cat(.describe_inference(settings), sep = "\n")
}

.describe_inference <- function(settings) {
  side <- if (settings$p_side == "one-sided") {
    "p-values: one-sided, for H0: Theta = 0 against Theta > 0"
  } else {
    "p-values: two-sided, for H0: Theta = 0"
  }
  errors <- sprintf("Std. Error: %s covariance", settings$se_type)
  if (settings$B > 0) {
    errors <- sprintf("%s; Boot SE: %d multiplier bootstrap replicates (%s weights)",
                      errors, settings$B, settings$weights)
  }
  c(side, errors)
}

.prt_loadings <- function(X, digits) {
  cat("Basis loadings (X):\n")
  print(zapsmall(X, digits), digits = digits)
}
