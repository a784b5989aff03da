# Reference values: MODEL.md's Orthodont check from the method author's
# implementation (Satoh 2026, arXiv:2603.01468): sandwich SE (2.47, 3.06) for
# (intercept, male), bootstrap SE about (2.45, 2.98) at B = 500, one-sided
# p-value for male about 0.001.

orthodont_fit <- function(...) {
  d <- orthodont_data()
  nmfre(d$Y, d$A, rank = 1, df_rate = 0.21, control = nmfre_control(...))
}

test_that("Orthodont standard errors match the reference", {
  fit <- orthodont_fit()
  table <- fit$inference$coefficients
  expect_within(table[, "Std. Error"] / c(2.47, 3.06), c(1, 1), tolerance = 0.01)
  expect_within(table[, "Boot SE"] / table[, "Std. Error"], c(1, 1), tolerance = 0.10)
  expect_gt(table["Basis1:male", "Pr(>z)"], 0.0005)
  expect_lt(table["Basis1:male", "Pr(>z)"], 0.002)
})

test_that("sandwich covariance follows its formulas", {
  fit <- orthodont_fit(B = 0)
  d <- orthodont_data()
  X <- fit$X; U <- fit$U; Theta <- fit$Theta; A <- d$A
  P <- nrow(X); N <- ncol(A); Q <- ncol(X); K <- nrow(A)
  R <- d$Y - X %*% U - X %*% Theta %*% A
  G <- crossprod(X)
  M <- G + fit$lambda * diag(Q)
  dfU <- N * sum(diag(solve(M, G)))
  sigma2 <- sum(R^2) / max(P * N - dfU - Q * K, 1)
  information <- kronecker(tcrossprod(A), G - G %*% solve(M, G)) / sigma2 +
    1e-8 * diag(Q * K)
  H <- solve(information)
  scores <- t(vapply(seq_len(N), function(n) {
    -as.double(crossprod(X, R[, n]) %*% t(A[, n])) / sigma2
  }, double(Q * K)))
  J <- N / (N - 1) * crossprod(scores)
  expect_equal(fit$inference$sigma2, sigma2, tolerance = 1e-10)
  expect_equal(unname(vcov(fit, "sandwich")), H %*% J %*% H, tolerance = 1e-8)
  expect_equal(unname(vcov(fit, "model")), H, tolerance = 1e-8)
})

test_that("bootstrap covariance equals sandwich times (N-1)/N", {
  # Without projection a replicate is theta - H sum_n w_n s_n with weights of
  # mean 0 and variance 1, so its covariance is H (sum_n s_n s_n') H, which is
  # the sandwich H J H times (N - 1)/N. B = 200000 leaves a Monte Carlo error
  # of about 0.3% on each variance.
  fit <- orthodont_fit(B = 0)
  fit <- nmfre_inference(fit, B = 200000, keep_replicates = TRUE, project = FALSE)
  N <- ncol(fit$Y)
  expected <- fit$inference$vcov_sandwich * (N - 1) / N
  observed <- stats::cov(fit$inference$bootstrap$replicates)
  expect_within(diag(observed) / diag(expected), c(1, 1), tolerance = 0.02)
  expect_within(observed[1, 2] / expected[1, 2], 1, tolerance = 0.02)
})

test_that("Wald and percentile intervals cover the truth", {
  # 200 data sets with N = 200 from the model with X and Theta of the
  # Orthodont fit and sigma2 = tau2 = 1. With 200 replicates the binomial
  # standard error of a 95% coverage is 0.015, so [0.88, 0.995] allows for
  # the sandwich's slight conservatism and for the cap (rate 0.21) running
  # close to binding here, which makes intervals a little too narrow.
  covered <- vapply(seq_len(200), function(replicate) {
    d <- simulate_orthodont_like(200, seed = replicate)
    fit <- suppressWarnings(nmfre(d$Y, d$A, rank = 1, df_rate = 0.21,
                                  control = nmfre_control(B = 300)))
    wald <- confint(fit, "Basis1:male")
    boot <- confint(fit, "Basis1:male", method = "boot")
    c(wald = wald[1] <= 9.43 && 9.43 <= wald[2],
      boot = boot[1] <= 9.43 && 9.43 <= boot[2])
  }, logical(2))
  coverage <- rowMeans(covered)
  expect_gte(coverage[["wald"]], 0.88)
  expect_lte(coverage[["wald"]], 0.995)
  expect_gte(coverage[["boot"]], 0.88)
  expect_lte(coverage[["boot"]], 0.995)
})

