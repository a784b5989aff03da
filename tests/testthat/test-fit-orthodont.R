# Reference values: MODEL.md's Orthodont check, produced by the method
# author's implementation (Satoh 2026, arXiv:2603.01468): Theta = (90.50,
# 9.43), X = (0.2308, 0.2409, 0.2566, 0.2717), about 230 iterations,
# dfU about 2.1 and a cap (rate 0.21) that does not bind.

test_that("Orthodont fit matches the reference implementation", {
  d <- orthodont_data()
  # polish = FALSE runs the published loop alone, which the reference used.
  fit <- nmfre(d$Y, d$A, rank = 1, df_rate = 0.21,
               control = nmfre_control(inference = FALSE, polish = FALSE))
  expect_true(fit$converged)
  expect_within(unname(fit$Theta[1, "(Intercept)"]), 90.50, tolerance = 0.05)
  expect_within(unname(fit$Theta[1, "male"]), 9.43, tolerance = 0.05)
  expect_within(fit$X[, 1], c(0.2308, 0.2409, 0.2566, 0.2717), tolerance = 0.001)
  expect_gte(fit$iterations, 200)
  expect_lte(fit$iterations, 260)
  expect_within(fit$dfU, 2.1, tolerance = 0.1)
  expect_false(fit$cap$binding)
  expect_false(fit$cap$hit)
  expect_equal(fit$cap$value, 0.21 * 27)
})

test_that("fit carries dimnames from Y and A", {
  d <- orthodont_data()
  fit <- nmfre(d$Y, d$A, rank = 1, df_rate = 0.21,
               control = nmfre_control(inference = FALSE, basis_prefix = "Growth"))
  expect_identical(rownames(fit$X), rownames(d$Y))
  expect_identical(colnames(fit$X), "Growth1")
  expect_identical(colnames(fit$Theta), c("(Intercept)", "male"))
  expect_identical(colnames(fit$U), colnames(d$Y))
  expect_identical(dimnames(fitted(fit)), dimnames(d$Y))
})

test_that("fitted values equal X (Theta A + U)", {
  d <- orthodont_data()
  fit <- nmfre(d$Y, d$A, rank = 1, df_rate = 0.21,
               control = nmfre_control(inference = FALSE))
  expected <- fit$X %*% (fit$Theta %*% d$A + fit$U)
  expect_equal(unname(fitted(fit)), unname(expected), tolerance = 1e-12)
  expect_equal(fit$rss, sum((d$Y - expected)^2), tolerance = 1e-10)
})

test_that("same seed gives identical fits, U rows are centred", {
  d <- orthodont_data()
  control <- nmfre_control(inference = FALSE, seed = 7)
  first <- nmfre(d$Y, d$A, rank = 2, df_rate = 0.3, control = control)
  second <- nmfre(d$Y, d$A, rank = 2, df_rate = 0.3, control = control)
  expect_identical(first$Theta, second$Theta)
  expect_identical(first$objective, second$objective)
  expect_within(unname(rowMeans(first$U)), c(0, 0), tolerance = 1e-10)
  expect_equal(unname(colSums(first$X)), c(1, 1), tolerance = 1e-12)
})

test_that("bases are ordered by where their loadings sit", {
  d <- orthodont_data()
  fit <- nmfre(d$Y, d$A, rank = 2, df_rate = 0.3,
               control = nmfre_control(inference = FALSE))
  position <- colSums(fit$X * (seq_len(4) / 4))
  expect_true(position[1] <= position[2])
})

test_that("free Theta solves its least-squares normal equations", {
  d <- orthodont_data()
  fit <- nmfre(d$Y, d$A, rank = 1, df_rate = 0.21, theta = "free",
               control = nmfre_control(inference = FALSE))
  X <- fit$X
  Ystar <- d$Y - X %*% fit$U
  # Theta is the last block updated, so it solves its normal equations
  # X'X Theta A A' = X' (Y - X U) A' at the returned X and U.
  lhs <- crossprod(X) %*% fit$Theta %*% tcrossprod(d$A)
  rhs <- crossprod(X, Ystar) %*% t(d$A)
  expect_equal(unname(lhs), unname(rhs), tolerance = 1e-10)
  expect_within(unname(fit$Theta[1, 2]), 9.43, tolerance = 0.1)
})

