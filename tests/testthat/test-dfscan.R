# nmfre_dfscan(): the scan table, its agreement with single fits, and the
# automatic choice of df_rate behind nmfre(df_rate = NULL).

# Orthodont with tau2 starting at 100: lambda starts at 0.01, so every cap
# below N * rank = 27 is hit at the first iteration.
# The published loop alone (polish = FALSE): with tau2 = 100 the caps are
# hit early and tau2 then stays where the last hit left it, which is the
# path the automatic rule is defined on.
orthodont_scan <- function(rates = c(0.1, 0.5, 0.9, 1), ...) {
  d <- orthodont_data()
  nmfre_dfscan(d$Y, d$A, rank = 1, rates = rates,
               control = nmfre_control(tau2_start = 100, polish = FALSE, ...))
}

# The columns of a scan as a plain named list, without its attributes.
scan_columns <- function(scan) {
  stats::setNames(lapply(names(scan), function(name) scan[[name]]), names(scan))
}

test_that("scan table has one row per rate", {
  scan <- orthodont_scan(rates = c(0.5, 0.1, 1, 0.9, 0.5))
  expect_s3_class(scan, "nmfre_dfscan")
  expect_s3_class(scan, "data.frame")
  # Rates come back sorted, duplicates dropped.
  expect_equal(scan$rate, c(0.1, 0.5, 0.9, 1))
  expect_named(scan, c("rate", "cap", "dfU", "ratio", "status", "hit", "first_hit",
                       "converged", "iterations", "sigma2", "tau2", "ICC"))
  expect_equal(attr(scan, "units"), 27)
  expect_equal(attr(scan, "rank"), 1)
})

test_that("scan columns follow their definitions", {
  scan <- orthodont_scan()
  # cap = max(rate * N * rank, 1) with N = 27, rank = 1.
  expect_equal(scan$cap, pmax(scan$rate * 27, 1))
  expect_equal(scan$ratio, scan$dfU / scan$cap)
  expected_status <- ifelse(scan$ratio >= 0.99, "NG",
                            ifelse(scan$ratio >= 0.8, "BETTER", "GOOD"))
  expect_identical(scan$status, expected_status)
  expect_identical(scan$hit, !is.na(scan$first_hit))
  # dfU never exceeds the cap, which holds every iteration.
  expect_true(all(scan$dfU <= scan$cap + 1e-8))
})

test_that("low caps are hit at the first iteration", {
  scan <- orthodont_scan()
  # lambda = 1 / 100 gives dfU = 27 d / (d + 0.01), close to 27, above the
  # caps 2.7, 13.5 and 24.3; the cap at rate 1 is 27 itself.
  expect_identical(scan$hit, c(TRUE, TRUE, TRUE, FALSE))
  expect_identical(scan$first_hit, c(1L, 1L, 1L, NA))
})

test_that("scan rows equal single fits", {
  d <- orthodont_data()
  scan <- orthodont_scan(rates = c(0.1, 0.9))
  for (rate in c(0.1, 0.9)) {
    fit <- nmfre(d$Y, d$A, rank = 1, df_rate = rate,
                 control = nmfre_control(tau2_start = 100, inference = FALSE, polish = FALSE))
    row <- scan[scan$rate == rate, ]
    expect_identical(row$dfU, fit$dfU)
    expect_identical(row$sigma2, fit$sigma2)
    expect_identical(row$tau2, fit$tau2)
    expect_identical(row$iterations, as.integer(fit$iterations))
    expect_identical(row$first_hit, as.integer(fit$cap$first_hit))
    expect_identical(row$converged, fit$converged)
    # Trace-based ICC: tau2 tr(X'X) / (tau2 tr(X'X) + sigma2 P), P = 4.
    trace <- sum(fit$X^2)
    expect_equal(row$ICC, fit$tau2 * trace / (fit$tau2 * trace + fit$sigma2 * 4),
                 tolerance = 1e-12)
  }
})

test_that("scan does not depend on the thread count", {
  one <- orthodont_scan(threads = 1)
  two <- orthodont_scan(threads = 2)
  expect_identical(scan_columns(one), scan_columns(two))
})

test_that("scan records the automatic choice", {
  scan <- orthodont_scan()
  # The caps at 0.1, 0.5 and 0.9 were hit and none binds at the end
  # (ratio < 0.99), so the rule takes the largest of them.
  expect_true(all(scan$ratio < 0.99))
  expect_equal(attr(scan, "chosen_rate"), 0.9)
  expect_identical(attr(scan, "choice"), "hit")
})

