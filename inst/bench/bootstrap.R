# Times the multiplier bootstrap: B = 10000 one-step Newton replicates on a
# simulated problem with N = 300 units, P = 10 measurements, Q = 3 bases and
# K = 3 covariates (intercept and two uniform covariates).
#
# Run from the package root after installing nmfre:
#   Rscript inst/bench/bootstrap.R
# The target is under 0.5 s for the inference call on a 2-core machine.
library(nmfre)

set.seed(20261204)
P <- 10; N <- 300; Q <- 3; K <- 3
X <- matrix(runif(P * Q), P, Q)
X <- sweep(X, 2, colSums(X), "/")
A <- rbind("(Intercept)" = 1, a1 = runif(N), a2 = runif(N))
Theta <- matrix(runif(Q * K, 5, 20), Q, K)
Y <- X %*% (Theta %*% A + matrix(rnorm(Q * N), Q, N)) + matrix(rnorm(P * N, sd = 0.3), P, N)
Y <- pmax(Y, 0)

# The cap binds on this synthetic problem; that does not affect the timing.
fit <- suppressWarnings(
  nmfre(Y, A, rank = Q, df_rate = 0.3, control = nmfre_control(inference = FALSE))
)
cat(sprintf("fit: %d iterations, converged = %s\n", fit$iterations, fit$converged))

for (threads in c(1, 2)) {
  times <- vapply(1:5, function(i) {
    system.time(nmfre_inference(fit, B = 10000, threads = threads))[["elapsed"]]
  }, double(1))
  cat(sprintf("B = 10000, threads = %d: median %.3f s over 5 runs (target < 0.5 s, ratio to target %.2f)\n",
              threads, stats::median(times), stats::median(times) / 0.5))
}
