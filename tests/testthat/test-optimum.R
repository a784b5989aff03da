# The fitted optimum must not depend on the seed of the starting values.

# Holzinger-Swineford with the test scores also min-max scaled, the set-up
# in which the published loop's Theta moves between seeds (the age effect on
# the second basis between about 2.42 and 2.66).
hs_matrices <- function() {
  hs <- holzinger_swineford()
  scale01 <- function(v) (v - min(v)) / (max(v) - min(v))
  list(Y = t(sapply(paste0("x", 1:9), function(name) scale01(hs[[name]]))),
       A = t(as.matrix(hs[c("age_rev", "girl", "grant_white")])))
}

fit_hs <- function(seed, ...) {
  d <- hs_matrices()
  suppressWarnings(nmfre(d$Y, d$A, rank = 3, df_rate = 0.96,
                         control = nmfre_control(seed = seed, inference = FALSE, ...)))
}

test_that("Holzinger-Swineford Theta agrees across seeds", {
  skip_if_not_installed("lavaan")
  # The published loop stops where the relative change of the objective
  # falls below 1e-8 while X and sigma2 still move, so Theta differs in its
  # second digit between seeds; the polished fit must agree to three
  # significant digits.
  polished <- lapply(1:10, fit_hs)
  plain <- lapply(1:10, fit_hs, polish = FALSE)
  thetas <- sapply(polished, function(fit) as.double(fit$Theta))
  plain_thetas <- sapply(plain, function(fit) as.double(fit$Theta))
  for (seed in 2:10) {
    expect_equal(signif(thetas[, seed], 3), signif(thetas[, 1], 3))
  }
  # The check has teeth: the plain loop disagrees in the third digit.
  expect_true(any(signif(plain_thetas, 3) != signif(plain_thetas[, 1], 3)))
  for (fit in polished) expect_true(fit$converged)

  # No seed's plain stopping point has a lower objective than the
  # certified fit of any seed.
  final <- function(fit) utils::tail(fit$objective, 1)
  lowest_plain <- min(vapply(plain, final, double(1)))
  for (fit in polished) expect_lte(final(fit), lowest_plain)
})

test_that("fixed-point residuals are below tolerance", {
  skip_if_not_installed("lavaan")
  fit <- fit_hs(1)
  expect_identical(fit$stop_reason,
                   "relative change below epsilon and fixed-point residuals below tolerance")
  expect_lt(fit$optimum$kkt_x, 1e-9)
  expect_lt(fit$optimum$kkt_theta, 1e-9)
  expect_lt(fit$optimum$variance_change, 1e-9)
  plain <- fit_hs(1, polish = FALSE)
  # The plain loop stops while X still moves, which is why seeds disagree.
  expect_gt(plain$optimum$kkt_x, 1e-4)
})

test_that("the certified fit is a fixed point of the published loop", {
  skip_if_not_installed("lavaan")
  fit <- fit_hs(1)
  # 500 more iterations of the published loop from the certified fit, with
  # sigma2 at the value it has there (the cap does not bind, tau2 = 1),
  # leave Theta where it is. A stationary point of a different problem,
  # such as exact least-squares blocks, would drift away here.
  d <- hs_matrices()
  again <- suppressWarnings(nmfre(d$Y, d$A, rank = 3, df_rate = 0.96,
                                  control = nmfre_control(
                                    polish = FALSE, epsilon = 0, maxit = 500,
                                    inference = FALSE, sigma2_start = fit$sigma2,
                                    start = list(X = fit$X, Theta = fit$Theta, U = fit$U))))
  expect_false(fit$cap$hit)
  expect_within(again$Theta, fit$Theta, tolerance = 1e-5 * max(fit$Theta))
})

test_that("an uncertified fit says how far it got", {
  skip_if_not_installed("lavaan")
  # Seed 1 meets the published rule after 1128 iterations and needs several
  # thousand more to certify, so 2000 stop in between.
  d <- hs_matrices()
  messages <- character()
  withCallingHandlers(
    nmfre(d$Y, d$A, rank = 3, df_rate = 0.96,
          control = nmfre_control(seed = 1, inference = FALSE, maxit = 2000)),
    warning = function(w) {
      messages <<- c(messages, conditionMessage(w))
      invokeRestart("muffleWarning")
    })
  expect_match(messages, "published stopping rule was met after 1128 iterations", all = FALSE)
})

