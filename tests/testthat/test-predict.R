# predict(): BLUP and fixed predictions for the fitted units, fixed
# predictions X Theta a for new units given as data or as A.

long_fit <- function(...) {
  orthodont <- orthodont_long()
  nmfre(distance ~ Sex, data = orthodont, unit = ~ Subject, occasion = ~ age,
        rank = 1, df_rate = 0.21, control = quiet(), ...)
}

test_that("predict without new data equals fitted", {
  fit <- long_fit()
  expect_identical(predict(fit), fitted(fit))
  expect_identical(predict(fit, type = "fixed"), fitted(fit, type = "fixed"))
})

test_that("predict on long fitting data equals fixed fit", {
  fit <- long_fit()
  prediction <- predict(fit, newdata = orthodont_long())
  expect_equal(prediction, fitted(fit, type = "fixed"), tolerance = 1e-12)
})

test_that("predict on wide fitting data equals fixed fit", {
  units <- simulate_wide()
  fit <- nmfre(cbind(x1, x2, x3, x4) ~ group + z, data = units, rank = 1,
               df_rate = 0.8, control = quiet())
  prediction <- predict(fit, newdata = units)
  expect_equal(prediction, fitted(fit, type = "fixed"), tolerance = 1e-12)
})

test_that("predict uses the fit's factor levels", {
  fit <- long_fit()
  prediction <- predict(fit, newdata = data.frame(Sex = c("Male", "Female")))
  expect_equal(unname(prediction[, 1]),
               as.double(fit$X %*% (fit$Theta[, "(Intercept)"] + fit$Theta[, "SexMale"])))
  expect_equal(unname(prediction[, 2]), as.double(fit$X %*% fit$Theta[, "(Intercept)"]))
  expect_identical(rownames(prediction), rownames(fit$Y))
})

test_that("predict rejects an unknown factor level", {
  fit <- long_fit()
  expect_error(predict(fit, newdata = data.frame(Sex = "Other")), "new level")
})

test_that("predict names a missing covariate", {
  fit <- long_fit()
  expect_error(predict(fit, newdata = data.frame(Age = 1)),
               "`newdata` lacks the covariate\\(s\\) 'Sex'")
})

test_that("predict with A computes X Theta A", {
  fit <- long_fit()
  A <- rbind("(Intercept)" = c(1, 1, 1), SexMale = c(0, 0.5, 1))
  expect_equal(predict(fit, A = A), fit$X %*% fit$Theta %*% A, ignore_attr = TRUE)
  reordered <- A[c("SexMale", "(Intercept)"), ]
  expect_equal(predict(fit, A = reordered), predict(fit, A = A))
})

test_that("predict rejects BLUPs for new units", {
  fit <- long_fit()
  expect_error(predict(fit, A = rbind(1, 0), type = "blup"),
               "Random effects are predicted only for the units of the fit")
})

test_that("predict rejects A of the wrong height", {
  fit <- long_fit()
  expect_error(predict(fit, A = rbind(1, 0, 1)), "`A` has 3 rows but the fit has 2")
})

test_that("predict newdata needs a formula fit", {
  d <- orthodont_data()
  fit <- nmfre(d$Y, d$A, rank = 1, control = quiet())
  expect_error(predict(fit, newdata = data.frame(male = 1)),
               "`newdata` needs a fit made by the formula method")
})
