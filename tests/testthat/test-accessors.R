# Accessors of an nmfre fit, each against a value computed here from the
# fit's matrices.

long_fit <- function(rank = 1, ...) {
  orthodont <- orthodont_long()
  nmfre(distance ~ Sex, data = orthodont, unit = ~ Subject, occasion = ~ age,
        rank = rank, df_rate = 0.21, ...)
}

test_that("fixef returns Theta", {
  fit <- long_fit(rank = 2, control = quiet())
  expect_identical(fixef(fit), fit$Theta)
})

test_that("fixef works through lme4's generic", {
  skip_if_not_installed("lme4")
  fit <- long_fit(control = quiet())
  expect_identical(lme4::fixef(fit), fit$Theta)
  expect_identical(nlme::fixef(fit), fit$Theta)
})

test_that("ranef returns U with units as rows", {
  fit <- long_fit(rank = 2, control = quiet())
  random <- ranef(fit)
  expect_identical(dim(random), c(27L, 2L))
  expect_identical(random, t(fit$U))
  expect_identical(rownames(random), colnames(fit$Y))
  expect_equal(unname(colMeans(random)), c(0, 0), tolerance = 1e-8)
})

test_that("coef returns Theta A + U per unit", {
  fit <- long_fit(rank = 2, control = quiet())
  male <- as.numeric(orthodont_data()$A["male", ])
  expected <- t(fit$Theta %*% rbind(1, male) + fit$U)
  expect_equal(unname(coef(fit)), unname(expected), tolerance = 1e-12)
  expect_identical(dimnames(coef(fit)), list(colnames(fit$Y), c("Basis1", "Basis2")))
})

test_that("VarCorr returns tau2 and sigma2", {
  fit <- long_fit(control = quiet())
  components <- VarCorr(fit)
  expect_identical(rownames(components), c("Unit", "Residual"))
  expect_identical(components$Variance, c(fit$tau2, fit$sigma2))
  expect_identical(components$`Std.Dev.`, sqrt(c(fit$tau2, fit$sigma2)))
})

test_that("sigma returns the residual standard deviation", {
  fit <- long_fit(control = quiet())
  expect_identical(sigma(fit), sqrt(fit$sigma2))
})

test_that("fitted gives X (Theta A + U) or X Theta A", {
  fit <- long_fit(rank = 2, control = quiet())
  A <- rbind(1, orthodont_data()$A["male", ])
  expect_equal(unname(fitted(fit)), unname(fit$X %*% (fit$Theta %*% A + fit$U)),
               tolerance = 1e-12)
  expect_equal(unname(fitted(fit, type = "fixed")), unname(fit$X %*% fit$Theta %*% A),
               tolerance = 1e-12)
  expect_identical(dimnames(fitted(fit, type = "fixed")), dimnames(fit$Y))
})

test_that("residuals are Y minus fitted", {
  fit <- long_fit(rank = 2, control = quiet())
  expect_equal(residuals(fit), fit$Y - fitted(fit), tolerance = 1e-12)
  expect_equal(residuals(fit, type = "fixed"), fit$Y - fitted(fit, type = "fixed"),
               tolerance = 1e-12)
  expect_error(residuals(fit, type = "pearson"), "`type` must be one of")
})

test_that("nobs counts units", {
  fit <- long_fit(control = quiet())
  expect_identical(nobs(fit), 27L)
})

test_that("model.matrix returns A transposed", {
  fit <- long_fit(control = quiet())
  design <- model.matrix(fit)
  expect_identical(dim(design), c(27L, 2L))
  expect_identical(design, t(fit$A))
  expect_equal(unname(design[, "SexMale"]), unname(orthodont_data()$A["male", ]))
})

test_that("formula returns the model formula", {
  fit <- long_fit(control = quiet())
  expect_identical(formula(fit), distance ~ Sex, ignore_attr = TRUE)
  expect_identical(formula(fit), fit$formula)
  d <- orthodont_data()
  matrix_fit <- nmfre(d$Y, d$A, rank = 1, control = quiet())
  expect_error(formula(matrix_fit), "made from matrices")
})

test_that("update refits with changed arguments", {
  orthodont <- orthodont_long()
  fit <- nmfre(distance ~ Sex, data = orthodont, unit = ~ Subject, occasion = ~ age,
               rank = 1, df_rate = 0.21, control = quiet())
  bigger <- update(fit, rank = 2)
  expect_identical(bigger$rank, 2L)
  expect_identical(bigger$formula, fit$formula)
  intercept_only <- update(fit, . ~ 1)
  expect_identical(colnames(intercept_only$Theta), "(Intercept)")
  expect_identical(intercept_only$formula, distance ~ 1, ignore_attr = TRUE)
})

test_that("update of a matrix fit keeps the data", {
  d <- orthodont_data()
  fit <- nmfre(d$Y, d$A, rank = 1, df_rate = 0.21, control = quiet())
  again <- update(fit, df_rate = 0.3)
  expect_identical(again$df_rate, 0.3)
  expect_identical(again$Y, fit$Y)
  expect_identical(update(fit, rank = 2, evaluate = FALSE)$rank, 2)
})
