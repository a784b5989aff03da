# Data sets used across the tests.

# Orthodont (nlme, shipped with R): 4 ages x 27 children, intercept and male.
orthodont_data <- function() {
  orthodont <- as.data.frame(nlme::Orthodont)
  subjects <- unique(as.character(orthodont$Subject))
  Y <- matrix(orthodont$distance, nrow = 4,
              dimnames = list(paste0("age", c(8, 10, 12, 14)), subjects))
  male <- as.numeric(orthodont$Sex[match(subjects, orthodont$Subject)] == "Male")
  list(Y = Y, A = rbind("(Intercept)" = 1, male = male))
}

# Draws Y = X (Theta A + U) + E with Gaussian U and E, kept non-negative by
# a large intercept, as in the Orthodont design.
simulate_orthodont_like <- function(N, seed, sigma2 = 1, tau2 = 1) {
  set.seed(seed)
  X <- c(0.2308, 0.2409, 0.2566, 0.2717)
  X <- X / sum(X)
  Theta <- c(90.50, 9.43)
  male <- rep(c(1, 0), length.out = N)
  A <- rbind("(Intercept)" = 1, male = male)
  scores <- Theta %*% A + rnorm(N, sd = sqrt(tau2))
  Y <- X %*% scores + matrix(rnorm(4 * N, sd = sqrt(sigma2)), 4, N)
  list(Y = pmax(Y, 0), A = A, X = X, Theta = Theta)
}

# Expects every |actual - expected| to be at most `tolerance` (absolute).
expect_within <- function(actual, expected, tolerance) {
  difference <- max(abs(as.double(actual) - as.double(expected)))
  expect_lte(difference, tolerance,
             label = sprintf("max |%s - expected|", deparse(substitute(actual))))
}

# Draws a P x N problem Y = X (Theta A + U) + E with a known non-negative
# basis X (unit column sums), Theta in [5, 15], A = intercept plus K - 1
# uniform(0, 1) covariates, U ~ N(0, tau2) and E ~ N(0, sigma2); negative
# cells of Y are set to 0.
simulate_nmfre <- function(P, N, Q, K, seed, sigma2 = 0.25, tau2 = 1) {
  set.seed(seed)
  X <- matrix(runif(P * Q), P, Q)
  X <- sweep(X, 2, colSums(X), "/")
  Theta <- matrix(runif(Q * K, 5, 15), Q, K)
  A <- rbind("(Intercept)" = 1,
             matrix(runif((K - 1) * N), K - 1, N,
                    dimnames = list(paste0("a", seq_len(K - 1)), NULL)))
  U <- matrix(rnorm(Q * N, sd = sqrt(tau2)), Q, N)
  Y <- X %*% (Theta %*% A + U) + matrix(rnorm(P * N, sd = sqrt(sigma2)), P, N)
  list(Y = pmax(Y, 0), A = A, X = X, Theta = Theta)
}
