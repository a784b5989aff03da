#' Fit non-negative matrix factorization with random effects
#'
#' Fits the NMF-RE model `Y = X (Theta A + U) + E` of Satoh (2026): Y is a
#' non-negative P x N matrix whose columns are units (subjects, pupils,
#' documents), X is a non-negative P x rank basis whose columns sum to 1,
#' Theta (rank x K) holds the effects of the K covariates in A on the latent
#' scores, and U (rank x N) holds unit-level random effects, estimated as
#' ridge predictions (BLUPs) with penalty `lambda = sigma2 / tau2`.
#' Data frames in wide layout (one row per unit) or long layout (one row per
#' unit and occasion) are fitted through the formula method,
#' [nmfre.formula()].
#'
#' The random effects' effective degrees of freedom,
#' `dfU = N * sum_q d_q / (d_q + lambda)` with `d_q` the eigenvalues of X'X,
#' are capped at `max(df_rate * N * rank, 1)`: whenever dfU would exceed the
#' cap, lambda is raised until it does not. Without the cap, lambda can
#' collapse, U absorbs the noise and every standard error shrinks.
#'
#' With the cap on, tau2 is not estimated: it stays at `tau2_start` unless
#' the cap lowers it, so lambda follows sigma2 and the fit, its standard
#' errors and whether the cap binds depend on the units of Y. Limitation:
#' results are comparable only between data sets on the same scale; rescale
#' Y to the scale the method was designed for (for example 0 to 1 per
#' measurement, or the original units as in its published examples) and
#' report the scale with the results.
#'
#' Inference on Theta, computed by default, conditions on the fitted X and U:
#' sandwich standard errors from the asymptotic linearisation, and a
#' multiplier (wild) bootstrap of one-step Newton updates that needs no
#' re-optimisation. See [nmfre_inference()].
#'
#' @param Y A non-negative numeric matrix or data frame, P measurements
#'   (rows) by N units (columns); or a formula with a `data` argument, see
#'   [nmfre.formula()].
#' @param A Covariates, a numeric K x N matrix with one column per unit and
#'   named rows; `NULL` means an intercept only. A numeric vector of length N
#'   is taken as one covariate and no intercept is added; use
#'   `rbind("(Intercept)" = 1, x = x)` for both.
#' @param rank Number of bases Q, between 1 and min(P, N).
#' @param df_rate Rate of the df cap: dfU is kept at or below
#'   `max(df_rate * N * rank, 1)`. `NULL` chooses the rate by the automatic
#'   rule of [nmfre_dfscan()] over the rates `seq(0.1, 1, by = 0.1)` and
#'   keeps the scan table in `fit$dfscan`. See also `df_cap` and `use_cap` in
#'   [nmfre_control()].
#' @param theta `"nonneg"` constrains Theta to be non-negative, updated
#'   multiplicatively (the default); `"free"` lets Theta take any sign,
#'   updated by exact least squares.
#' @param control Settings from [nmfre_control()].
#' @param ... Further arguments for methods.
#' @return An object of class `"nmfre"`; see [nmfre-object] for its elements.
#' @references Satoh, K. (2026). Wild Bootstrap Inference for Non-Negative
#'   Matrix Factorization with Random Effects. arXiv:2603.01468.
#' @examples
#' data(Orthodont, package = "nlme")
#' Y <- matrix(Orthodont$distance, nrow = 4,
#'             dimnames = list(paste0("age", c(8, 10, 12, 14)), NULL))
#' male <- as.numeric(Orthodont$Sex[seq(1, 108, by = 4)] == "Male")
#' A <- rbind("(Intercept)" = 1, male = male)
#' fit <- nmfre(Y, A, rank = 1, df_rate = 0.21)
#' fit
#'
#' # The same fit from the long-format data frame.
#' orthodont <- as.data.frame(Orthodont)
#' orthodont$Sex <- relevel(factor(orthodont$Sex, ordered = FALSE), "Female")
#' fit <- nmfre(distance ~ Sex, data = orthodont, unit = ~ Subject,
#'              occasion = ~ age, rank = 1, df_rate = 0.21)
#' summary(fit)
#' @export
nmfre <- function(Y, ...) {
  UseMethod("nmfre")
}

#' @rdname nmfre
#' @export
nmfre.default <- function(Y, A = NULL, rank = 2, df_rate = 0.1,
                          theta = c("nonneg", "free"),
                          control = nmfre_control(), ...) {
  call <- match.call()
  call[[1L]] <- as.name("nmfre")
  check_no_dots(...)
  theta <- match_option(theta, "theta", c("nonneg", "free"))
  control <- check_control(control)
  Y <- check_response(Y)
  A <- check_covariates(A, ncol(Y), theta)
  rank <- check_rank(rank, nrow(Y), ncol(Y))
  df_rate <- resolve_df_rate(df_rate, Y, A, rank, theta, control)
  # df_rate = NULL scans the rates; the scan table rides on the chosen rate.
  dfscan <- attr(df_rate, "dfscan")
  attr(df_rate, "dfscan") <- NULL
  fit <- fit_nmfre(Y, A, rank, df_rate, theta, control)
  fit$dfscan <- dfscan
  fit$call <- call
  fit
}

#' @rdname nmfre
#' @export
nmfre.data.frame <- function(Y, ...) {
  call <- match.call()
  call[[1L]] <- as.name("nmfre")
  fit <- nmfre.default(check_response(Y), ...)
  fit$call <- call
  fit
}

check_no_dots <- function(...) {
  dots <- list(...)
  if (length(dots) > 0L) {
    labels <- names(dots)
    labels[is.null(labels) | labels == ""] <- "<unnamed>"
    stop(sprintf(paste0("Unknown argument(s) %s. Tuning settings go in ",
                        "`control = nmfre_control(...)`."),
                 paste0("`", labels, "`", collapse = ", ")), call. = FALSE)
  }
}

check_control <- function(control) {
  if (!inherits(control, "nmfre_control")) {
    stop("`control` must be created by nmfre_control(), for example nmfre_control(maxit = 1000).",
         call. = FALSE)
  }
  control
}

resolve_df_rate <- function(df_rate, Y, A, rank, theta, control) {
  if (is.null(df_rate)) {
    if (!isTRUE(control$use_cap) || !is.null(control$df_cap)) {
      return(NA_real_)
    }
    return(choose_df_rate(Y, A, rank, theta, control))
  }
  check_number(df_rate, "df_rate", min = 1e-8, max = 1)
  df_rate
}
