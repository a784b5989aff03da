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
