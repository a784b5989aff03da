# Each bad input gets an R error naming the argument and the remedy.

good <- function() orthodont_data()

fit_quietly <- function(...) nmfre(..., control = nmfre_control(inference = FALSE))

test_that("non-numeric Y is rejected", {
  expect_error(nmfre(matrix(letters[1:8], 2)), "`Y` must be a numeric matrix")
  expect_error(nmfre(matrix(TRUE, 2, 4)), "not a logical matrix")
  expect_error(nmfre_control(maxit = mean), "`maxit` must be a whole number .*, not a function\\.$")
  frame <- data.frame(a = c(1, 2, 3), b = c("x", "y", "z"))
  expect_error(nmfre(frame), "column\\(s\\) 'b' are not")
})

test_that("missing values in Y are counted and located", {
  Y <- good()$Y
  Y[2, 3] <- NA
  Y[1, 5] <- NaN
  expect_error(fit_quietly(Y, good()$A, rank = 1),
               "`Y` has 2 missing or non-finite values.*row 2, column 3")
})

test_that("infinite values in A are rejected", {
  A <- good()$A
  A[2, 4] <- Inf
  expect_error(fit_quietly(good()$Y, A, rank = 1), "`A` has 1 missing or non-finite")
})

test_that("negative Y is rejected with a remedy", {
  Y <- good()$Y
  Y[3, 1] <- -1
  expect_error(fit_quietly(Y, good()$A, rank = 1), "`Y` has 1 negative entries.*Shift or rescale")
})

test_that("negative covariates need free Theta", {
  A <- good()$A
  A["male", ] <- A["male", ] - 0.5
  expect_error(fit_quietly(good()$Y, A, rank = 1), "negative values in 'male'.*theta = \"free\"")
  fit <- suppressWarnings(fit_quietly(good()$Y, A, rank = 1, theta = "free"))
  expect_true(all(is.finite(fit$Theta)))
})

test_that("mismatched dimensions are explained", {
  expect_error(fit_quietly(good()$Y, good()$A[, 1:20], rank = 1),
               "`A` has 20 columns but `Y` has 27 units")
})

test_that("fewer than two units is rejected", {
  expect_error(fit_quietly(good()$Y[, 1, drop = FALSE], rank = 1), "at least 2 units")
})

test_that("invalid rank is rejected", {
  for (rank in list(0, 2.5, 5, NA, "2", c(1, 2))) {
    expect_error(fit_quietly(good()$Y, good()$A, rank = rank),
                 "`rank` must be a whole number between 1 and min\\(P, N\\) = 4")
  }
})

test_that("collinear covariates are named", {
  A <- rbind(good()$A, "twice male %" = 2 * good()$A["male", ])
  expect_error(fit_quietly(good()$Y, A, rank = 1),
               "collinear.*'male', 'twice male %'")
})

test_that("an all-zero covariate is named", {
  A <- rbind(good()$A, z = 0)
  expect_error(fit_quietly(good()$Y, A, rank = 1), "0 for every unit \\('z'\\); drop them")
})

test_that("all-zero Y is rejected", {
  expect_error(fit_quietly(matrix(0, 3, 4), rank = 1), "all zero")
})

test_that("zero rows and columns of Y are allowed", {
  Y <- good()$Y
  Y[, 3] <- 0
  Y <- rbind(Y, zero = 0)
  fit <- fit_quietly(Y, good()$A, rank = 1, df_rate = 0.21)
  expect_true(all(is.finite(fit$Theta)))
  expect_true(all(is.finite(fit$U)))
  expect_true(all(is.finite(fit$X)))
})

test_that("control values out of range are rejected", {
  expect_error(nmfre_control(epsilon = -1), "`epsilon` must be a single number")
  expect_error(nmfre_control(maxit = 0), "`maxit` must be a whole number")
  expect_error(nmfre_control(maxit = 10.5), "`maxit` must be a whole number")
  expect_error(nmfre_control(B = -5), "`B` must be a whole number")
  expect_error(nmfre_control(B = 1), "at least 2")
  expect_error(nmfre_control(level = 1.2), "`level` must be a single number")
  expect_error(nmfre_control(seed = -1), "`seed` must be a whole number")
  expect_error(nmfre_control(seed = NA), "`seed` must be a whole number")
  expect_error(nmfre_control(threads = 0), "`threads` must be a whole number")
  expect_error(nmfre_control(df_cap = 0), "`df_cap` must be a single number")
  expect_error(nmfre_control(weights = "uniform"), "`weights` must be one of")
  expect_error(nmfre_control(verbose = "yes"), "`verbose` must be TRUE or FALSE")
  expect_error(fit_quietly(good()$Y, good()$A, rank = 1, df_rate = 0), "`df_rate` must be")
  expect_error(fit_quietly(good()$Y, good()$A, rank = 1, df_rate = 1.5), "`df_rate` must be")
})

test_that("control must come from nmfre_control", {
  expect_error(nmfre(good()$Y, rank = 1, control = list(maxit = 5)),
               "`control` must be created by nmfre_control")
  expect_error(nmfre(good()$Y, rank = 1, maxit = 5), "Unknown argument\\(s\\) `maxit`")
})

