# The wide-layout formula method: one data row per unit, the measurements on
# the left of the formula. Its fits must equal the matrix method's on the Y
# and A that the formula describes.

test_that("Holzinger-Swineford formula fit equals matrix fit", {
  skip_if_not_installed("lavaan")
  pupils <- holzinger_swineford()
  control <- nmfre_control(B = 50)
  by_formula <- nmfre(cbind(x1, x2, x3, x4, x5, x6, x7, x8, x9) ~
                        0 + age_rev + girl + grant_white,
                      data = pupils, rank = 3, df_rate = 0.96, control = control)
  Y <- t(as.matrix(pupils[paste0("x", 1:9)]))
  A <- rbind(age_rev = pupils$age_rev, girl = pupils$girl,
             grant_white = pupils$grant_white)
  by_matrix <- nmfre(Y, A, rank = 3, df_rate = 0.96, control = control)

  expect_equal(dim(by_formula$Y), c(9L, 301L))
  expect_equal(by_formula$Theta, by_matrix$Theta, tolerance = 1e-10)
  expect_equal(unname(by_formula$X), unname(by_matrix$X), tolerance = 1e-10)
  expect_equal(by_formula$inference$coefficients, by_matrix$inference$coefficients,
               tolerance = 1e-10)
  expect_identical(rownames(by_formula$Theta), c("Basis1", "Basis2", "Basis3"))
  expect_identical(rownames(by_formula$X), paste0("x", 1:9))
})

test_that("wide fit stores formula, data name and terms", {
  units <- simulate_wide()
  fit <- nmfre(cbind(x1, x2, x3, x4) ~ group + z, data = units, rank = 1, df_rate = 0.8,
               control = quiet())
  expect_identical(fit$formula, cbind(x1, x2, x3, x4) ~ group + z)
  expect_identical(fit$data_name, "units")
  expect_s3_class(fit$terms, "terms")
  expect_identical(fit$xlevels, list(group = c("a", "b", "c")))
  expect_identical(fit$contrasts, list(group = "contr.treatment"))
  expect_identical(fit$layout$type, "wide")
  expect_identical(colnames(fit$U), rownames(units))
})

test_that("factor expands with treatment contrasts into A", {
  units <- simulate_wide()
  fit <- nmfre(cbind(x1, x2, x3, x4) ~ group + z, data = units, rank = 1, df_rate = 0.8,
               control = quiet())
  expected <- t(model.matrix(~ group + z, units))
  attr(expected, "assign") <- NULL
  attr(expected, "contrasts") <- NULL
  expect_equal(fit$A, expected)
  expect_identical(colnames(fit$Theta), c("(Intercept)", "groupb", "groupc", "z"))
})

test_that("wide formula fit equals matrix fit", {
  units <- simulate_wide()
  by_formula <- nmfre(cbind(x1, x2, x3, x4) ~ group + z, data = units, rank = 2,
                      df_rate = 1, control = quiet())
  A <- rbind("(Intercept)" = 1, groupb = as.numeric(units$group == "b"),
             groupc = as.numeric(units$group == "c"), z = units$z)
  by_matrix <- nmfre(wide_matrix(units), A, rank = 2, df_rate = 1, control = quiet())
  expect_equal(by_formula$Theta, by_matrix$Theta, tolerance = 1e-10)
  expect_equal(by_formula$objective, by_matrix$objective, tolerance = 1e-10)
})

test_that("zero plus removes the intercept", {
  units <- simulate_wide()
  fit <- nmfre(cbind(x1, x2, x3, x4) ~ 0 + z, data = units, rank = 1, df_rate = 0.8,
               control = quiet())
  expect_identical(rownames(fit$A), "z")
})

test_that("interactions and transformations reach A", {
  units <- simulate_wide()
  fit <- nmfre(cbind(x1, x2, x3, x4) ~ group * I(z / 2), data = units, rank = 1,
               df_rate = 0.8, theta = "free", control = quiet())
  expected <- t(model.matrix(~ group * I(z / 2), units))
  expect_identical(rownames(fit$A), rownames(expected))
  expect_equal(unname(fit$A), unname(expected), ignore_attr = TRUE)
})

