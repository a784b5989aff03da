# simulate(): seeded draws Y = X (Theta A + U) + E with fresh U and E from
# R's generator, seed handled as stats::simulate() methods do.

matrix_fit <- function() {
  d <- orthodont_data()
  nmfre(d$Y, d$A, rank = 1, df_rate = 0.21, control = quiet())
}

test_that("simulate draws U then E from R's generator", {
  fit <- matrix_fit()
  draws <- simulate(fit, nsim = 2, seed = 42)
  set.seed(42)
  expected <- lapply(1:2, function(i) {
    U <- matrix(rnorm(27, sd = sqrt(fit$tau2)), 1)
    E <- matrix(rnorm(4 * 27, sd = sqrt(fit$sigma2)), 4)
    fit$X %*% (fit$Theta %*% fit$A + U) + E
  })
  expect_equal(unname(draws$sim_1), unname(expected[[1]]), tolerance = 1e-12)
  expect_equal(unname(draws$sim_2), unname(expected[[2]]), tolerance = 1e-12)
})

test_that("simulate returns named P x N matrices", {
  fit <- matrix_fit()
  draws <- simulate(fit, nsim = 3, seed = 1)
  expect_identical(names(draws), c("sim_1", "sim_2", "sim_3"))
  for (draw in draws) {
    expect_identical(dimnames(draw), dimnames(fit$Y))
  }
  expect_identical(as.integer(attr(draws, "seed")), 1L)
})

test_that("simulate with a seed restores the stream", {
  fit <- matrix_fit()
  set.seed(5)
  simulate(fit, seed = 99)
  after <- runif(1)
  set.seed(5)
  expect_identical(after, runif(1))
})

test_that("simulate without a seed continues the stream", {
  fit <- matrix_fit()
  set.seed(8)
  first <- simulate(fit)
  second <- simulate(fit)
  set.seed(8)
  expect_identical(simulate(fit)$sim_1, first$sim_1)
  expect_false(identical(first$sim_1, second$sim_1))
})

test_that("simulate rejects an invalid nsim", {
  fit <- matrix_fit()
  expect_error(simulate(fit, nsim = 0), "`nsim` must be a whole number")
})