test_that("bad starting values are rejected", {
  control <- nmfre_control(start = list(X = matrix(-1, 4, 1)), inference = FALSE)
  expect_error(nmfre(good()$Y, good()$A, rank = 1, control = control),
               "`start\\$X` must be non-negative")
  control <- nmfre_control(start = list(Theta = matrix(1, 3, 3)), inference = FALSE)
  expect_error(nmfre(good()$Y, good()$A, rank = 1, control = control),
               "`start\\$Theta` must be a numeric 1 x 2 matrix")
  expect_error(nmfre_control(start = list(V = 1)), "`start` must be NULL or a list")
})

test_that("user objects are untouched by a fit", {
  d <- good()
  Y <- d$Y
  A <- d$A
  fit_quietly(Y, A, rank = 1, df_rate = 0.21)
  expect_identical(Y, d$Y)
  expect_identical(A, d$A)
})

test_that("extreme scales are fitted after internal rescaling", {
  # Y times 2^-400 is fitted as Y times 2^-400 / scale, where scale is a
  # power of 2; mapping back must reproduce that moderate-scale fit exactly.
  d <- good()
  tiny <- suppressWarnings(nmfre(d$Y * 2^-400, d$A, rank = 1, df_rate = 0.21))
  expect_true(tiny$scale != 1)
  moderate <- suppressWarnings(nmfre(d$Y * 2^-400 / tiny$scale, d$A, rank = 1, df_rate = 0.21))
  expect_identical(moderate$scale, 1)
  expect_equal(tiny$Theta, moderate$Theta * tiny$scale, tolerance = 1e-12)
  expect_equal(tiny$inference$coefficients[, "Std. Error"],
               moderate$inference$coefficients[, "Std. Error"] * tiny$scale, tolerance = 1e-12)
  large <- suppressWarnings(nmfre(d$Y * 1e100, d$A, rank = 1, df_rate = 0.21))
  expect_true(all(is.finite(large$Theta)))
  expect_true(all(is.finite(large$inference$coefficients[, "Std. Error"])))
  expect_true(all(is.finite(large$inference$coefficients[, "Boot SE"])))
  expect_true(large$converged)
  expect_error(suppressWarnings(nmfre(d$Y * 1e300, d$A, rank = 1, df_rate = 0.21)),
               "fitted variances overflow.*divide Y by a power of 10")
  # At 1e-200 the variances (about 1e-400) are below the smallest double.
  expect_error(suppressWarnings(nmfre(d$Y * 1e-200, d$A, rank = 1, df_rate = 0.21)),
               "fitted variances underflow.*multiply Y by a power of 10, such as 10\\^199")
})

test_that("small-scale Theta is not reported at its bound", {
  # Theta scales with Y, so on Y * 1e-10 the intercept is about 9e-9;
  # only entries at the core's floor (1e-10 on the scale it fitted) count.
  d <- good()
  messages <- character()
  withCallingHandlers(
    nmfre(d$Y * 1e-10, d$A, rank = 1, df_rate = 0.21, control = nmfre_control(inference = FALSE)),
    warning = function(w) {
      messages <<- c(messages, conditionMessage(w))
      invokeRestart("muffleWarning")
    })
  expect_false(any(grepl("lower bound", messages)))
})

test_that("a cap that binds gives a warning", {
  # In mm the residual variance (about 3) keeps lambda large; in units of
  # 16 mm sigma2 is 256 times smaller, lambda = sigma2 / tau2 collapses and
  # the cap (rate 0.21) holds dfU at its ceiling.
  expect_warning(nmfre(good()$Y / 16, good()$A, rank = 1, df_rate = 0.21,
                       control = nmfre_control(inference = FALSE)),
                 "The df cap binds at the end of the fit")
})

test_that("duplicated or missing covariate rows are rejected", {
  d <- good()
  A <- rbind(a = 1, a = d$A["male", ])
  expect_error(fit_quietly(d$Y, A, rank = 1), "duplicated row names \\('a'\\)")
  expect_error(fit_quietly(d$Y, matrix(0, 0, 27), rank = 1), "`A` has no rows")
})

test_that("confint and anova reject misuse", {
  d <- good()
  fit <- nmfre(d$Y, d$A, rank = 1, df_rate = 0.21, control = nmfre_control(B = 0))
  expect_error(confint(fit, parm = 99), "between 1 and 2")
  expect_error(anova(fit, fit), "comparing fits is not supported")
})

test_that("early convergence still estimates sigma2", {
  # This fit converges before iteration 50, where the damped sigma2 update
  # starts; polishing must still move sigma2 off its start value 1.
  set.seed(42)
  Y <- matrix(rexp(150, 0.1), 5, 30)
  fit <- suppressWarnings(nmfre(Y, runif(30), rank = 1,
                                control = nmfre_control(inference = FALSE)))
  expect_lt(fit$optimum$paper_iterations, 50)
  expect_equal(fit$sigma2, fit$rss / length(Y), tolerance = 1e-8)
})
