# Synthetic NMF-RE problems for the benchmarks, sourced by oracle.R and
# scaling.R.

# Draws Y = X (Theta A + U) + E (P x N) with a known basis X (unit column
# sums), Theta in [5, 15], A = intercept plus K - 1 uniform(0, 1)
# covariates, U ~ N(0, 1) and E ~ N(0, 0.25), negative cells set to 0.
# Y is filled `chunk` columns at a time, with a garbage collection after
# each chunk so that the temporaries of earlier chunks do not pile up: the
# peak memory of a caller is then Y plus a few P x chunk matrices.
simulate_problem <- function(P, N, Q, K, seed = 1, chunk = 2e4) {
  set.seed(seed)
  X <- matrix(runif(P * Q), P, Q)
  X <- sweep(X, 2, colSums(X), "/")
  Theta <- matrix(runif(Q * K, 5, 15), Q, K)
  A <- rbind("(Intercept)" = 1,
             matrix(runif((K - 1) * N), K - 1, N,
                    dimnames = list(paste0("a", seq_len(K - 1)), NULL)))
  Y <- matrix(0, P, N)
  for (first in seq(1, N, by = chunk)) {
    columns <- first:min(first + chunk - 1, N)
    scores <- Theta %*% A[, columns, drop = FALSE] +
      matrix(rnorm(Q * length(columns)), Q, length(columns))
    noise <- matrix(rnorm(P * length(columns), sd = 0.5), P, length(columns))
    Y[, columns] <- pmax(X %*% scores + noise, 0)
    invisible(gc())
  }
  list(Y = Y, A = A)
}