test_that("bootstrap replicates do not depend on threads", {
  one <- orthodont_fit(threads = 1, keep_replicates = TRUE, B = 20000)
  two <- orthodont_fit(threads = 2, keep_replicates = TRUE, B = 20000)
  expect_identical(one$inference$bootstrap$replicates, two$inference$bootstrap$replicates)
})

test_that("bootstrap is reproducible from its seed", {
  first <- orthodont_fit(boot_seed = 5)
  second <- orthodont_fit(boot_seed = 5)
  third <- orthodont_fit(boot_seed = 6)
  expect_identical(first$inference$bootstrap$se, second$inference$bootstrap$se)
  expect_false(identical(first$inference$bootstrap$se, third$inference$bootstrap$se))
})

test_that("every weight distribution gives similar bootstrap SEs", {
  fit <- orthodont_fit(B = 0)
  for (weights in c("exponential", "rademacher", "mammen", "normal")) {
    boot <- nmfre_inference(fit, B = 4000, weights = weights, project = FALSE)
    ratio <- boot$inference$bootstrap$se / sqrt(diag(boot$inference$vcov_sandwich))
    expect_within(ratio, c(1, 1), tolerance = 0.06)
  }
})

test_that("projection keeps replicates non-negative", {
  fit <- orthodont_fit(B = 2000, keep_replicates = TRUE)
  expect_true(all(fit$inference$bootstrap$replicates >= 0))
  expect_true(fit$inference$project)
})

test_that("p-value side follows Theta's constraint", {
  d <- orthodont_data()
  free <- nmfre(d$Y, d$A, rank = 1, df_rate = 0.21, theta = "free",
                control = nmfre_control(B = 0))
  expect_identical(free$inference$p_side, "two-sided")
  table <- free$inference$coefficients
  expect_equal(table[, "Pr(>|z|)"], 2 * pnorm(-abs(table[, "z value"])), tolerance = 1e-12)
  nonneg <- orthodont_fit(B = 0)
  table <- nonneg$inference$coefficients
  expect_equal(table[, "Pr(>z)"], pnorm(table[, "z value"], lower.tail = FALSE))
  two <- nmfre_inference(nonneg, p_side = "two-sided")
  expect_true("Pr(>|z|)" %in% colnames(two$inference$coefficients))
})

test_that("se choice selects the covariance", {
  fit <- orthodont_fit(B = 0)
  model <- nmfre_inference(fit, se = "model")
  expect_identical(vcov(model), vcov(model, "model"))
  largest <- nmfre_inference(fit, se = "max")
  expect_equal(diag(vcov(largest)), pmax(diag(vcov(fit, "sandwich")), diag(vcov(fit, "model"))))
})

test_that("Wald intervals are estimate plus or minus z SE", {
  fit <- orthodont_fit(B = 0)
  se <- sqrt(diag(vcov(fit)))
  expected <- cbind(as.double(fit$Theta) - qnorm(0.95) * se,
                    as.double(fit$Theta) + qnorm(0.95) * se)
  expect_equal(unname(confint(fit, level = 0.9)), unname(expected))
  expect_identical(rownames(confint(fit)), c("Basis1:(Intercept)", "Basis1:male"))
  expect_error(confint(fit, method = "boot"), "No bootstrap replicates")
  expect_error(confint(fit, "Basis9:male"), "Unknown coefficient")
})

test_that("joint Wald test with one basis is z squared", {
  fit <- orthodont_fit(B = 0)
  tests <- anova(fit)
  z <- fit$inference$coefficients[, "z value"]
  expect_equal(tests["covariate: male", "Chisq"], unname(z[2]^2), tolerance = 1e-10)
  expect_equal(tests["covariate: male", "Df"], 1)
  expect_equal(tests["basis: Basis1", "Df"], 2)
  theta <- as.double(fit$Theta)
  expect_equal(tests["basis: Basis1", "Chisq"],
               as.double(theta %*% solve(vcov(fit), theta)), tolerance = 1e-10)
})

test_that("vcov is named basis:covariate in vec order", {
  d <- orthodont_data()
  fit <- nmfre(d$Y, d$A, rank = 2, df_rate = 0.3, control = nmfre_control(B = 0))
  expect_identical(rownames(vcov(fit)),
                   c("Basis1:(Intercept)", "Basis2:(Intercept)", "Basis1:male", "Basis2:male"))
  expect_true(isSymmetric(vcov(fit)))
})

test_that("nmfre_inference rejects unknown or unnamed settings", {
  fit <- orthodont_fit(B = 0)
  expect_error(nmfre_inference(fit, Bee = 3), "Unknown setting")
  expect_error(nmfre_inference(fit, 3), "must be named")
  expect_error(nmfre_inference(list()), "must be an \"nmfre\" object")
  expect_error(nmfre_inference(fit, B = 1), "at least 2")
})
