# Predictions for the fitted or for new units, and draws of new Y from the
# fitted model.

#' Predictions from an nmfre fit
#'
#' Predicts the P measurements of units. For the units of the fit
#' (`newdata` and `A` both `NULL`), `type = "blup"` gives `X (Theta A + U)`
#' with each unit's predicted random effect, as [fitted.nmfre()] does, and
#' `type = "fixed"` gives `X Theta A`. For new units only the fixed part
#' `X Theta a` can be predicted, because a new unit's random effect has mean
#' 0 and no data to predict it from.
#'
#' New units come either as `newdata`, a data frame with the variables of
#' the formula's right side (formula fits only; factor levels and contrasts
#' are those of the fit), or as `A`, a K x M covariate matrix with rows in
#' the order (or with the names) of the fit's covariates. For a long-layout
#' fit, `newdata` in long layout (with the unit variable) is collapsed to one
#' row per unit in order of first appearance; otherwise each row is a unit.
#' New units with missing covariates get `NA` predictions.
#'
#' @param object An `"nmfre"` fit.
#' @param newdata A data frame of new units, or `NULL`.
#' @param A A K x M matrix of covariates of new units, or `NULL`.
#' @param type `"blup"` or `"fixed"`; see Details. Only `"fixed"` is
#'   available for new units, and it is the default for them.
#' @param ... Unused.
#' @return A P x M matrix: measurements by units.
#' @examples
#' data(Orthodont, package = "nlme")
#' orthodont <- as.data.frame(Orthodont)
#' orthodont$Sex <- relevel(factor(orthodont$Sex, ordered = FALSE), "Female")
#' fit <- nmfre(distance ~ Sex, data = orthodont, unit = ~ Subject,
#'              occasion = ~ age, rank = 1, df_rate = 0.21,
#'              control = nmfre_control(inference = FALSE))
#' predict(fit, newdata = data.frame(Sex = c("Female", "Male")))
#' predict(fit, A = rbind(1, c(0, 1)))
#' @export
predict.nmfre <- function(object, newdata = NULL, A = NULL, type = c("blup", "fixed"),
                          ...) {
  new_units <- !is.null(newdata) || !is.null(A)
  if (!new_units) {
    type <- match_option(type, "type", c("blup", "fixed"))
    return(fitted_matrix(object, type))
  }
  if (!missing(type) && !identical(type, "fixed")) {
    stop(paste0("Random effects are predicted only for the units of the fit, so ",
                "new units take type = \"fixed\" (X Theta a); for the fitted units ",
                "call predict() without `newdata` and `A`."), call. = FALSE)
  }
  if (!is.null(newdata) && !is.null(A)) {
    stop("Give new units either as `newdata` or as `A`, not both.", call. = FALSE)
  }
  covariates <- if (is.null(A)) {
    new_covariates_from_data(object, newdata)
  } else {
    check_new_covariates(A, object$Theta)
  }
  prediction <- object$X %*% object$Theta %*% covariates
  dimnames(prediction) <- list(rownames(object$X), colnames(covariates))
  prediction
}

check_new_covariates <- function(A, Theta) {
  covariates <- colnames(Theta)
  if (is.numeric(A) && is.null(dim(A))) A <- matrix(A, ncol = 1L)
  if (!is.matrix(A) || !is.numeric(A)) {
    stop("`A` must be a numeric matrix with one column per new unit.", call. = FALSE)
  }
  if (nrow(A) != length(covariates)) {
    stop(sprintf(paste0("`A` has %d rows but the fit has %d covariates (%s); ",
                        "give one row per covariate and one column per new unit."),
                 nrow(A), length(covariates), paste(covariates, collapse = ", ")),
         call. = FALSE)
  }
  if (!is.null(rownames(A))) {
    unknown <- setdiff(rownames(A), covariates)
    if (length(unknown) > 0L) {
      stop(sprintf("Rows of `A` not among the fit's covariates (%s): %s.",
                   paste(covariates, collapse = ", "), paste(unknown, collapse = ", ")),
           call. = FALSE)
    }
    A <- A[covariates, , drop = FALSE]
  }
  rownames(A) <- covariates
  A
}

