# The Rust core against the plain-R oracle in helper-reference.R. Both start
# from the same explicit X, Theta and U and run the same iterations
# (epsilon = 0 and a fixed maxit), so they compute the same iterates and may
# differ only by rounding, which stays far below the 1e-8 relative tolerance
# used here.

# A start both implementations accept: uniform(0.5, 1.5) loadings, Theta = 1
# and U = 0, as the package's default start has.
reference_start <- function(P, N, Q, K, seed = 1) {
  set.seed(seed)
  list(X = matrix(runif(P * Q, 0.5, 1.5), P, Q),
       Theta = matrix(1, Q, K),
       U = matrix(0, Q, N))
}

# Fits with the Rust core through nmfre() and with the oracle, from `start`.
# The oracle implements the published algorithm alone, so the Rust fit runs
# without its polishing phase.
# cap is "rate", "absolute" or "off"; cap_value is the rate or the ceiling.
# Warnings (not converged, cap binding, Theta at 0) are muffled: these
# comparisons concern the numbers, and the warnings have their own tests.
fit_both <- function(Y, A, start, theta = "nonneg", cap = "rate", cap_value = 0.1,
                     maxit = 300, epsilon = 0) {
  control <- nmfre_control(start = start, maxit = maxit, epsilon = epsilon,
                           inference = FALSE, use_cap = cap != "off", polish = FALSE,
                           df_cap = if (cap == "absolute") cap_value)
  rust <- suppressWarnings(
    nmfre(Y, A, rank = ncol(start$X), df_rate = if (cap == "rate") cap_value else 0.1,
          theta = theta, control = control)
  )
  reference <- reference_fit(Y, A, start, theta = theta, cap = cap, cap_value = cap_value,
                             maxit = maxit, epsilon = epsilon)
  list(rust = rust, reference = reference)
}

# Expects max |actual - expected| <= tolerance * max |expected|: a relative
# error on the scale of the whole vector or matrix, so that entries near 0
# (centred U) are judged against their matrix's size.
expect_relative <- function(actual, expected, tolerance = 1e-8, label = "value") {
  actual <- as.double(actual)
  expected <- as.double(expected)
  expect_identical(length(actual), length(expected))
  error <- max(abs(actual - expected)) / max(abs(expected), .Machine$double.xmin)
  expect_lte(error, tolerance, label = sprintf("relative error of %s", label))
}

expect_same_fit <- function(both) {
  rust <- both$rust
  reference <- both$reference
  expect_identical(rust$iterations, as.double(reference$iterations))
  expect_identical(rust$converged, reference$converged)
  for (name in c("X", "Theta", "U", "sigma2", "tau2", "lambda", "dfU", "rss", "objective")) {
    expect_relative(rust[[name]], reference[[name]], label = name)
  }
  expect_identical(rust$cap$hits, as.double(reference$cap_hits))
  expect_identical(rust$cap$first_hit, as.double(reference$cap_first_hit))
  expect_identical(rust$cap$last_hit, as.double(reference$cap_last_hit))
}

test_that("Rust fit equals oracle: Orthodont rank 1", {
  d <- orthodont_data()
  start <- reference_start(4, 27, 1, 2)
  both <- fit_both(d$Y, d$A, start, cap_value = 0.21)
  expect_same_fit(both)
  expect_identical(both$rust$iterations, 300)
})

test_that("Rust fit equals oracle: Orthodont rank 2", {
  d <- orthodont_data()
  start <- reference_start(4, 27, 2, 2, seed = 2)
  expect_same_fit(fit_both(d$Y, d$A, start, cap_value = 0.3))
})

test_that("Rust fit equals oracle: simulated, every cap and Theta", {
  d <- simulate_nmfre(P = 6, N = 40, Q = 2, K = 2, seed = 11)
  start <- reference_start(6, 40, 2, 2, seed = 3)
  cases <- expand.grid(cap = c("rate", "absolute", "off"), theta = c("nonneg", "free"),
                       stringsAsFactors = FALSE)
  cases$cap_value <- c(rate = 0.1, absolute = 5, off = 0)[cases$cap]
  for (i in seq_len(nrow(cases))) {
    both <- fit_both(d$Y, d$A, start, theta = cases$theta[i], cap = cases$cap[i],
                     cap_value = cases$cap_value[i])
    expect_same_fit(both)
  }
})

test_that("Rust fit equals oracle: each way of computing an iteration", {
  # The core picks how to form an iteration from the data's shape and
  # values; each choice must give the oracle's iterates.
  # - P = 12 > N / 4: no Gram matrices, every step reads Y.
  # - Y shifted down by 4 and clipped at 0: more than a tenth of the cells
  #   are zero, so the positive part needs correcting in many units and
  #   whole columns.
  # - P N = 75000 cells (above 65536): Y'X from products, on 1 and 2 threads.
  narrow <- simulate_nmfre(P = 12, N = 30, Q = 2, K = 2, seed = 21)
  shifted <- simulate_nmfre(P = 6, N = 40, Q = 2, K = 2, seed = 22)
  large <- simulate_nmfre(P = 30, N = 2500, Q = 3, K = 2, seed = 23)
  zeros <- pmax(shifted$Y - 4, 0)
  expect_gt(mean(zeros == 0), 0.1)
  cases <- list(
    list(Y = narrow$Y, A = narrow$A, Q = 2, maxit = 300),
    list(Y = zeros, A = shifted$A, Q = 2, maxit = 300),
    list(Y = large$Y, A = large$A, Q = 3, maxit = 60)
  )
  for (case in cases) {
    start <- reference_start(nrow(case$Y), ncol(case$Y), case$Q, 2, seed = 4)
    expect_same_fit(fit_both(case$Y, case$A, start, maxit = case$maxit))
  }
  start <- reference_start(30, 2500, 3, 2, seed = 4)
  control <- nmfre_control(start = start, maxit = 60, epsilon = 0, inference = FALSE,
                           polish = FALSE, threads = 2)
  two_threads <- suppressWarnings(nmfre(large$Y, large$A, rank = 3, df_rate = 0.1,
                                        control = control))
  reference <- reference_fit(large$Y, large$A, start, cap = "rate", cap_value = 0.1,
                             maxit = 60, epsilon = 0)
  expect_relative(two_threads$Theta, reference$Theta, label = "Theta on 2 threads")
  expect_relative(two_threads$X, reference$X, label = "X on 2 threads")
})

