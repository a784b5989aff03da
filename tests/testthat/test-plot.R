# plot(): one page per requested diagnostic, in base graphics.

count_pdf_pages <- function(draw) {
  file <- tempfile(fileext = ".pdf")
  grDevices::pdf(file, compress = FALSE)
  draw()
  grDevices::dev.off()
  on.exit(unlink(file))
  text <- readLines(file, warn = FALSE)
  sum(grepl("/Type /Page\\b", text) & !grepl("/Type /Pages", text))
}

test_that("plot draws one page per diagnostic", {
  d <- orthodont_data()
  fit <- nmfre(d$Y, d$A, rank = 2, df_rate = 0.3, control = quiet())
  expect_identical(count_pdf_pages(function() plot(fit)), 3L)
  expect_identical(count_pdf_pages(function() plot(fit, which = 2)), 1L)
})

test_that("plot returns the fit invisibly", {
  d <- orthodont_data()
  fit <- nmfre(d$Y, d$A, rank = 1, df_rate = 0.21, control = quiet())
  grDevices::pdf(NULL)
  on.exit(grDevices::dev.off())
  expect_invisible(plot(fit, which = 3))
  expect_identical(withVisible(plot(fit, which = 1))$value, fit)
})

test_that("plot rejects unknown plot numbers", {
  d <- orthodont_data()
  fit <- nmfre(d$Y, d$A, rank = 1, df_rate = 0.21, control = quiet())
  expect_error(plot(fit, which = 4), "`which` must hold plot numbers among 1")
})