test_that("matrix column response equals cbind response", {
  units <- simulate_wide()
  units$scores <- as.matrix(units[paste0("x", 1:4)])
  with_cbind <- nmfre(cbind(x1, x2, x3, x4) ~ group, data = units, rank = 1, df_rate = 0.8,
                      control = quiet())
  with_matrix <- nmfre(scores ~ group, data = units, rank = 1, df_rate = 0.8,
                       control = quiet())
  expect_equal(with_matrix$Theta, with_cbind$Theta, tolerance = 1e-12)
  expect_identical(rownames(with_matrix$Y), paste0("x", 1:4))
})

test_that("cbind of expressions names the measurements", {
  units <- simulate_wide()
  fit <- nmfre(cbind(x1, 2 * x2, x3, x4) ~ 1, data = units, rank = 1, df_rate = 0.8,
               control = quiet())
  expect_identical(rownames(fit$Y), c("x1", "2 * x2", "x3", "x4"))
})

test_that("subset keeps the selected units", {
  units <- simulate_wide()
  fit <- nmfre(cbind(x1, x2, x3, x4) ~ z, data = units, subset = group != "c",
               rank = 1, df_rate = 0.8, control = quiet())
  kept <- units[units$group != "c", ]
  expect_identical(colnames(fit$Y), rownames(kept))
  by_matrix <- nmfre(wide_matrix(kept), rbind("(Intercept)" = 1, z = kept$z), rank = 1,
                     df_rate = 0.8, control = quiet())
  expect_equal(fit$Theta, by_matrix$Theta, tolerance = 1e-10)
})

test_that("subset drops unused factor levels", {
  units <- simulate_wide()
  fit <- nmfre(cbind(x1, x2, x3, x4) ~ group, data = units, subset = group != "c",
               rank = 1, df_rate = 0.8, control = quiet())
  expect_identical(colnames(fit$Theta), c("(Intercept)", "groupb"))
})

test_that("missing values drop units with a message", {
  units <- simulate_wide()
  units$x2[3] <- NA
  units$z[7] <- NA
  expect_message(
    fit <- nmfre(cbind(x1, x2, x3, x4) ~ z, data = units, rank = 1, df_rate = 0.8,
                 control = quiet()),
    "dropped 2 of 40 units because of missing values"
  )
  expect_identical(ncol(fit$Y), 38L)
  expect_false(any(c("3", "7") %in% colnames(fit$Y)))
  expect_identical(as.integer(fit$na_action), c(3L, 7L))
  expect_s3_class(fit$na_action, "omit")
})

test_that("na.fail stops on missing values", {
  units <- simulate_wide()
  units$x2[3] <- NA
  expect_error(nmfre(cbind(x1, x2, x3, x4) ~ z, data = units, rank = 1, df_rate = 0.8,
                     na.action = na.fail, control = quiet()),
               "missing values")
})

test_that("na.exclude pads fitted values with NA units", {
  units <- simulate_wide()
  units$x2[3] <- NA
  fit <- suppressMessages(nmfre(cbind(x1, x2, x3, x4) ~ z, data = units, rank = 1,
                                df_rate = 0.8, na.action = "na.exclude",
                                control = quiet()))
  padded <- fitted(fit)
  expect_identical(dim(padded), c(4L, 40L))
  expect_true(all(is.na(padded[, 3])))
  expect_equal(padded[, -3], fit$X %*% (fit$Theta %*% fit$A + fit$U), ignore_attr = TRUE)
  expect_identical(colnames(padded)[3], "3")
  expect_true(all(is.na(residuals(fit)[, 3])))
})

test_that("formula method defaults match the matrix method", {
  formula_defaults <- formals(nmfre:::nmfre.formula)
  matrix_defaults <- formals(nmfre:::nmfre.default)
  for (name in c("rank", "df_rate", "theta", "control")) {
    expect_identical(formula_defaults[[name]], matrix_defaults[[name]], label = name)
  }
})
