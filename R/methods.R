# Accessors for nmfre fits, in the manner of lme4's: fixed and random
# effects, per-unit scores, variance components, fitted values, residuals,
# the design, and refitting with update().

#' Fixed effects of an nmfre fit
#'
#' Returns Theta, the effects of the unit covariates on the latent scores.
#' The generic is nlme's, the same that lme4 uses, so `fixef()` works for
#' nmfre, lme4 and nlme fits alike.
#'
#' @param object An `"nmfre"` fit.
#' @param ... Unused.
#' @return The Q x K matrix Theta, rows named after the bases and columns
#'   after the covariates (the rows of A, or the model matrix columns of a
#'   formula fit).
#' @seealso [ranef.nmfre()], [coef.nmfre()], [vcov.nmfre()].
#' @examples
#' fit <- nmfre(matrix(c(2, 4, 3, 5, 4, 8, 6, 9), 2), rank = 1,
#'              control = nmfre_control(inference = FALSE))
#' fixef(fit)
#' @export
fixef.nmfre <- function(object, ...) {
  object$Theta
}

#' Random effects of an nmfre fit
#'
#' Returns the predicted random effects U (ridge predictions, BLUPs given
#' the fitted X and lambda), one row per unit.
#'
#' @inheritParams fixef.nmfre
#' @return An N x Q matrix, `t(U)`: rows named after the units, columns
#'   after the bases. Each column has mean 0.
#' @examples
#' fit <- nmfre(matrix(c(2, 4, 3, 5, 4, 8, 6, 9), 2), rank = 1,
#'              control = nmfre_control(inference = FALSE))
#' ranef(fit)
#' @export
ranef.nmfre <- function(object, ...) {
  t(object$U)
}

#' Latent scores of each unit
#'
#' Returns the per-unit latent scores `Theta A + U`: the covariate part and
#' the unit's random effect together, as [coef()] of an lme4 fit combines
#' fixed and random effects per group.
#'
#' @inheritParams fixef.nmfre
#' @return An N x Q matrix, `t(Theta A + U)`: rows named after the units,
#'   columns after the bases.
#' @examples
#' fit <- nmfre(matrix(c(2, 4, 3, 5, 4, 8, 6, 9), 2), rank = 1,
#'              control = nmfre_control(inference = FALSE))
#' coef(fit)
#' @export
coef.nmfre <- function(object, ...) {
  scores <- object$Theta %*% object$A + object$U
  dimnames(scores) <- dimnames(object$U)
  t(scores)
}

#' Variance components of an nmfre fit
#'
#' Returns the random-effect variance tau2 of the latent scores and the
#' residual variance sigma2, as estimated by the fitting loop.
#'
#' @param x An `"nmfre"` fit.
#' @param sigma Unused; part of nlme's generic.
#' @param ... Unused.
#' @return A data frame with rows `Unit` (tau2) and `Residual` (sigma2) and
#'   columns `Variance` and `Std.Dev.`.
#' @examples
#' fit <- nmfre(matrix(c(2, 4, 3, 5, 4, 8, 6, 9), 2), rank = 1,
#'              control = nmfre_control(inference = FALSE))
#' VarCorr(fit)
#' @export
VarCorr.nmfre <- function(x, sigma = 1, ...) {
  variances <- c(Unit = x$tau2, Residual = x$sigma2)
  data.frame(Variance = variances, `Std.Dev.` = sqrt(variances), check.names = FALSE)
}

#' Residual standard deviation of an nmfre fit
#'
#' Returns `sqrt(sigma2)`, the residual standard deviation estimated by the
#' fitting loop. The residual variance used for inference on Theta, which
#' subtracts the degrees of freedom of U and Theta, is
#' `fit$inference$sigma2`.
#'
#' @inheritParams fixef.nmfre
#' @return A single number.
#' @examples
#' fit <- nmfre(matrix(c(2, 4, 3, 5, 4, 8, 6, 9), 2), rank = 1,
#'              control = nmfre_control(inference = FALSE))
#' sigma(fit)
#' @export
sigma.nmfre <- function(object, ...) {
  sqrt(object$sigma2)
}

#' Number of units of an nmfre fit
#'
#' Returns N, the number of units (columns of Y). Units are the independent
#' replications of the model, so N, not the number of measurements P N, is
#' the sample size that [BIC()] uses.
#'
#' @inheritParams fixef.nmfre
#' @return An integer.
#' @examples
#' fit <- nmfre(matrix(c(2, 4, 3, 5, 4, 8, 6, 9), 2), rank = 1,
#'              control = nmfre_control(inference = FALSE))
#' nobs(fit)
#' @export
nobs.nmfre <- function(object, ...) {
  ncol(object$Y)
}