test_that("simulated problem exercises the cap's root search", {
  # Guards the case above. The start's X, normalised on P = 6 rows, has X'X
  # eigenvalues near 1/3 and 0, so lambda = 1 gives dfU near
  # 40 * (1/3) / (4/3) = 10, above both ceilings (0.1 * 40 * 2 = 8 and 5):
  # the root search runs from iteration 1 on and its result is compared.
  d <- simulate_nmfre(P = 6, N = 40, Q = 2, K = 2, seed = 11)
  start <- reference_start(6, 40, 2, 2, seed = 3)
  for (cap in c("rate", "absolute")) {
    both <- fit_both(d$Y, d$A, start, cap = cap, cap_value = if (cap == "rate") 0.1 else 5)
    expect_identical(both$reference$cap_first_hit, 1L)
    expect_gt(both$reference$cap_hits, 1)
  }
})

test_that("default stopping rule stops both at one iteration", {
  d <- orthodont_data()
  both <- fit_both(d$Y, d$A, reference_start(4, 27, 1, 2), cap_value = 0.21,
                   maxit = 50000, epsilon = 1e-8)
  expect_true(both$reference$converged)
  expect_lt(both$reference$iterations, 50000)
  expect_same_fit(both)

  d <- simulate_nmfre(P = 6, N = 40, Q = 2, K = 2, seed = 11)
  both <- fit_both(d$Y, d$A, reference_start(6, 40, 2, 2, seed = 3), cap_value = 0.1,
                   maxit = 50000, epsilon = 1e-8)
  expect_true(both$reference$converged)
  expect_same_fit(both)
})

# Inference conditions on a fit, so the Rust inference is compared with the
# oracle's at the Rust fit's X, Theta, U and lambda.
expect_same_inference <- function(fit, Y, A, sigma2_rule = "corrected",
                                  information = "corrected") {
  rust <- nmfre_inference(fit, B = 0, sigma2_rule = sigma2_rule,
                          information = information)$inference
  reference <- reference_inference(Y, A, fit$X, fit$Theta, fit$U, fit$lambda,
                                   sigma2_rule = sigma2_rule, information = information)
  expect_relative(rust$sigma2, reference$sigma2, label = "sigma2_hat")
  expect_relative(rust$rss, reference$rss, label = "rss")
  expect_relative(rust$dfU, reference$dfU, label = "dfU")
  expect_relative(rust$trace_hat, reference$trace_hat, label = "trace_hat")
  expect_relative(rust$information, reference$information, label = "information")
  expect_relative(rust$vcov_model, reference$H, label = "model covariance")
  expect_relative(rust$vcov_sandwich, reference$sandwich, label = "sandwich covariance")
}

test_that("Rust inference equals oracle: Orthodont rank 1", {
  d <- orthodont_data()
  fit <- nmfre(d$Y, d$A, rank = 1, df_rate = 0.21,
               control = nmfre_control(inference = FALSE))
  expect_same_inference(fit, d$Y, d$A)
})

test_that("Rust inference equals oracle: every variance and information rule", {
  d <- simulate_nmfre(P = 6, N = 40, Q = 2, K = 2, seed = 11)
  start <- reference_start(6, 40, 2, 2, seed = 3)
  for (theta in c("nonneg", "free")) {
    fit <- fit_both(d$Y, d$A, start, theta = theta)$rust
    for (sigma2_rule in c("corrected", "plain", "fixed")) {
      for (information in c("corrected", "plain")) {
        expect_same_inference(fit, d$Y, d$A, sigma2_rule, information)
      }
    }
  }
})

test_that("Rust scores equal oracle scores", {
  # The scores drive the bootstrap but are not part of the fit object, so
  # they are read from the internal call into the core.
  d <- simulate_nmfre(P = 6, N = 40, Q = 2, K = 2, seed = 11)
  fit <- fit_both(d$Y, d$A, reference_start(6, 40, 2, 2, seed = 3))$rust
  fitted <- list(rank = 2, X = as.double(fit$X), Theta = as.double(fit$Theta),
                 U = as.double(fit$U), lambda = fit$lambda)
  options <- list(sigma2_rule = "corrected", information = "corrected", B = 0,
                  weights = "exponential", boot_seed = 1, project = TRUE,
                  level = 0.95, threads = 1L)
  rust <- nmfre:::rust_infer(d$Y, d$A, fitted, options)
  reference <- reference_inference(d$Y, d$A, fit$X, fit$Theta, fit$U, fit$lambda)
  expect_identical(dim(rust$scores), c(40L, 4L))
  expect_relative(rust$scores, reference$scores, label = "scores")
})
