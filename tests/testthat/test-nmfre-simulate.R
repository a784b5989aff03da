# nmfre_simulate(): draws from Y = X (Theta A + U) + E with the core's
# ChaCha20 generator.

simulation_design <- function(N) {
  X <- cbind(early = c(0.6, 0.3, 0.1), late = c(0.1, 0.3, 0.6))
  Theta <- cbind("(Intercept)" = c(20, 15), group = c(5, 0))
  A <- rbind("(Intercept)" = 1, group = rep(0:1, length.out = N))
  list(X = X, Theta = Theta, A = A)
}

# Checks that the sample mean and variance of `values` match mean 0 and
# `variance`. Bounds are 4 standard errors: sqrt(v / n) for the mean, and
# sqrt((mu4 - v^2) / n) for the variance, where the fourth central moment
# mu4 is 3 v^2 for Gaussian and 9 v^2 for centred exponential draws.
expect_moments <- function(values, variance, distribution) {
  n <- length(values)
  kurtosis <- if (distribution == "gaussian") 3 else 9
  expect_lte(abs(mean(values)), 4 * sqrt(variance / n))
  expect_lte(abs(var(values) - variance), 4 * variance * sqrt((kurtosis - 1) / n))
}

test_that("simulated U and E have the stated moments", {
  d <- simulation_design(N = 5000)
  for (distribution in c("gaussian", "exponential")) {
    sim <- nmfre_simulate(d$X, d$Theta, d$A, sigma2 = 2, tau2 = 0.5,
                          errors = distribution, random_effects = distribution, seed = 3)
    # U: 2 x 5000 = 10,000 draws; E: 3 x 5000 = 15,000 draws.
    expect_moments(as.vector(sim$U), 0.5, distribution)
    expect_moments(as.vector(sim$E), 2, distribution)
  }
})

test_that("exponential draws are skewed and bounded below", {
  d <- simulation_design(N = 5000)
  sim <- nmfre_simulate(d$X, d$Theta, d$A, sigma2 = 2, tau2 = 0.5,
                        errors = "exponential", random_effects = "gaussian", seed = 4)
  # sqrt(2) (Exp(1) - 1) is at least -sqrt(2) and has skewness 2; the
  # skewness of 15,000 draws has a standard error of about 0.1 here.
  expect_gte(min(sim$E), -sqrt(2))
  skewness <- mean((sim$E - mean(sim$E))^3) / sd(as.vector(sim$E))^3
  expect_lte(abs(skewness - 2), 0.5)
  # Gaussian U has skewness 0.
  expect_lte(abs(mean(sim$U^3) / sd(as.vector(sim$U))^3), 0.2)
})

test_that("simulated Y follows the model equation", {
  d <- simulation_design(N = 200)
  sim <- nmfre_simulate(d$X, d$Theta, d$A, sigma2 = 1, tau2 = 1, seed = 5)
  expect_identical(sim$truncated, 0)
  expect_equal(sim$Y, d$X %*% (d$Theta %*% d$A + sim$U) + sim$E,
               tolerance = 1e-12, ignore_attr = TRUE)
  expect_identical(dim(sim$Y), c(3L, 200L))
  expect_identical(rownames(sim$U), c("early", "late"))
  expect_identical(sim$truth$Theta, d$Theta)
  expect_identical(sim$A, d$A)
})

test_that("seed fixes the draws and leaves R's generator alone", {
  d <- simulation_design(N = 50)
  set.seed(123)
  before <- .Random.seed
  first <- nmfre_simulate(d$X, d$Theta, d$A, seed = 8)
  expect_identical(.Random.seed, before)
  second <- nmfre_simulate(d$X, d$Theta, d$A, seed = 8)
  other <- nmfre_simulate(d$X, d$Theta, d$A, seed = 9)
  expect_identical(first$Y, second$Y)
  expect_false(identical(first$Y, other$Y))
})

test_that("negative values are truncated and reported", {
  d <- simulation_design(N = 400)
  # Scores near 1 with error SD 2 make many entries negative.
  Theta <- cbind("(Intercept)" = c(1, 1), group = c(0, 0))
  expect_warning(sim <- nmfre_simulate(d$X, Theta, d$A, sigma2 = 4, tau2 = 0.1, seed = 2),
                 "were negative and set to 0")
  expect_true(all(sim$Y >= 0))
  expect_gt(sim$truncated, 0.01)
  expect_equal(sim$truncated, mean(sim$Y == 0))
  # U and E are returned as drawn, so Y is max(X (Theta A + U) + E, 0).
  expect_equal(sim$Y, pmax(d$X %*% (Theta %*% d$A + sim$U) + sim$E, 0),
               tolerance = 1e-12, ignore_attr = TRUE)
})

test_that("simulate rejects mismatched or invalid inputs", {
  d <- simulation_design(N = 10)
  expect_error(nmfre_simulate(d$X, d$Theta[, 1, drop = FALSE], d$A), "must be 2 x 2")
  expect_error(nmfre_simulate(-d$X, d$Theta, d$A), "non-negative")
  expect_error(nmfre_simulate(d$X, d$Theta, d$A, sigma2 = -1), "`sigma2` must be")
  expect_error(nmfre_simulate(d$X, d$Theta, d$A, errors = "t"), "`errors` must be one of")
  expect_error(nmfre_simulate(d$X, d$Theta, d$A, seed = 1.5), "`seed` must be")
  A <- d$A
  A[1, 1] <- NA
  expect_error(nmfre_simulate(d$X, d$Theta, A), "missing or non-finite")
})
