# Times the Rust core against the plain-R oracle of the estimation loop
# (tests/testthat/helper-reference.R) on the same problem, from the same
# start, for the same number of iterations (epsilon = 0, fixed maxit), and
# prints the time per iteration of each and the ratio R / Rust.
#
# Run from anywhere after installing nmfre, for example from the package
# root:
#   R CMD INSTALL --no-multiarch -l .Rlib .
#   R_LIBS=$PWD/.Rlib Rscript inst/bench/oracle.R
# The oracle is read from ../../tests/testthat/helper-reference.R relative
# to this script, or from the file named by the environment variable
# NMFRE_ORACLE. NMFRE_BENCH_ITERATIONS multiplies the iteration counts
# (default 1), for steadier timings on a noisy machine.
#
# Problems: Orthodont (nlme; rank 1, df_rate 0.21), Holzinger-Swineford 1939
# (lavaan; the nine test scores of 301 pupils, covariates reversed age,
# girl and Grant-White school, each scaled to [0, 1], no intercept; rank 3,
# df_rate 0.96) and a synthetic P = 100, N = 10000, rank 5, K = 4 problem.
#
# Time per iteration is (t(maxit) - t(1)) / (maxit - 1), so that the fixed
# costs of a call (argument checks, copying Y, fitted values) do not count
# as iteration time. Rust times are medians of 3 runs; R is run once.
# The Rust core runs on 1 thread, as R's reference BLAS does, and also with
# the package's default thread count when that differs.
#
# Target: R / Rust >= 50 on Holzinger-Swineford and the synthetic problem,
# judged at the package's default thread count.

library(nmfre)

script_directory <- function() {
  file <- sub("^--file=", "", grep("^--file=", commandArgs(FALSE), value = TRUE))
  if (length(file) == 1L) dirname(normalizePath(file)) else "."
}
here <- script_directory()
oracle <- Sys.getenv("NMFRE_ORACLE",
                     file.path(here, "..", "..", "tests", "testthat", "helper-reference.R"))
if (!file.exists(oracle)) {
  stop(sprintf(paste0("Oracle not found at %s. Run this script from the package ",
                      "sources or set NMFRE_ORACLE to tests/testthat/helper-reference.R."),
               oracle), call. = FALSE)
}
source(oracle)
source(file.path(here, "synthetic.R"))
iteration_scale <- as.numeric(Sys.getenv("NMFRE_BENCH_ITERATIONS", "1"))

orthodont_problem <- function() {
  orthodont <- as.data.frame(nlme::Orthodont)
  subjects <- unique(as.character(orthodont$Subject))
  male <- as.numeric(orthodont$Sex[match(subjects, orthodont$Subject)] == "Male")
  list(name = "Orthodont", Y = matrix(orthodont$distance, nrow = 4),
       A = rbind("(Intercept)" = 1, male = male), rank = 1, df_rate = 0.21,
       maxit = 20000)
}

holzinger_problem <- function() {
  hs <- lavaan::HolzingerSwineford1939
  scale01 <- function(x) (x - min(x)) / (max(x) - min(x))
  age <- hs$ageyr + hs$agemo / 12
  A <- rbind(reversed_age = scale01(max(age) - age),
             girl = scale01(as.numeric(hs$sex == 2)),
             grant_white = scale01(as.numeric(hs$school == "Grant-White")))
  list(name = "Holzinger-Swineford", Y = t(as.matrix(hs[paste0("x", 1:9)])), A = A,
       rank = 3, df_rate = 0.96, maxit = 10000)
}

synthetic_problem <- function() {
  data <- simulate_problem(P = 100, N = 10000, Q = 5, K = 4, seed = 1)
  list(name = "synthetic", Y = data$Y, A = data$A, rank = 5, df_rate = 0.1, maxit = 200)
}

