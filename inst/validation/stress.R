# Stress test of the df cap: a simulation study of inference on a covariate
# effect when the random-effect variance starts far too large.
#
# Design: P = 4 measurements, rank Q = 3, N = 100 units (50 with male = 1).
# True bases: early-heavy (0.45, 0.30, 0.15, 0.10), flat (0.25 each) and
# late-heavy (0.10, 0.15, 0.30, 0.45). Theta: intercept 90.502 / 3 on each
# basis; male effect 9.4285 on the first basis only (alternative) or 0
# (null). sigma2 = tau2 = 1, Gaussian U and E (nmfre_simulate()). Every fit
# starts at tau2 = 1000, so lambda = sigma2 / tau2 starts at 0.001 and dfU
# near its maximum N Q = 300.
#
# Settings (STRESS_SETTINGS): cap rate 0.21; cap rate 0.99; cap off with
# tau2 held at 1000, the failure the cap exists to prevent, stopped after
# CAP_OFF_MAXIT = 5000 iterations because these fits do not converge. The
# diagnostic settings (STRESS_START_SETTINGS) repeat cap 0.21 and cap off
# from a covariate NMF fit (Y ~ X Theta A, no random effects) instead of
# the NNDSVDar start, with the default certified fit and with the published
# loop alone (polish = FALSE), which stops before the fixed point.
#
# Summaries for Theta[Basis1, male]: bias, Monte Carlo SD, RMSE, mean
# sandwich SE, mean bootstrap SE, rejection rate of the one-sided test at
# 5%, coverage of the 95% Wald and bootstrap percentile intervals, mean
# dfU / (N Q), share of fits whose cap binds at the end (dfU / cap >= 0.99),
# share converged (certified at a fixed point, or for the published loop
# alone its stopping rule met), share whose published stopping rule was met
# (the first phase of a certified fit), mean iterations, and two summaries of the fitted basis:
# the mean of X[1, 1] (0.45 in truth) and of the smallest eigenvalue of
# X'X (0.0017 in truth: the flat basis is close to the mean of the others,
# so the true X is nearly collinear). Last, the same for the male effect
# summed over the three bases (9.4285 or 0 in truth): bias, Monte Carlo SD,
# mean sandwich SE (from vcov()) and Wald coverage. Because X's columns sum
# to 1, this sum is the sex difference summed over the P measurements, which
# does not depend on how the fit splits the nearly collinear bases.
#
# Run the full study from the package's root after installing it:
#   R_LIBS=.Rlib Rscript inst/validation/stress.R [replicates] [B] [cores]
# (defaults 500, 500 and all cores; `make stress` does this), and add
# --nmf-start to run the diagnostic settings instead. Sourcing the file only
# defines the functions, so the vignette can run a reduced study.

# Each setting: the cap rate (NULL for no cap), changes to nmfre_control()
# and whether to start from a covariate NMF fit instead of NNDSVDar.
CAP_OFF_MAXIT <- 5000
CAP_OFF <- list(use_cap = FALSE, update_tau2 = FALSE, maxit = CAP_OFF_MAXIT)
STRESS_SETTINGS <- list(
  "cap 0.21" = list(df_rate = 0.21, control = list(), nmf_start = FALSE),
  "cap 0.99" = list(df_rate = 0.99, control = list(), nmf_start = FALSE),
  "cap off" = list(df_rate = NULL, control = CAP_OFF, nmf_start = FALSE)
)
# Diagnostics for the comparison with the method author's runs, which
# started from a covariate NMF fit.
STRESS_START_SETTINGS <- list(
  "cap 0.21, NMF start" = list(df_rate = 0.21, control = list(), nmf_start = TRUE),
  "cap off, NMF start" = list(df_rate = NULL, control = CAP_OFF, nmf_start = TRUE),
  "cap 0.21, NMF start, published loop" =
    list(df_rate = 0.21, control = list(polish = FALSE), nmf_start = TRUE),
  "cap off, NMF start, published loop" =
    list(df_rate = NULL, control = c(CAP_OFF, polish = FALSE), nmf_start = TRUE)
)

