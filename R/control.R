#' Control settings for nmfre fits
#'
#' Gathers the tuning knobs of [nmfre()] in one object, in the manner of
#' `lme4::lmerControl()`. Every argument has a documented default; most users
#' never change them.
#'
#' @param maxit Maximum number of iterations of the alternating updates,
#'   counting both the published loop and the polishing that follows it.
#' @param epsilon Convergence tolerance on the relative change of the
#'   penalised objective `||Y - X(Theta A + U)||^2 + lambda ||U||^2`.
#' @param seed Seed of the package's own ChaCha20 generator, used for the
#'   random perturbation of the NNDSVDar start. R's random number stream is
#'   not touched.
#' @param sigma2_start,tau2_start Starting values of the residual variance
#'   and the random-effect variance; `lambda = sigma2 / tau2`.
#' @param sigma2_update_from,sigma2_update_every sigma2 is updated as
#'   `0.95 sigma2 + 0.05 mean(R^2)` from iteration `sigma2_update_from` on, at
#'   every iteration that is a multiple of `sigma2_update_every`.
#' @param update_tau2 When the df cap is off, update tau2 at every iteration
#'   (`TRUE`) or hold it at `tau2_start` (`FALSE`).
#' @param polish After the relative-change rule stops the published loop,
#'   continue the same updates, with the variances moved to their fixed
#'   points, until one iteration changes no entry of X or Theta by more than
#'   `kkt_tolerance` relative to its value. The relative change of the
#'   objective can fall below `epsilon` while the multiplicative updates are
#'   still creeping, so without polishing the stopping point, and so Theta
#'   in its second or third digit, can depend on the seed.
#' @param kkt_tolerance Tolerance on the fixed-point residuals of X and
#'   Theta: the largest relative change of an entry in one iteration. For a
#'   multiplicative update this is the projected gradient in its scaled
#'   (complementarity) form, so it does not depend on the units of Y: an
#'   entry off the floor 1e-10 changes unless its gradient vanishes, an
#'   entry on the floor grows when its gradient points away from it. For
#'   sign-free Theta the change is relative to the largest entry of its row.
#' @param extrapolate While polishing, take squared extrapolation steps
#'   (SQUAREM, Varadhan and Roland 2008) in the logarithms of X and Theta
#'   every third iteration, each kept only when the fixed-point residual of
#'   one of the two iterations after it is smaller than before the step.
#'   The steps shorten the path without changing the fixed point.
#' @param polish_variances While polishing, move sigma2 (and tau2 when the
#'   cap is off) straight to their fixed points `mean(R^2)` and the tau2
#'   target (the default), so that the fit does not depend on where the
#'   damped schedule stopped. `FALSE` keeps them at the values the damped
#'   schedule reached, which keeps the ridge penalty of the published
#'   algorithm. With the cap on, polishing sets tau2 to the largest value up
#'   to `tau2_start` that keeps dfU within the cap.
#' @param nstart Number of random starts run besides the NNDSVDar start, in
#'   parallel when `threads` is above 1. Start s draws X from stream s of
#'   the ChaCha20 generator seeded with `seed`; the fit with the lowest final
#'   objective is kept and the spread across starts is recorded in
#'   `fit$optimum`.
#' @param df_cap An absolute ceiling on the random effects' effective degrees
#'   of freedom dfU. When given, it replaces the ceiling `df_rate * N * Q`.
#' @param use_cap `FALSE` switches the df cap off; tau2 then follows its own
#'   update and dfU may approach `N * Q`.
#' @param start Optional list of starting values with elements `X`
#'   (P x rank, non-negative), `Theta` (rank x K) and `U` (rank x N).
#' @param basis_prefix Prefix of the basis names (`Basis1`, `Basis2`, ...).
#' @param threads Number of threads for the Rust core. `NULL` uses one thread
#'   for problems with fewer than a million cells in Y and all cores otherwise.
#' @param verbose Print progress messages.
#' @param inference Compute standard errors, tests and bootstrap replicates
#'   for Theta after the fit.
#' @param B Number of multiplier bootstrap replicates; 0 skips the bootstrap.
#' @param weights Distribution of the multiplier weights: `"exponential"`
#'   (Exp(1) - 1), `"rademacher"`, `"mammen"` or `"normal"`. All have mean 0
#'   and variance 1.
#' @param level Confidence level of the intervals in the coefficient table.
#' @param boot_seed Seed of the bootstrap's ChaCha20 streams; replicate `b`
#'   uses stream `b`, so results do not depend on the thread count.
#' @param sigma2_rule Denominator of the conditional residual variance:
#'   `"corrected"` uses `PN - dfU - QK`, `"plain"` uses `PN`, `"fixed"` uses
#'   `PN - QK`.
#' @param information `"corrected"` subtracts the part of the information
#'   absorbed by the fitted random effects (`X'X - X'X M^{-1} X'X`);
#'   `"plain"` uses `X'X`.
#' @param se Which covariance gives the reported standard errors:
#'   `"sandwich"` (robust, the default), `"model"` (inverse information) or
#'   `"max"` (the larger of the two, entry by entry).
#' @param p_side `"one-sided"` tests Theta = 0 against Theta > 0, the default
#'   for non-negative Theta; `"two-sided"` is the default for sign-free Theta.
#'   `NULL` picks the default for the fit.
#' @param keep_replicates Keep the B x QK matrix of bootstrap replicates in the
#'   fit.
#' @return An object of class `"nmfre_control"`.
#' @examples
#' nmfre_control(maxit = 2000, B = 1000, weights = "rademacher")
#' @export
nmfre_control <- function(maxit = 50000, epsilon = 1e-8, seed = 1,
                          sigma2_start = 1, tau2_start = 1,
                          sigma2_update_from = 50, sigma2_update_every = 10,
                          update_tau2 = TRUE, polish = TRUE, kkt_tolerance = 1e-9,
                          polish_variances = TRUE, extrapolate = TRUE, nstart = 0,
                          df_cap = NULL, use_cap = TRUE,
                          start = NULL, basis_prefix = "Basis", threads = NULL,
                          verbose = FALSE, inference = TRUE, B = 500,
                          weights = c("exponential", "rademacher", "mammen", "normal"),
                          level = 0.95, boot_seed = 1,
                          sigma2_rule = c("corrected", "plain", "fixed"),
                          information = c("corrected", "plain"),
                          se = c("sandwich", "model", "max"),
                          p_side = NULL, keep_replicates = FALSE) {
  check_whole(maxit, "maxit", min = 1)
  check_number(epsilon, "epsilon", min = 0, max = 1)
  check_seed(seed, "seed")
  check_number(sigma2_start, "sigma2_start", min = 1e-12, max = 1e12)
  check_number(tau2_start, "tau2_start", min = 1e-12, max = 1e12)
  check_whole(sigma2_update_from, "sigma2_update_from", min = 0)
  check_whole(sigma2_update_every, "sigma2_update_every", min = 1)
  check_flag(update_tau2, "update_tau2")
  check_flag(polish, "polish")
  check_flag(polish_variances, "polish_variances")
  check_flag(extrapolate, "extrapolate")
  check_whole(nstart, "nstart", min = 0, max = 10000)
  check_number(kkt_tolerance, "kkt_tolerance", min = 1e-15, max = 1)
  if (!is.null(df_cap)) check_number(df_cap, "df_cap", min = 1e-8, max = Inf)
  check_flag(use_cap, "use_cap")
  if (!is.null(start) && (!is.list(start) ||
                          !all(names(start) %in% c("X", "Theta", "U")))) {
    stop("`start` must be NULL or a list with elements among X, Theta and U.",
         call. = FALSE)
  }
  if (!is.character(basis_prefix) || length(basis_prefix) != 1L ||
      is.na(basis_prefix)) {
    stop("`basis_prefix` must be a single string, such as \"Basis\".", call. = FALSE)
  }
  if (!is.null(threads)) check_whole(threads, "threads", min = 1, max = 1024)
  check_flag(verbose, "verbose")
  check_flag(inference, "inference")
  check_whole(B, "B", min = 0, max = 1e8)
  if (B == 1) {
    stop("`B` must be 0 (no bootstrap) or at least 2, not 1.", call. = FALSE)
  }
  weights <- match_option(weights, "weights",
                          c("exponential", "rademacher", "mammen", "normal"))
  check_number(level, "level", min = 1e-8, max = 1 - 1e-8)
  check_seed(boot_seed, "boot_seed")
  sigma2_rule <- match_option(sigma2_rule, "sigma2_rule", c("corrected", "plain", "fixed"))
  information <- match_option(information, "information", c("corrected", "plain"))
  se <- match_option(se, "se", c("sandwich", "model", "max"))
  if (!is.null(p_side)) {
    p_side <- match_option(p_side, "p_side", c("one-sided", "two-sided"))
  }
  check_flag(keep_replicates, "keep_replicates")

  structure(
    list(maxit = maxit, epsilon = epsilon, seed = seed,
         sigma2_start = sigma2_start, tau2_start = tau2_start,
         sigma2_update_from = sigma2_update_from,
         sigma2_update_every = sigma2_update_every, update_tau2 = update_tau2,
         polish = polish, kkt_tolerance = kkt_tolerance,
         polish_variances = polish_variances, extrapolate = extrapolate,
         nstart = nstart,
         df_cap = df_cap, use_cap = use_cap, start = start,
         basis_prefix = basis_prefix, threads = threads, verbose = verbose,
         inference = inference, B = B, weights = weights, level = level,
         boot_seed = boot_seed, sigma2_rule = sigma2_rule,
         information = information, se = se, p_side = p_side,
         keep_replicates = keep_replicates),
    class = "nmfre_control"
  )
}

#' @export
print.nmfre_control <- function(x, ...) {
  cat("nmfre control settings\n")
  values <- vapply(unclass(x), function(value) {
    if (is.null(value)) "NULL" else if (is.list(value)) "<list>" else
      paste(format(value), collapse = ", ")
  }, character(1))
  print(noquote(values))
  invisible(x)
}

# Resolves `threads = NULL` to a count suited to the problem size.
resolve_threads <- function(threads, cells) {
  if (!is.null(threads)) return(as.integer(threads))
  if (cells < 1e6) return(1L)
  cores <- parallel::detectCores(logical = FALSE)
  if (is.na(cores) || cores < 1) 1L else as.integer(cores)
}
