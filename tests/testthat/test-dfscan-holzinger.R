# The df cap scan on Holzinger and Swineford (1939), as shipped in lavaan:
# nine test scores x1..x9 (P = 9) of N = 301 pupils, rank 3, covariates
# reversed age (oldest 0), girl and Grant-White school, each scaled to
# [0, 1], no intercept.
#
# With the cap on, tau2 stays at its start (1) unless the cap lowers it, so
# lambda = sigma2 / tau2 follows the scale of Y. On the raw scores sigma2
# stays near 2.5, dfU near 114 of N * rank = 903 and no cap from rate 0.8 up
# is ever hit. On scores scaled to [0, 1] test by test, sigma2 falls to
# about 0.015, lambda with it, and dfU rises to the caps at rates 0.8 and
# 0.9 but stays below 903 at rate 1.

holzinger_data <- function(scale_scores) {
  hs <- lavaan::HolzingerSwineford1939
  min_max <- function(v) (v - min(v)) / (max(v) - min(v))
  Y <- t(as.matrix(hs[, paste0("x", 1:9)]))
  if (scale_scores) Y <- t(apply(Y, 1, min_max))
  age <- hs$ageyr + hs$agemo / 12
  A <- rbind(age_reversed = min_max(max(age) - age),
             girl = min_max(as.numeric(hs$sex == 2)),
             grant_white = min_max(as.numeric(hs$school == "Grant-White")))
  list(Y = Y, A = A)
}

test_that("Holzinger-Swineford cap binds at 0.8 and 0.9", {
  skip_if_not_installed("lavaan")
  d <- holzinger_data(scale_scores = TRUE)
  scan <- nmfre_dfscan(d$Y, d$A, rank = 3, rates = c(0.8, 0.9, 1))
  expect_identical(scan$hit, c(TRUE, TRUE, FALSE))
  expect_identical(scan$status[1:2], c("NG", "NG"))
  expect_true(all(scan$ratio[1:2] >= 0.99))
  expect_lt(scan$ratio[3], 0.99)
  expect_true(all(scan$converged))
  # Rates 0.8 and 0.9 bind, so the only qualifying rate, 1, is chosen.
  expect_equal(attr(scan, "chosen_rate"), 1)
  expect_identical(attr(scan, "choice"), "smallest")
})

test_that("Holzinger-Swineford raw scores never hit the cap", {
  skip_if_not_installed("lavaan")
  d <- holzinger_data(scale_scores = FALSE)
  scan <- nmfre_dfscan(d$Y, d$A, rank = 3, rates = c(0.8, 0.9, 1))
  expect_identical(scan$hit, c(FALSE, FALSE, FALSE))
  # tau2 is never lowered and sigma2 stays above 1, so lambda > 1 and dfU
  # is at most N * sum_q d_q / (d_q + 1), far below the caps.
  expect_identical(scan$tau2, c(1, 1, 1))
  expect_true(all(scan$sigma2 > 1))
  expect_true(all(scan$ratio < 0.8))
  expect_equal(attr(scan, "chosen_rate"), 0.8)
})
