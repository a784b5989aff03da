# print() for nmfre fits and the small .prt_* helpers that print() and the
# print method of summary() share, in the manner of lme4's printing. Each
# helper takes the values it shows, so both objects can use it.

format_number <- function(x, digits = 4) format(signif(x, digits), trim = TRUE)

.prt_title <- function(theta) {
  kind <- if (theta == "nonneg") "non-negative Theta" else "sign-free Theta"
  cat(sprintf("Non-negative matrix factorization with random effects (%s)\n", kind))
}

.prt_call <- function(formula, data_name, call) {
  if (!is.null(formula)) {
    cat("Formula:", paste(deparse(formula, width.cutoff = 500L), collapse = " "), "\n")
  }
  if (!is.null(data_name)) cat("   Data:", data_name, "\n")
  if (is.null(formula) && !is.null(call)) {
    cat("Call:", paste(deparse(call, width.cutoff = 500L), collapse = " "), "\n")
  }
}

# Names the unit and occasion variables of a long-layout formula fit.
.prt_layout <- function(layout, N) {
  if (is.null(layout) || layout$type != "long") return(invisible())
  occasions <- paste(format(layout$occasions, trim = TRUE), collapse = ", ")
  cat(sprintf("  Units: %s (%d); occasions: %s (%s)\n", deparse1(layout$unit[[2L]]), N,
              deparse1(layout$occasion[[2L]]), occasions))
}

.prt_dims <- function(rank, P, N, K) {
  cat(sprintf("Rank: %d; measurements (P): %d; units (N): %d; covariates (K): %d\n",
              rank, P, N, K))
}

.prt_dropped <- function(na_action) {
  if (length(na_action) == 0L) return(invisible())
  count <- length(na_action)
  cat(sprintf("(%d %s dropped because of missing values)\n", count,
              if (count == 1L) "unit" else "units"))
}

.prt_convergence <- function(iterations, converged, stop_reason, objective) {
  status <- if (converged) "converged" else "NOT converged"
  cat(sprintf("Objective: %s; %s after %d iterations (%s)\n",
              format_number(objective, 8), status, iterations, stop_reason))
}

# How the optimum was certified: the phases of the loop, the fixed-point
# residuals against their tolerance and, with several starts, how far they
# agree.
.prt_optimum <- function(optimum, convergence, certification) {
  if (is.null(optimum)) return(invisible())
  tolerance <- format(certification$tolerance)
  residuals <- sprintf("fixed-point residuals X %s, Theta %s",
                       format(signif(optimum$kkt_x, 2)), format(signif(optimum$kkt_theta, 2)))
  text <- if (!isTRUE(certification$polish)) {
    sprintf("Optimum: not certified (published loop only, polish = FALSE); %s", residuals)
  } else if (convergence$converged) {
    sprintf(paste0("Optimum: certified after %d published + %d polishing iterations: a further ",
                   "iteration moves no entry of X or Theta by more than %s (relative); %s"),
            optimum$paper_iterations, convergence$iterations - optimum$paper_iterations,
            tolerance, residuals)
  } else {
    sprintf("Optimum: NOT certified within maxit; %s, above the tolerance %s",
            residuals, tolerance)
  }
  cat(strwrap(text, width = 0.9 * getOption("width"), exdent = 2), sep = "\n")
  starts <- optimum$starts
  if (!is.null(starts)) {
    converged <- sum(starts$converged)
    cat(sprintf(paste0("Starts: %d (%d converged); chosen: %s start %d; objectives up to ",
                       "%s above the best (relative); Theta spread at the best objective %s\n"),
                nrow(starts), converged, starts$kind[starts$chosen], starts$start[starts$chosen],
                format(signif(optimum$objective_spread, 2)),
                format(signif(optimum$theta_spread, 2))))
  }
}

.prt_warnings <- function(warnings) {
  for (text in warnings) {
    cat(strwrap(text, width = 0.9 * getOption("width"), prefix = "  ",
                initial = "Warning: "), sep = "\n")
  }
}

.prt_cap <- function(dfU, cap, N, rank) {
  if (cap$type == "off") {
    cat(sprintf("df cap: off; dfU = %s of N * rank = %d\n", format_number(dfU), N * rank))
    return(invisible())
  }
  rule <- if (cap$type == "rate") sprintf("rate %s", format_number(cap$rate)) else "absolute"
  state <- if (cap$binding) "binding" else if (cap$hit) "hit during the fit, not binding" else "not hit"
  cat(sprintf("df cap (%s): dfU = %s of cap %s (ratio %s, %s)\n", rule,
              format_number(dfU), format_number(cap$value), format_number(cap$ratio, 3),
              state))
}

# A df scan table on the fit means df_rate = NULL chose the rate.
.prt_dfscan <- function(df_rate, dfscan) {
  if (is.null(dfscan)) return(invisible())
  cat(sprintf("df rate %s chosen automatically from a scan of %d rates\n",
              format_number(df_rate), nrow(dfscan)))
}

# Variance components in lme4's layout: one row per group with the name of
# its variance parameter, the variance and the standard deviation.
.prt_VC <- function(varcor, digits) {
  parameters <- c(Unit = "tau2", Residual = "sigma2")
  table <- data.frame(
    Groups = rownames(varcor),
    Name = unname(parameters[rownames(varcor)]),
    Variance = format(varcor$Variance, digits = digits),
    `Std.Dev.` = format(varcor$`Std.Dev.`, digits = digits),
    check.names = FALSE
  )
  print(table, right = FALSE, row.names = FALSE)
}

.prt_theta <- function(Theta, digits) {
  cat("Theta (covariate effects on the latent scores):\n")
  print(Theta, digits = digits)
}

#' @export
print.nmfre <- function(x, digits = max(3L, getOption("digits") - 3L), ...) {
  .prt_title(x$theta)
  .prt_call(x$formula, x$data_name, x$call)
  .prt_layout(x$layout, ncol(x$Y))
  .prt_dims(x$rank, nrow(x$Y), ncol(x$Y), nrow(x$A))
  .prt_dropped(x$na_action)
  .prt_convergence(x$iterations, x$converged, x$stop_reason, utils::tail(x$objective, 1))
  .prt_cap(x$dfU, x$cap, ncol(x$Y), x$rank)
  .prt_dfscan(x$df_rate, x$dfscan)
  cat("Random effects:\n")
  .prt_VC(VarCorr(x), digits)
  cat(sprintf("lambda = sigma2 / tau2 = %s\n", format_number(x$lambda)))
  .prt_theta(x$Theta, digits)
  invisible(x)
}