stress_truth <- function(hypothesis = c("alternative", "null")) {
  hypothesis <- match.arg(hypothesis)
  X <- cbind(early = c(0.45, 0.30, 0.15, 0.10), flat = rep(0.25, 4),
             late = c(0.10, 0.15, 0.30, 0.45))
  male <- if (hypothesis == "alternative") 9.4285 else 0
  Theta <- cbind("(Intercept)" = rep(90.502 / 3, 3), male = c(male, 0, 0))
  A <- rbind("(Intercept)" = 1, male = rep(0:1, length.out = 100))
  list(X = X, Theta = Theta, A = A, effect = male, total_effect = sum(Theta[, "male"]))
}

# Fits one setting (an element of STRESS_SETTINGS) and returns the
# summaries of Theta[1, "male"] and of the fitted basis.
stress_fit <- function(Y, A, setting, B) {
  settings <- utils::modifyList(list(tau2_start = 1000, B = B, threads = 1),
                                setting$control)
  if (setting$nmf_start) settings$start <- plain_nmf_start(Y, A)
  control <- do.call(nmfre::nmfre_control, settings)
  df_rate <- if (is.null(setting$df_rate)) 0.1 else setting$df_rate
  fit <- suppressWarnings(nmfre::nmfre(Y, A, rank = 3, df_rate = df_rate, control = control))

  table <- fit$inference$coefficients
  row <- "Basis1:male"
  # The male effect summed over the bases: the sex difference summed over
  # the P measurements, because X's columns sum to 1. Unlike the effect on
  # basis 1, it does not depend on how the fit splits the bases.
  male_rows <- grep(":male$", rownames(table))
  weights <- as.numeric(seq_len(nrow(table)) %in% male_rows)
  total_se <- sqrt(drop(crossprod(weights, stats::vcov(fit) %*% weights)))
  c(estimate = table[row, "Estimate"], se = table[row, "Std. Error"],
    total = sum(table[male_rows, "Estimate"]), total_se = total_se,
    boot_se = table[row, "Boot SE"], p = table[row, "Pr(>z)"],
    lower = table[row, "boot 2.5 %"], upper = table[row, "boot 97.5 %"],
    dfU_share = fit$dfU / (ncol(Y) * fit$rank),
    binding = if (fit$cap$type == "off") NA else as.numeric(fit$cap$binding),
    converged = as.numeric(fit$converged),
    published_met = as.numeric(fit$converged || fit$optimum$paper_iterations < fit$iterations),
    iterations = fit$iterations,
    x_first = unname(fit$X[1, 1]),
    min_eigen = min(eigen(crossprod(fit$X), only.values = TRUE)$values))
}

# X and Theta of a covariate NMF fit without random effects, Y ~ X Theta A:
# an absolute cap of 1e-6 degrees of freedom keeps U at 0 up to 1e-6.
plain_nmf_start <- function(Y, A) {
  fit <- suppressWarnings(nmfre::nmfre(Y, A, rank = 3, control = nmfre::nmfre_control(
    df_cap = 1e-6, inference = FALSE, threads = 1)))
  list(X = unname(fit$X), Theta = unname(fit$Theta))
}

# Runs every setting on replicate `replicate` of one hypothesis; the
# replicate number is the simulation seed and the bootstrap seed.
stress_replicate <- function(replicate, hypothesis, settings, B) {
  truth <- stress_truth(hypothesis)
  sim <- nmfre::nmfre_simulate(truth$X, truth$Theta, truth$A, sigma2 = 1, tau2 = 1,
                               seed = replicate)
  rows <- lapply(settings, function(setting) {
    setting$control$boot_seed <- replicate
    stress_fit(sim$Y, sim$A, setting, B)
  })
  data.frame(hypothesis = hypothesis, replicate = replicate, setting = names(settings),
             truth = truth$effect, total_truth = truth$total_effect, do.call(rbind, rows),
             stringsAsFactors = FALSE)
}

