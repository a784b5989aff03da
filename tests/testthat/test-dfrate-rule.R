# The automatic choice of df_rate, applied to hand-made scan tables: among
# converged fits whose final dfU / cap is below 0.99, the largest rate whose
# cap was hit during the fit; if none was hit, the smallest such rate; if
# none qualifies, an error that shows the table.

scan_of <- function(rate, ratio, hit, converged = rep(TRUE, length(rate))) {
  data.frame(rate = rate, ratio = ratio, hit = hit, converged = converged)
}

test_that("rule takes the largest hit rate below 0.99", {
  scan <- scan_of(rate = c(0.1, 0.2, 0.3, 0.4, 0.5),
                  ratio = c(1.00, 0.995, 0.95, 0.85, 0.40),
                  hit = c(TRUE, TRUE, TRUE, TRUE, FALSE))
  # 0.1 and 0.2 bind (ratio >= 0.99); of 0.3, 0.4 and 0.5 the hit ones are
  # 0.3 and 0.4.
  expect_equal(select_df_rate(scan), 0.4)
  expect_identical(apply_df_rate_rule(scan)$basis, "hit")
})

test_that("rule takes the smallest rate when none was hit", {
  scan <- scan_of(rate = c(0.1, 0.2, 0.3, 0.4),
                  ratio = c(0.999, 0.7, 0.5, 0.3),
                  hit = c(TRUE, FALSE, FALSE, FALSE))
  # The only hit rate, 0.1, binds; the qualifying rates 0.2 to 0.4 were
  # never hit.
  expect_equal(select_df_rate(scan), 0.2)
  expect_identical(apply_df_rate_rule(scan)$basis, "smallest")
})

test_that("rule skips fits that did not converge", {
  scan <- scan_of(rate = c(0.2, 0.4, 0.6, 0.8),
                  ratio = c(0.5, 0.6, 0.7, 0.8),
                  hit = c(TRUE, TRUE, TRUE, FALSE),
                  converged = c(TRUE, TRUE, FALSE, TRUE))
  # 0.6 was hit and does not bind but did not converge.
  expect_equal(select_df_rate(scan), 0.4)
})

test_that("rule treats 0.99 itself as binding", {
  scan <- scan_of(rate = c(0.5, 0.6), ratio = c(0.9899, 0.99), hit = c(TRUE, TRUE))
  expect_equal(select_df_rate(scan), 0.5)
})

test_that("rule skips rows with missing ratios", {
  # A failed fit gives a row of NA (converged FALSE, hit NA).
  scan <- scan_of(rate = c(0.3, 0.6), ratio = c(NA, 0.5), hit = c(NA, FALSE),
                  converged = c(FALSE, TRUE))
  expect_equal(select_df_rate(scan), 0.6)
})

test_that("rule errors with the table when none qualifies", {
  scan <- scan_of(rate = c(0.25, 0.5, 0.75),
                  ratio = c(1.0, 0.999, 0.5),
                  hit = c(TRUE, TRUE, FALSE),
                  converged = c(TRUE, TRUE, FALSE))
  expect_identical(apply_df_rate_rule(scan), list(rate = NA_real_, basis = "none"))
  error <- tryCatch(select_df_rate(scan), error = conditionMessage)
  expect_match(error, "No cap rate qualifies", fixed = TRUE)
  expect_match(error, "Set `df_rate` yourself", fixed = TRUE)
  # The table is part of the message: header and every rate.
  expect_match(error, "rate ratio", fixed = TRUE)
  for (rate in c("0.25", "0.50", "0.75")) expect_match(error, rate, fixed = TRUE)
})

test_that("rule rejects tables without its columns", {
  expect_error(select_df_rate(data.frame(rate = 0.1, ratio = 0.5)),
               "hit, converged missing", fixed = TRUE)
})