# uniform(0.5, 1.5) loadings, Theta = 1 and U = 0.
bench_start <- function(problem, seed = 1) {
  set.seed(seed)
  P <- nrow(problem$Y)
  Q <- problem$rank
  list(X = matrix(runif(P * Q, 0.5, 1.5), P, Q),
       Theta = matrix(1, Q, nrow(problem$A)),
       U = matrix(0, Q, ncol(problem$Y)))
}

elapsed <- function(expression) system.time(expression)[["elapsed"]]

fit_rust <- function(problem, start, maxit, threads) {
  control <- nmfre_control(start = start, maxit = maxit, epsilon = 0, inference = FALSE,
                           threads = threads)
  # A fixed maxit with epsilon = 0 always ends unconverged; that warning
  # and a binding cap are expected here.
  suppressWarnings(nmfre(problem$Y, problem$A, rank = problem$rank,
                         df_rate = problem$df_rate, control = control))
}

fit_oracle <- function(problem, start, maxit) {
  reference_fit(problem$Y, problem$A, start, cap = "rate", cap_value = problem$df_rate,
                maxit = maxit, epsilon = 0)
}

relative_difference <- function(actual, expected) {
  max(abs(as.double(actual) - as.double(expected))) / max(abs(as.double(expected)))
}

bench_problem <- function(problem) {
  maxit <- max(2, round(problem$maxit * iteration_scale))
  start <- bench_start(problem)

  oracle_one <- elapsed(fit_oracle(problem, start, 1))
  oracle_full <- elapsed(reference <- fit_oracle(problem, start, maxit))
  oracle_per_iteration <- (oracle_full - oracle_one) / (maxit - 1)

  default_threads <- nmfre:::resolve_threads(NULL, length(problem$Y))
  rows <- list()
  for (threads in unique(c(1L, default_threads))) {
    rust_one <- median(replicate(3, elapsed(fit_rust(problem, start, 1, threads))))
    rust_full <- median(replicate(3, elapsed(fit_rust(problem, start, maxit, threads))))
    rust <- fit_rust(problem, start, maxit, threads)
    rust_per_iteration <- (rust_full - rust_one) / (maxit - 1)
    difference <- max(relative_difference(rust$Theta, reference$Theta),
                      relative_difference(rust$X, reference$X),
                      relative_difference(rust$objective, reference$objective))
    rows[[length(rows) + 1L]] <- data.frame(
      problem = problem$name, P = nrow(problem$Y), N = ncol(problem$Y),
      Q = problem$rank, K = nrow(problem$A), iterations = maxit, threads = threads,
      R_ms = 1000 * oracle_per_iteration, Rust_ms = 1000 * rust_per_iteration,
      ratio = oracle_per_iteration / rust_per_iteration,
      max_rel_diff = difference
    )
  }
  do.call(rbind, rows)
}

options(width = 200)
cat("Rust core against the plain-R oracle: time per iteration (ms)\n")
cat(sprintf("R %s, %s\n", getRversion(), extSoftVersion()[["BLAS"]]))
results <- list()
for (make_problem in list(orthodont_problem, holzinger_problem, synthetic_problem)) {
  problem <- make_problem()
  results[[length(results) + 1L]] <- bench_problem(problem)
  rm(problem)
  invisible(gc())
}
table <- do.call(rbind, results)
print(format(table, digits = 3), row.names = FALSE)

cat("\nTarget: R / Rust >= 50 on Holzinger-Swineford and synthetic.\n")
cat("Judged at the package's default thread count (1 for small problems, all\n")
cat("cores for large ones); the 1-thread ratio is shown beside it.\n")
for (name in c("Holzinger-Swineford", "synthetic")) {
  rows <- table[table$problem == name, ]
  default_row <- rows[which.max(rows$threads), ]
  single_row <- rows[rows$threads == 1, ]
  cat(sprintf("  %-20s ratio %6.1f at the default %d thread(s) -> %s; %6.1f at 1 thread\n",
              name, default_row$ratio, default_row$threads,
              if (default_row$ratio >= 50) "met" else "NOT met", single_row$ratio))
}