# Runs the study and returns the per-fit results; summarise them with
# stress_summary(). Replicates run in parallel over `cores` processes.
run_stress_study <- function(replicates = 500, B = 500, settings = STRESS_SETTINGS,
                             hypotheses = c("alternative", "null"),
                             cores = parallel::detectCores()) {
  jobs <- expand.grid(replicate = seq_len(replicates), hypothesis = hypotheses,
                      stringsAsFactors = FALSE)
  run_job <- function(i) stress_replicate(jobs$replicate[i], jobs$hypothesis[i], settings, B)
  results <- if (cores > 1 && .Platform$OS.type == "unix") {
    parallel::mclapply(seq_len(nrow(jobs)), run_job, mc.cores = cores)
  } else {
    lapply(seq_len(nrow(jobs)), run_job)
  }
  failed <- vapply(results, inherits, logical(1), what = "try-error")
  if (any(failed)) stop("stress study: ", results[[which(failed)[1]]], call. = FALSE)
  do.call(rbind, results)
}

# Summarises per-fit results by setting and hypothesis.
stress_summary <- function(results, level = 0.95) {
  z <- stats::qnorm(1 - (1 - level) / 2)
  groups <- split(results, list(results$setting, results$hypothesis), drop = TRUE)
  rows <- lapply(groups, function(g) {
    error <- g$estimate - g$truth
    data.frame(
      setting = g$setting[1], hypothesis = g$hypothesis[1], fits = nrow(g),
      bias = mean(error), mc_sd = stats::sd(g$estimate), rmse = sqrt(mean(error^2)),
      mean_se = mean(g$se), mean_boot_se = mean(g$boot_se),
      reject = mean(g$p < 1 - level),
      wald_cover = mean(abs(error) <= z * g$se),
      pct_cover = mean(g$lower <= g$truth & g$truth <= g$upper),
      dfU_share = mean(g$dfU_share), cap_binds = mean(g$binding),
      converged = mean(g$converged), published_met = mean(g$published_met),
      iterations = mean(g$iterations),
      x_first = mean(g$x_first), min_eigen = mean(g$min_eigen),
      total_bias = mean(g$total - g$total_truth), total_sd = stats::sd(g$total),
      total_se = mean(g$total_se),
      total_cover = mean(abs(g$total - g$total_truth) <= z * g$total_se),
      stringsAsFactors = FALSE)
  })
  out <- do.call(rbind, rows)
  known <- names(c(STRESS_SETTINGS, STRESS_START_SETTINGS))
  order <- order(match(out$setting, known), out$hypothesis)
  out <- out[order, ]
  rownames(out) <- NULL
  out
}

if (sys.nframe() == 0L) {
  args <- commandArgs(trailingOnly = TRUE)
  with_starts <- "--nmf-start" %in% args
  numbers <- as.numeric(args[args != "--nmf-start"])
  replicates <- if (length(numbers) >= 1) numbers[1] else 500
  B <- if (length(numbers) >= 2) numbers[2] else 500
  cores <- if (length(numbers) >= 3) numbers[3] else parallel::detectCores()
  settings <- if (with_starts) STRESS_START_SETTINGS else STRESS_SETTINGS
  cat(sprintf(paste0("Stress study: %d replicates per hypothesis, B = %d, %d cores, ",
                     "cap-off maxit %d, settings: %s\n"),
              replicates, B, cores, CAP_OFF_MAXIT, paste(names(settings), collapse = "; ")))
  elapsed <- system.time(results <- run_stress_study(replicates, B, settings, cores = cores))
  print(format(stress_summary(results), digits = 3), row.names = FALSE)
  cpu <- sum(elapsed[c("user.self", "sys.self", "user.child", "sys.child")], na.rm = TRUE)
  cat(sprintf("Elapsed: %.0f s; CPU time over all processes: %.0f s\n",
              elapsed[["elapsed"]], cpu))
}