test_that("scan prints its table and choice", {
  scan <- orthodont_scan()
  output <- capture.output(print(scan))
  expect_match(output[1], "N = 27 units, rank 1", fixed = TRUE)
  expect_true(any(grepl("Automatic choice: df_rate = 0.9", output, fixed = TRUE)))
  expect_true(any(grepl("BETTER 0.8 to 0.99", output, fixed = TRUE)))
})

test_that("scan plot draws without error", {
  scan <- orthodont_scan()
  grDevices::pdf(NULL)
  on.exit(grDevices::dev.off())
  expect_identical(plot(scan), scan)
})

test_that("scan rejects invalid rates and controls", {
  d <- orthodont_data()
  expect_error(nmfre_dfscan(d$Y, d$A, rank = 1, rates = c(0.5, 1.5)), "`rates` must be")
  expect_error(nmfre_dfscan(d$Y, d$A, rank = 1, rates = numeric(0)), "`rates` must be")
  expect_error(nmfre_dfscan(d$Y, d$A, rank = 1, rates = c(0.2, NA)), "`rates` must be")
  expect_error(nmfre_dfscan(d$Y, d$A, rank = 1, control = nmfre_control(use_cap = FALSE)),
               "use_cap = TRUE")
  expect_error(nmfre_dfscan(d$Y, d$A, rank = 1, control = nmfre_control(df_cap = 3)),
               "df_cap = NULL")
  expect_error(nmfre_dfscan(d$Y, d$A, rank = 1, unknown = 1), "Unknown argument")
})

test_that("formula scan equals matrix scan", {
  d <- orthodont_data()
  orthodont <- as.data.frame(nlme::Orthodont)
  orthodont$Sex <- relevel(factor(orthodont$Sex, ordered = FALSE), "Female")
  control <- nmfre_control(tau2_start = 100, polish = FALSE)
  by_formula <- nmfre_dfscan(distance ~ Sex, data = orthodont, unit = ~ Subject,
                             occasion = ~ age, rank = 1, rates = c(0.1, 0.9),
                             control = control)
  by_matrix <- nmfre_dfscan(d$Y, d$A, rank = 1, rates = c(0.1, 0.9), control = control)
  expect_identical(by_formula$dfU, by_matrix$dfU)
  expect_identical(attr(by_formula, "chosen_rate"), attr(by_matrix, "chosen_rate"))
  expect_error(nmfre_dfscan(distance ~ Sex, data = orthodont, unit = ~ Subject),
               "occasion")
})

test_that("df_rate NULL keeps the scan and its choice", {
  d <- orthodont_data()
  control <- nmfre_control(tau2_start = 100, inference = FALSE)
  fit <- nmfre(d$Y, d$A, rank = 1, df_rate = NULL, control = control)
  scan <- nmfre_dfscan(d$Y, d$A, rank = 1, control = control)
  expect_s3_class(fit$dfscan, "nmfre_dfscan")
  # The default grid is seq(0.1, 1, by = 0.1).
  expect_equal(fit$dfscan$rate, seq(0.1, 1, by = 0.1))
  expect_identical(scan_columns(fit$dfscan), scan_columns(scan))
  expect_equal(fit$df_rate, attr(scan, "chosen_rate"))
  expect_equal(fit$cap$rate, fit$df_rate)
  expect_null(attributes(fit$df_rate))
  # The final fit is the scan's fit at the chosen rate.
  expect_identical(fit$dfU, scan$dfU[scan$rate == fit$df_rate])
})

test_that("fixed df_rate leaves no scan in the fit", {
  d <- orthodont_data()
  fit <- nmfre(d$Y, d$A, rank = 1, df_rate = 0.21,
               control = nmfre_control(inference = FALSE))
  expect_null(fit$dfscan)
})

test_that("failed fit gives an NA row", {
  # The bridge returns list(ok = FALSE, rate, error) for a rate whose fit
  # failed; the other rates keep their results.
  fits <- list(
    list(ok = TRUE, rate = 0.1, cap = 2.7, dfU = 1.5, cap_hits = 3, cap_first_hit = 1,
         converged = TRUE, iterations = 40, sigma2 = 1.2, tau2 = 0.8, icc = 0.1),
    list(ok = FALSE, rate = 0.2, error = "numerical failure: the objective became non-finite")
  )
  scan <- scan_table(fits, units = 27, rank = 1)
  expect_identical(scan$converged, c(TRUE, FALSE))
  expect_identical(scan$hit, c(TRUE, NA))
  expect_true(is.na(scan$dfU[2]))
  expect_true(is.na(scan$status[2]))
  expect_identical(attr(scan, "errors"),
                   c("0.2" = "numerical failure: the objective became non-finite"))
  expect_equal(apply_df_rate_rule(scan)$rate, 0.1)
  expect_true(any(grepl("Failed fits: rate 0.2", capture.output(print(scan)), fixed = TRUE)))
})