#' Fitted values and residuals of an nmfre fit
#'
#' `type = "blup"` gives `X (Theta A + U)`, the fit including each unit's
#' random effect; `type = "fixed"` gives `X Theta A`, the part explained by
#' the covariates alone. Residuals are `Y` minus these. With
#' `na.action = na.exclude` in a formula fit, the units dropped for missing
#' values appear as columns of `NA`.
#'
#' @param object An `"nmfre"` fit.
#' @param type `"blup"` or `"fixed"`.
#' @param ... Unused.
#' @return A P x N matrix, measurements by units.
#' @examples
#' fit <- nmfre(matrix(c(2, 4, 3, 5, 4, 8, 6, 9), 2), rank = 1,
#'              control = nmfre_control(inference = FALSE))
#' fitted(fit)
#' residuals(fit, type = "fixed")
#' @export
fitted.nmfre <- function(object, type = c("blup", "fixed"), ...) {
  type <- match_option(type, "type", c("blup", "fixed"))
  pad_excluded_units(fitted_matrix(object, type), object$na_action)
}

#' @rdname fitted.nmfre
#' @export
residuals.nmfre <- function(object, type = c("blup", "fixed"), ...) {
  type <- match_option(type, "type", c("blup", "fixed"))
  pad_excluded_units(object$Y - fitted_matrix(object, type), object$na_action)
}

# Fitted values are computed when asked for rather than stored, so that a
# fit does not hold a second P x N matrix beside Y.
fitted_matrix <- function(object, type) {
  values <- if (type == "blup") {
    object$X %*% (object$Theta %*% object$A + object$U)
  } else {
    object$X %*% object$Theta %*% object$A
  }
  dimnames(values) <- dimnames(object$Y)
  values
}

# Inserts NA columns for units that na.exclude dropped, as naresid() does
# for the rows of an lm fit.
pad_excluded_units <- function(M, na_action) {
  if (!inherits(na_action, "exclude")) return(M)
  t(stats::naresid(na_action, t(M)))
}

#' Covariates of an nmfre fit as a model matrix
#'
#' Returns A transposed, one row per unit, as [model.matrix()] does for
#' [lm()] fits.
#'
#' @inheritParams fixef.nmfre
#' @return An N x K matrix.
#' @examples
#' fit <- nmfre(matrix(c(2, 4, 3, 5, 4, 8, 6, 9), 2), rank = 1,
#'              control = nmfre_control(inference = FALSE))
#' model.matrix(fit)
#' @export
model.matrix.nmfre <- function(object, ...) {
  t(object$A)
}

#' Formula of an nmfre fit
#'
#' @param x An `"nmfre"` fit made by the formula method.
#' @param ... Unused.
#' @return The model formula; an error for fits made from matrices.
#' @examples
#' data(Orthodont, package = "nlme")
#' fit <- nmfre(distance ~ 1, data = Orthodont, unit = ~ Subject,
#'              occasion = ~ age, rank = 1,
#'              control = nmfre_control(inference = FALSE))
#' formula(fit)
#' @export
formula.nmfre <- function(x, ...) {
  if (is.null(x$formula)) {
    stop("This fit was made from matrices (nmfre(Y, A, ...)), so it has no formula.",
         call. = FALSE)
  }
  x$formula
}

#' Refit an nmfre model with changed arguments
#'
#' Re-evaluates the call of the fit with arguments changed, like
#' [stats::update()]; the formula can be edited with `.` notation.
#'
#' @param object An `"nmfre"` fit.
#' @param formula. Changes to the formula, such as `. ~ . - school`; only
#'   for fits made by the formula method.
#' @param ... Arguments to change, such as `rank = 2`; `NULL` removes one.
#' @param evaluate If `FALSE`, return the new call unevaluated.
#' @return The new fit, or its call.
#' @examples
#' fit <- nmfre(matrix(c(2, 4, 3, 5, 4, 8, 6, 9), 2), rank = 1,
#'              control = nmfre_control(inference = FALSE))
#' update(fit, df_rate = 0.5, evaluate = FALSE)
#' @export
update.nmfre <- function(object, formula., ..., evaluate = TRUE) {
  call <- object$call
  if (is.null(call)) {
    stop("The fit has no call to update.", call. = FALSE)
  }
  if (!missing(formula.)) {
    call$Y <- stats::update.formula(formula(object), formula.)
  }
  changes <- match.call(expand.dots = FALSE)$...
  if (length(changes) > 0L && (is.null(names(changes)) || any(names(changes) == ""))) {
    stop("Arguments to change in update() must be named, for example rank = 2.",
         call. = FALSE)
  }
  for (name in names(changes)) {
    call[[name]] <- changes[[name]]
  }
  if (!evaluate) return(call)
  eval(call, update_environment(object, call, parent.frame()))
}

# A formula fit is refitted where its formula was made, which is where its
# data usually live, unless the call's arguments name objects found only in
# the caller's frame (such as a new data set passed to update()).
update_environment <- function(object, call, caller) {
  if (is.null(object$formula)) return(caller)
  home <- environment(object$formula)
  arguments <- as.list(call)[-1L]
  arguments <- arguments[!names(arguments) %in% c("Y", "unit", "occasion", "subset")]
  needed <- unique(unlist(lapply(arguments, all.vars)))
  found <- vapply(needed, exists, logical(1), envir = home)
  if (all(found)) home else caller
}
