# print() and summary(): what they show, the summary object's contents and
# a snapshot of the summary layout.

orthodont_fit <- function(orthodont = orthodont_long(), ...) {
  nmfre(distance ~ Sex, data = orthodont, unit = ~ Subject, occasion = ~ age,
        rank = 1, df_rate = 0.21, ...)
}

test_that("print shows formula, fit and Theta", {
  fit <- orthodont_fit(control = nmfre_control(B = 50))
  output <- capture.output(print(fit))
  expect_match(output[1], "^Non-negative matrix factorization with random effects")
  expect_true(any(grepl("^Formula: distance ~ Sex", output)))
  expect_true(any(grepl("^   Data: orthodont", output)))
  expect_true(any(grepl("Units: Subject \\(27\\); occasions: age \\(8, 10, 12, 14\\)", output)))
  expect_true(any(grepl("^Rank: 1", output)))
  expect_true(any(grepl("^Objective: .*converged after [0-9]+ iterations", output)))
  expect_true(any(grepl("^ Unit ", output)))
  expect_true(any(grepl("^ Residual ", output)))
  expect_true(any(grepl("^Theta", output)))
  expect_true(any(grepl("SexMale", output)))
})

test_that("print of a matrix fit shows the call", {
  d <- orthodont_data()
  fit <- nmfre(d$Y, d$A, rank = 1, df_rate = 0.21, control = quiet())
  expect_output(print(fit), "Call: nmfre\\(Y = d\\$Y")
})

test_that("summary holds the blocks' values", {
  fit <- orthodont_fit(control = nmfre_control(B = 50))
  s <- summary(fit)
  expect_s3_class(s, "summary.nmfre")
  expect_identical(coef(s), fit$inference$coefficients)
  expect_identical(s$dims, c(P = 4L, N = 27L, K = 2L, rank = 1L))
  expect_identical(s$convergence$iterations, fit$iterations)
  expect_identical(s$warnings, character(0))

  scaled <- (fit$Y - fit$X %*% (fit$Theta %*% fit$A + fit$U)) / sqrt(fit$sigma2)
  expect_equal(unname(s$residuals), unname(quantile(scaled)), tolerance = 1e-10)
  expect_identical(names(s$residuals), c("Min", "1Q", "Median", "3Q", "Max"))

  trace_xx <- sum(diag(crossprod(fit$X)))
  icc <- fit$tau2 * trace_xx / (fit$tau2 * trace_xx + fit$sigma2 * 4)
  expect_equal(s$icc, icc)
  expect_equal(s$varcor$Variance, c(fit$tau2, fit$sigma2))
  expect_identical(s$X, fit$X)
})

test_that("summary prints every block", {
  fit <- orthodont_fit(control = nmfre_control(B = 50))
  output <- capture.output(print(summary(fit)))
  blocks <- c("^Non-negative matrix factorization", "^Formula: distance ~ Sex",
              "^   Data: orthodont", "AIC +BIC +logLik", "converged after",
              "^Scaled residuals:", "^ +Min +1Q +Median +3Q +Max",
              "^Random effects:", "^ Groups +Name +Variance +Std.Dev.",
              "^lambda = sigma2 / tau2 = .*; ICC = ", "dfU = .* of cap 5.67",
              "^Number of units: 27; measurements per unit: 4",
              "^Fixed effects \\(Theta\\):", "Estimate +Std. Error +Boot SE +z value +Pr\\(>z\\)",
              "^Basis1:SexMale", "^Signif. codes", "^p-values: one-sided",
              "^Basis loadings \\(X\\):", "^age14 ")
  for (pattern in blocks) {
    expect_true(any(grepl(pattern, output)), label = pattern)
  }
  positions <- vapply(c("^Formula", "converged after", "^Scaled residuals",
                        "^Random effects", "^Number of units", "^Fixed effects",
                        "^Basis loadings"),
                      function(pattern) grep(pattern, output)[1], integer(1))
  expect_false(is.unsorted(positions))
})

test_that("summary lists the fit's warnings", {
  orthodont <- as.data.frame(nlme::Orthodont)
  fit <- suppressWarnings(
    nmfre(distance ~ Sex, data = orthodont, unit = ~ Subject, occasion = ~ age,
          rank = 1, df_rate = 0.21, control = quiet())
  )
  s <- summary(fit)
  expect_length(s$warnings, 1L)
  expect_match(s$warnings, "lower bound 0 for Basis1:SexFemale")
  expect_output(print(s), "Warning: Theta is at its lower bound 0")
})

test_that("two-sided p-values are named in summary", {
  fit <- orthodont_fit(theta = "free", control = nmfre_control(B = 0))
  output <- capture.output(print(summary(fit)))
  expect_true(any(grepl("Pr\\(>\\|z\\|\\)", output)))
  expect_true(any(grepl("^p-values: two-sided", output)))
  expect_false(any(grepl("Boot SE", output)))
})

test_that("summary without inference prints Theta", {
  fit <- orthodont_fit(control = quiet())
  s <- summary(fit)
  expect_null(coef(s))
  expect_output(print(s), "without inference; see nmfre_inference")
})

test_that("summary reports an automatically chosen rate", {
  fit <- orthodont_fit(control = quiet())
  fit$dfscan <- data.frame(rate = c(0.1, 0.21, 0.3), ratio = c(0.9, 0.37, 0.26),
                           status = c("BETTER", "GOOD", "GOOD"))
  expect_output(print(summary(fit)), "df rate 0.21 chosen automatically from a scan of 3 rates")
  expect_identical(summary(fit)$df_rate, 0.21)
})

test_that("summary reports dropped units", {
  orthodont <- orthodont_long()
  orthodont$distance[1] <- NA
  fit <- suppressMessages(orthodont_fit(orthodont, control = quiet()))
  expect_output(print(summary(fit)), "\\(1 unit dropped because of missing values\\)")
})

test_that("summary layout is stable", {
  fit <- orthodont_fit(control = nmfre_control(B = 100, boot_seed = 7, threads = 1))
  expect_snapshot(print(summary(fit), digits = 4))
  expect_snapshot(print(fit, digits = 4))
})
