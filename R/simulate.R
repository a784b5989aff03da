# Simulation of data from the NMF-RE model, drawn by the Rust core so that
# R's random number stream is left alone.

# Share of truncated entries of Y above which nmfre_simulate() warns.
SIMULATE_TRUNCATION_WARNING <- 0.01

#' Simulate data from the NMF-RE model
#'
#' Draws `Y = X (Theta A + U) + E` for a given basis X, effects Theta and
#' covariates A. The entries of U (rank x N) and E (P x N) are i.i.d. with
#' mean 0 and variances `tau2` and `sigma2`, Gaussian or centred
#' exponential (`sqrt(v) * (Exp(1) - 1)`, skewness 2).
#'
#' Draws come from the package's own ChaCha20 generator: U from stream 0
#' and E from stream 1 of `seed`, each in column-major order. R's random
#' number stream (`.Random.seed`) is neither used nor changed.
#'
#' The model needs non-negative Y, so entries of `X (Theta A + U) + E` below
#' 0 are set to 0 (truncation rather than redrawing, which would change the
#' distribution of E). `U` and `E` are returned as drawn, so they keep their
#' stated distributions; the share of truncated entries is returned as
#' `truncated`, and a warning is given when it exceeds 1%, because Y then
#' departs noticeably from the model.
#'
#' @param X Non-negative basis, a P x rank matrix (a vector is one column).
#' @param Theta Effects, a rank x K matrix.
#' @param A Covariates, a K x N matrix with one column per unit (a vector is
#'   one covariate).
#' @param sigma2,tau2 Variances of the errors E and the random effects U.
#' @param errors,random_effects Distribution of the entries of E and of U:
#'   `"gaussian"` or `"exponential"` (centred exponential).
#' @param seed Seed of the ChaCha20 generator, a whole number between 0 and
#'   2^53.
#' @return A list with `Y` (P x N, non-negative), `A`, `U` (rank x N), `E`
#'   (P x N), `truncated` (share of the entries of Y set to 0) and `truth`, a
#'   list of `X`, `Theta`, `sigma2`, `tau2`, `errors`, `random_effects` and
#'   `seed`.
#' @examples
#' X <- cbind(early = c(0.45, 0.30, 0.15, 0.10), late = c(0.10, 0.15, 0.30, 0.45))
#' Theta <- cbind("(Intercept)" = c(30, 30), male = c(9, 0))
#' A <- rbind("(Intercept)" = 1, male = rep(0:1, 50))
#' sim <- nmfre_simulate(X, Theta, A, sigma2 = 1, tau2 = 1, seed = 7)
#' dim(sim$Y)
#' fit <- nmfre(sim$Y, sim$A, rank = 2, df_rate = 0.2,
#'              control = nmfre_control(inference = FALSE))
#' fit$Theta
#' @export
nmfre_simulate <- function(X, Theta, A, sigma2 = 1, tau2 = 1,
                           errors = c("gaussian", "exponential"),
                           random_effects = c("gaussian", "exponential"),
                           seed = 1) {
  X <- as_simulation_matrix(X, "X", columns = TRUE)
  if (any(X < 0)) {
    stop("`X` must be non-negative, as the model's basis is.", call. = FALSE)
  }
  A <- as_simulation_matrix(A, "A", columns = FALSE)
  Theta <- as_simulation_matrix(Theta, "Theta", columns = TRUE)
  if (nrow(Theta) != ncol(X) || ncol(Theta) != nrow(A)) {
    stop(sprintf(paste0("`Theta` is %d x %d but must be %d x %d: one row per column ",
                        "of X and one column per row of A."),
                 nrow(Theta), ncol(Theta), ncol(X), nrow(A)), call. = FALSE)
  }
  check_number(sigma2, "sigma2", min = 0)
  check_number(tau2, "tau2", min = 0)
  errors <- match_option(errors, "errors", c("gaussian", "exponential"))
  random_effects <- match_option(random_effects, "random_effects",
                                 c("gaussian", "exponential"))
  check_seed(seed, "seed")

  options <- list(sigma2 = sigma2, tau2 = tau2, errors = errors,
                  random_effects = random_effects, seed = seed)
  raw <- rust_simulate(X, Theta, A, options)
  truncated <- raw$truncated / length(raw$Y)
  if (truncated > SIMULATE_TRUNCATION_WARNING) {
    warning(sprintf(paste0("%.1f%% of the simulated values of Y were negative and set ",
                           "to 0, so Y departs from the model. Raise the scores ",
                           "Theta A or lower sigma2 and tau2."), 100 * truncated),
            call. = FALSE)
  }

  Y <- raw$Y
  dimnames(Y) <- list(rownames(X), colnames(A))
  U <- raw$U
  dimnames(U) <- list(colnames(X), colnames(A))
  E <- raw$E
  dimnames(E) <- dimnames(Y)
  list(Y = Y, A = A, U = U, E = E, truncated = truncated,
       truth = list(X = X, Theta = Theta, sigma2 = sigma2, tau2 = tau2,
                    errors = errors, random_effects = random_effects, seed = seed))
}

# Converts a numeric matrix or vector to a finite double matrix; a vector
# becomes one column (columns = TRUE) or one row.
as_simulation_matrix <- function(value, name, columns) {
  if (is.numeric(value) && is.null(dim(value))) {
    value <- if (columns) matrix(value, ncol = 1L) else matrix(value, nrow = 1L)
  }
  if (!is.matrix(value) || !is.numeric(value) || length(value) == 0L) {
    stop(sprintf("`%s` must be a non-empty numeric matrix, not %s.", name,
                 class(value)[1]), call. = FALSE)
  }
  storage.mode(value) <- "double"
  check_finite(value, name)
  value
}
