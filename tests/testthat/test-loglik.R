# logLik() against the dense Gaussian density: each column of Y is
# N(X Theta a_n, sigma2 I + tau2 X X'), evaluated here with a Cholesky
# factor of the P x P covariance.

dense_loglik <- function(Y, X, Theta, A, sigma2, tau2) {
  P <- nrow(Y)
  Sigma <- sigma2 * diag(P) + tau2 * tcrossprod(X)
  R <- chol(Sigma)
  means <- X %*% Theta %*% A
  total <- 0
  for (n in seq_len(ncol(Y))) {
    z <- backsolve(R, Y[, n] - means[, n], transpose = TRUE)
    total <- total - P / 2 * log(2 * pi) - sum(log(diag(R))) - sum(z^2) / 2
  }
  total
}

test_that("logLik equals the dense marginal density", {
  simulated <- simulate_orthodont_like(N = 30, seed = 11)
  fit <- nmfre(simulated$Y, simulated$A, rank = 2, df_rate = 0.8, control = quiet())
  expected <- dense_loglik(fit$Y, fit$X, fit$Theta, fit$A, fit$sigma2, fit$tau2)
  expect_equal(as.double(logLik(fit)), expected, tolerance = 1e-10)
})

test_that("logLik equals dense density with cap binding", {
  d <- orthodont_data()
  fit <- nmfre(d$Y, d$A, rank = 1, control = nmfre_control(inference = FALSE, df_cap = 1))
  expect_true(fit$cap$hit)
  expected <- dense_loglik(fit$Y, fit$X, fit$Theta, fit$A, fit$sigma2, fit$tau2)
  expect_equal(as.double(logLik(fit)), expected, tolerance = 1e-10)
})

test_that("logLik counts parameters and units", {
  simulated <- simulate_orthodont_like(N = 30, seed = 11)
  fit <- nmfre(simulated$Y, simulated$A, rank = 2, df_rate = 0.8, control = quiet())
  value <- logLik(fit)
  # P = 4, Q = 2, K = 2: X has PQ - Q = 6 free entries, Theta 4, variances 2.
  expect_identical(attr(value, "df"), 12)
  expect_identical(attr(value, "nobs"), 30L)
})

test_that("AIC and BIC follow from logLik", {
  simulated <- simulate_orthodont_like(N = 30, seed = 11)
  fit <- nmfre(simulated$Y, simulated$A, rank = 2, df_rate = 0.8, control = quiet())
  value <- as.double(logLik(fit))
  expect_equal(AIC(fit), -2 * value + 2 * 12)
  expect_equal(BIC(fit), -2 * value + log(30) * 12)
})
