# Diagnostic plots of an nmfre fit in base graphics.

#' Plot diagnostics of an nmfre fit
#'
#' Draws up to three plots: (1) the basis loadings, one line per basis
#' across the P measurements; (2) observed Y against the fitted values
#' `X (Theta A + U)`, with the identity line; (3) the trace of the
#' penalised objective over the iterations, on a log scale when it is
#' positive.
#'
#' @param x An `"nmfre"` fit.
#' @param which Which plots to draw, a subset of `1:3`.
#' @param ask Ask before each new page, as [plot.lm()] does; by default
#'   when several plots go to an interactive device with room for one.
#' @param ... Further graphical parameters for the plotting functions.
#' @return The fit, invisibly.
#' @examples
#' data(Orthodont, package = "nlme")
#' fit <- nmfre(distance ~ 1, data = Orthodont, unit = ~ Subject,
#'              occasion = ~ age, rank = 2, df_rate = 0.21,
#'              control = nmfre_control(inference = FALSE))
#' oldpar <- par(mfrow = c(1, 3))
#' plot(fit)
#' par(oldpar)
#' @export
plot.nmfre <- function(x, which = 1:3, ask = NULL, ...) {
  if (!is.numeric(which) || length(which) == 0L || anyNA(which) ||
      !all(which %in% 1:3)) {
    stop(paste0("`which` must hold plot numbers among 1 (loadings), 2 (observed ",
                "against fitted) and 3 (objective trace)."), call. = FALSE)
  }
  if (is.null(ask)) {
    ask <- length(which) > prod(graphics::par("mfcol")) && grDevices::dev.interactive()
  }
  if (ask) {
    old <- grDevices::devAskNewPage(TRUE)
    on.exit(grDevices::devAskNewPage(old))
  }
  if (1 %in% which) plot_loadings(x$X, ...)
  if (2 %in% which) plot_observed_fitted(x$Y, fitted_matrix(x, "blup"), ...)
  if (3 %in% which) plot_objective(x$objective, ...)
  invisible(x)
}

plot_loadings <- function(X, ...) {
  measurements <- seq_len(nrow(X))
  graphics::matplot(measurements, X, type = "b", pch = 19, lty = 1,
                    col = seq_len(ncol(X)), xaxt = "n", xlab = "Measurement",
                    ylab = "Loading", main = "Basis loadings (X)", ...)
  labels <- rownames(X)
  if (is.null(labels)) labels <- measurements
  graphics::axis(1, at = measurements, labels = labels)
  graphics::legend("topleft", legend = colnames(X), col = seq_len(ncol(X)), lty = 1,
                   pch = 19, bty = "n")
}

plot_observed_fitted <- function(Y, fitted, ...) {
  graphics::plot(as.double(fitted), as.double(Y), xlab = "Fitted X (Theta A + U)",
                 ylab = "Observed Y", main = "Observed against fitted", ...)
  graphics::abline(0, 1, lty = 2)
}

plot_objective <- function(objective, ...) {
  scale <- if (all(objective > 0)) "y" else ""
  graphics::plot(seq_along(objective), objective, type = "l", log = scale,
                 xlab = "Iteration", ylab = "Penalised objective",
                 main = "Objective trace", ...)
}