# Builds A for new units from the formula's right side, with the fit's
# factor levels and contrasts.
new_covariates_from_data <- function(object, newdata) {
  if (is.null(object$terms)) {
    stop(paste0("`newdata` needs a fit made by the formula method; for a fit made ",
                "from matrices give the new units' covariates as `A`."), call. = FALSE)
  }
  if (!is.data.frame(newdata)) {
    stop("`newdata` must be a data frame.", call. = FALSE)
  }
  needed <- all.vars(stats::delete.response(object$terms))
  missing_variables <- setdiff(needed, names(newdata))
  # Variables found where the formula was made are taken from there.
  formula_environment <- environment(object$terms)
  missing_variables <- missing_variables[!vapply(missing_variables, exists, logical(1),
                                                 envir = formula_environment)]
  if (length(missing_variables) > 0L) {
    stop(sprintf("`newdata` lacks the covariate(s) %s of the model's right side; add them.",
                 paste0("'", missing_variables, "'", collapse = ", ")), call. = FALSE)
  }
  frame <- stats::model.frame(object$terms, newdata, na.action = stats::na.pass,
                              xlev = object$xlevels)
  classes <- attr(object$terms, "dataClasses")
  if (!is.null(classes)) stats::.checkMFClasses(classes, frame)

  unit <- object$layout$unit
  unit_names <- rownames(frame)
  if (!is.null(unit) && all(all.vars(unit) %in% names(newdata))) {
    units <- unit_keys(eval(unit[[2L]], newdata, environment(unit)))
    unit_names <- unique(units)
    column <- match(units, unit_names)
    first_rows <- match(unit_names, units)
    check_constant_within_units(frame, object$terms, column, first_rows, unit_names)
    frame <- frame[first_rows, , drop = FALSE]
    attr(frame, "terms") <- object$terms
  }
  design <- stats::model.matrix(object$terms, frame, contrasts.arg = object$contrasts)
  A <- t(design)
  colnames(A) <- unit_names
  attr(A, "assign") <- NULL
  attr(A, "contrasts") <- NULL
  A[colnames(object$Theta), , drop = FALSE]
}

#' Simulate measurements from an nmfre fit
#'
#' Draws new data sets from the fitted model for the fitted units:
#' `Y = X (Theta A + U) + E` with fresh `U ~ N(0, tau2)` (Q x N) and
#' `E ~ N(0, sigma2)` (P x N), at the fitted X, Theta, A, tau2 and sigma2.
#' Draws use R's random number generator.
#'
#' Limitation: the draws are not truncated at 0, so when sigma2 or tau2 is
#' large against the fitted values a draw can have negative entries, which
#' [nmfre()] rejects; clip them with `pmax(y, 0)` before refitting.
#'
#' @param object An `"nmfre"` fit.
#' @param nsim Number of data sets to draw.
#' @param seed `NULL` to continue R's random number stream, or a whole number
#'   passed to [set.seed()] for this call only: the stream is restored
#'   afterwards, as [stats::simulate()] methods do.
#' @param ... Unused.
#' @return A list of `nsim` P x N matrices named `sim_1`, `sim_2`, ...,
#'   with attribute `"seed"` holding the generator state at the start (as
#'   `.Random.seed`, or the seed with the generator kinds).
#' @examples
#' fit <- nmfre(matrix(c(2, 4, 3, 5, 4, 8, 6, 9), 2), rank = 1,
#'              control = nmfre_control(inference = FALSE))
#' simulate(fit, nsim = 2, seed = 1)
#' @export
simulate.nmfre <- function(object, nsim = 1, seed = NULL, ...) {
  check_whole(nsim, "nsim", min = 1)
  rng_state <- set_simulation_seed(seed)
  if (!is.null(seed)) on.exit(restore_random_seed(rng_state$previous))

  X <- object$X
  mean_scores <- object$Theta %*% object$A
  draws <- lapply(seq_len(nsim), function(i) {
    U <- matrix(stats::rnorm(length(mean_scores), sd = sqrt(object$tau2)),
                nrow(mean_scores))
    E <- matrix(stats::rnorm(length(object$Y), sd = sqrt(object$sigma2)), nrow(object$Y))
    Y <- X %*% (mean_scores + U) + E
    dimnames(Y) <- dimnames(object$Y)
    Y
  })
  names(draws) <- paste0("sim_", seq_len(nsim))
  attr(draws, "seed") <- rng_state$seed
  draws
}

# Follows the seed convention of stats::simulate(): without a seed the
# current stream continues and its state is reported; with a seed the stream
# is set for the call and the previous state kept for restoring.
set_simulation_seed <- function(seed) {
  if (!exists(".Random.seed", envir = globalenv(), inherits = FALSE)) stats::runif(1)
  previous <- get(".Random.seed", envir = globalenv(), inherits = FALSE)
  if (is.null(seed)) {
    return(list(seed = previous, previous = NULL))
  }
  check_whole(seed, "seed", min = -(2^31 - 1), max = 2^31 - 1)
  set.seed(seed)
  list(seed = structure(seed, kind = as.list(RNGkind())), previous = previous)
}

restore_random_seed <- function(state) {
  assign(".Random.seed", state, envir = globalenv())
}