test_that("cap can be absolute or off", {
  d <- orthodont_data()
  absolute <- nmfre(d$Y, d$A, rank = 1,
                    control = nmfre_control(inference = FALSE, df_cap = 1))
  expect_equal(absolute$cap$type, "absolute")
  expect_lte(absolute$dfU, 1 + 1e-8)
  expect_true(absolute$cap$hit)
  off <- suppressWarnings(nmfre(d$Y, d$A, rank = 1,
                                control = nmfre_control(inference = FALSE, use_cap = FALSE,
                                                        maxit = 3000)))
  expect_equal(off$cap$type, "off")
  expect_true(is.na(off$cap$value))
  # Without the cap tau2 grows with the between-child spread, so dfU rises
  # well above the capped fit's 2.1.
  expect_gt(off$dfU, 5)
})

test_that("binding cap warns with dfU, share and remedy", {
  # Orthodont scores divided by 10 give sigma2 near 0.03 while tau2 starts
  # at 1, so lambda is small and dfU presses against the cap 0.1 * 27 = 2.7.
  d <- orthodont_data()
  expect_warning(
    fit <- nmfre(d$Y / 10, d$A, rank = 1, df_rate = 0.1,
                 control = nmfre_control(inference = FALSE)),
    "The df cap binds at the end of the fit: dfU = 2.7 is 100.0% of the cap 2.7",
    fixed = TRUE)
  expect_true(fit$cap$binding)
  expect_warning(
    nmfre(d$Y / 10, d$A, rank = 1, df_rate = 0.1, control = nmfre_control(inference = FALSE)),
    "Try a larger `df_rate`, or df_rate = NULL to choose it with nmfre_dfscan().",
    fixed = TRUE)
  expect_warning(
    nmfre(d$Y / 10, d$A, rank = 1, control = nmfre_control(inference = FALSE, df_cap = 2)),
    "Try a larger `df_cap` in nmfre_control().", fixed = TRUE)
})

test_that("saturated fit at rate 1 points to tau2_start", {
  # tau2 held at 1000 by the cap rule gives lambda near 0.001, so dfU ends
  # within 1% of the cap at rate 1, N * rank = 27, without raising lambda.
  d <- orthodont_data()
  warnings <- character()
  fit <- withCallingHandlers(
    nmfre(d$Y, d$A, rank = 1, df_rate = 1,
          control = nmfre_control(tau2_start = 1000, maxit = 2000, inference = FALSE)),
    warning = function(w) {
      warnings <<- c(warnings, conditionMessage(w))
      invokeRestart("muffleWarning")
    })
  expect_false(fit$cap$hit)
  expect_true(fit$cap$binding)
  expect_true(any(grepl("The cap is N * rank = 27, the most dfU can be", warnings,
                        fixed = TRUE)))
  expect_true(any(grepl("Lower `tau2_start`", warnings, fixed = TRUE)))
})

test_that("cap hit early but not binding gives no warning", {
  d <- orthodont_data()
  # tau2 = 100 makes the cap bind at the first iteration; in the published
  # loop tau2 then stays at sigma2 / lambda from that iteration, sigma2
  # grows, and by the end dfU = 0.93 is well below the cap 2.7.
  fit <- expect_silent(nmfre(d$Y, d$A, rank = 1, df_rate = 0.1,
                             control = nmfre_control(tau2_start = 100, inference = FALSE,
                                                     polish = FALSE)))
  expect_true(fit$cap$hit)
  expect_false(fit$cap$binding)
})

test_that("default fit polishes to the variance fixed point", {
  d <- orthodont_data()
  fit <- nmfre(d$Y, d$A, rank = 1, df_rate = 0.21,
               control = nmfre_control(inference = FALSE))
  # Theta and X stay at the reference values; sigma2 moves from where the
  # damped update stopped (2.95) to its fixed point mean(R^2), which raises
  # lambda and lowers dfU from 2.1 to about 1.4.
  expect_within(fit$Theta, c(90.50, 9.43), tolerance = 0.05)
  expect_within(fit$X[, 1], c(0.2308, 0.2409, 0.2566, 0.2717), tolerance = 0.001)
  expect_equal(fit$sigma2, fit$rss / length(d$Y), tolerance = 1e-8)
  expect_within(fit$dfU, 1.40, tolerance = 0.01)
  expect_lte(fit$optimum$paper_iterations, 260)
})
