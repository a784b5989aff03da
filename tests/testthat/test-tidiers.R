# tidy(), glance() and augment(): data frames that agree with the
# coefficient table, logLik() and fitted().

long_fit <- function(...) {
  orthodont <- orthodont_long()
  nmfre(distance ~ Sex, data = orthodont, unit = ~ Subject, occasion = ~ age,
        rank = 1, df_rate = 0.21, ...)
}

test_that("tidy rows match the coefficient table", {
  fit <- long_fit(control = nmfre_control(B = 50))
  table <- fit$inference$coefficients
  tidied <- tidy(fit)
  expect_identical(tidied$term, rownames(table))
  expect_identical(tidied$estimate, unname(table[, "Estimate"]))
  expect_identical(tidied$std.error, unname(table[, "Std. Error"]))
  expect_identical(tidied$statistic, unname(table[, "z value"]))
  expect_identical(tidied$p.value, unname(table[, "Pr(>z)"]))
  expect_identical(tidied$covariate, c("(Intercept)", "SexMale"))
})

test_that("tidy confidence limits match confint", {
  fit <- long_fit(control = nmfre_control(B = 50))
  tidied <- tidy(fit, conf.int = TRUE, conf.level = 0.9)
  bounds <- confint(fit, level = 0.9)
  expect_identical(tidied$conf.low, unname(bounds[, 1]))
  expect_identical(tidied$conf.high, unname(bounds[, 2]))
})

test_that("tidy ran_pars gives the standard deviations", {
  fit <- long_fit(control = quiet())
  tidied <- tidy(fit, effects = "ran_pars")
  expect_identical(tidied$term, c("sd__Unit", "sd__Residual"))
  expect_identical(tidied$estimate, sqrt(c(fit$tau2, fit$sigma2)))
})

test_that("tidy without inference leaves errors missing", {
  fit <- long_fit(control = quiet())
  tidied <- tidy(fit)
  expect_identical(tidied$estimate, as.double(fit$Theta))
  expect_true(all(is.na(tidied$std.error)))
})

test_that("broom's generic dispatches to tidy", {
  skip_if_not_installed("broom")
  fit <- long_fit(control = nmfre_control(B = 50))
  expect_identical(broom::tidy(fit), tidy(fit))
})

test_that("glance gives one row of fit statistics", {
  fit <- long_fit(control = quiet())
  glanced <- glance(fit)
  expect_identical(nrow(glanced), 1L)
  expect_identical(glanced$nobs, 27L)
  expect_identical(glanced$logLik, as.double(logLik(fit)))
  expect_identical(glanced$BIC, BIC(fit))
  expect_identical(glanced$dfU, fit$dfU)
  expect_identical(glanced$sigma, sigma(fit))
})

test_that("augment has one row per cell of Y", {
  fit <- long_fit(control = quiet())
  augmented <- augment(fit)
  expect_identical(nrow(augmented), length(fit$Y))
  expect_equal(augmented$.resid, augmented$.observed - augmented$.fitted)
  expect_identical(augmented$.fitted, as.double(fitted(fit)))
  expect_identical(augmented$.fixed, as.double(fitted(fit, type = "fixed")))
  first_girl <- augmented[augmented$.unit == "F01", ]
  expect_true(all(first_girl$Sex == "Female"))
})

test_that("augment attaches results to long data", {
  fit <- long_fit(control = quiet())
  orthodont <- orthodont_long()
  augmented <- augment(fit, data = orthodont)
  expect_identical(nrow(augmented), nrow(orthodont))
  row <- which(orthodont$Subject == "M07" & orthodont$age == 12)
  expect_identical(augmented$.fitted[row], fitted(fit)["age12", "M07"])
  expect_identical(augmented$.resid[row], orthodont$distance[row] - fitted(fit)["age12", "M07"])
})

test_that("augment of a wide fit joins unit covariates", {
  units <- simulate_wide()
  fit <- nmfre(cbind(x1, x2, x3, x4) ~ group + z, data = units, rank = 1,
               df_rate = 0.8, control = quiet())
  augmented <- augment(fit)
  expect_identical(nrow(augmented), 4L * 40L)
  expect_identical(augmented$z[augmented$.unit == "7"], rep(units$z[7], 4))
})