test_that("extrapolation shortens the path but keeps the fixed point", {
  skip_if_not_installed("lavaan")
  fast <- fit_hs(2)
  slow <- fit_hs(2, extrapolate = FALSE)
  expect_true(slow$converged)
  expect_lt(fast$iterations, slow$iterations)
  expect_within(fast$Theta, slow$Theta, tolerance = 1e-4 * max(slow$Theta))
})

test_that("Orthodont polishing keeps the published estimates", {
  d <- orthodont_data()
  polished <- nmfre(d$Y, d$A, rank = 1, df_rate = 0.21)
  plain <- nmfre(d$Y, d$A, rank = 1, df_rate = 0.21, control = nmfre_control(polish = FALSE))
  expect_identical(polished$optimum$paper_iterations, plain$iterations)
  expect_within(polished$Theta, plain$Theta, tolerance = 0.01)
  se <- function(fit) fit$inference$coefficients[, "Std. Error"]
  expect_within(se(polished) / se(plain), c(1, 1), tolerance = 0.001)
  expect_lt(polished$optimum$kkt_x, 1e-9)
})

test_that("holding the variances keeps the published sigma2", {
  d <- orthodont_data()
  held <- nmfre(d$Y, d$A, rank = 1, df_rate = 0.21,
                control = nmfre_control(inference = FALSE, polish_variances = FALSE))
  plain <- nmfre(d$Y, d$A, rank = 1, df_rate = 0.21,
                 control = nmfre_control(inference = FALSE, polish = FALSE))
  expect_identical(held$sigma2, plain$sigma2)
  expect_within(held$dfU, plain$dfU, tolerance = 1e-3)
})

test_that("several starts keep the lowest objective", {
  d <- orthodont_data()
  d$Y <- rbind(d$Y, d$Y[4:1, ] * 0.8)
  fit <- suppressWarnings(nmfre(d$Y, d$A, rank = 2, df_rate = 0.3,
                                control = nmfre_control(inference = FALSE, nstart = 4)))
  starts <- fit$optimum$starts
  expect_identical(nrow(starts), 5L)
  expect_identical(starts$kind, c("NNDSVDar", rep("random", 4)))
  chosen <- starts[starts$chosen, ]
  expect_equal(chosen$objective, utils::tail(fit$objective, 1))
  expect_true(all(chosen$objective <= starts$objective[starts$converged] * (1 + 1e-12)))
  again <- suppressWarnings(nmfre(d$Y, d$A, rank = 2, df_rate = 0.3,
                                  control = nmfre_control(inference = FALSE, nstart = 4,
                                                          threads = 2)))
  expect_identical(again$Theta, fit$Theta)
})

test_that("polishing moves the variances to their fixed point", {
  d <- orthodont_data()
  fit <- nmfre(d$Y, d$A, rank = 1, df_rate = 0.21,
               control = nmfre_control(inference = FALSE))
  # At the fixed point sigma2 equals the mean squared residual.
  expect_equal(fit$sigma2, fit$rss / length(d$Y), tolerance = 1e-6)
})

test_that("an entry at its bound does not count as a disagreement", {
  # The effect of x sits at its lower bound (about 5e-8 next to an intercept
  # of about 5), and starts leave it at slightly different tiny values.
  # Measured against the largest entry of its basis, starts agree.
  set.seed(1)
  Y <- matrix(stats::rexp(40), 5, 8)
  A <- rbind(one = 1, x = stats::runif(8))
  messages <- character()
  fit <- withCallingHandlers(
    nmfre(Y, A, rank = 1, control = nmfre_control(nstart = 200, inference = FALSE)),
    warning = function(w) {
      messages <<- c(messages, conditionMessage(w))
      invokeRestart("muffleWarning")
    })
  expect_lt(fit$optimum$theta_spread, 1e-3)
  expect_false(any(grepl("not identified", messages)))
})
