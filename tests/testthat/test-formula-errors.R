# Misuse of the formula method gets an error that names the problem and the
# remedy.

test_that("unknown formula variable is named", {
  units <- simulate_wide()
  expect_error(nmfre(cbind(x1, x2, x3, x4) ~ groop, data = units, rank = 1),
               "Variable 'groop' in the formula was not found in `data`")
  expect_error(nmfre(cbind(x1, x2, x3, x4) ~ groop, data = units, rank = 1),
               "the columns of `data` are group, z, x1")
})

test_that("unknown unit variable is named", {
  orthodont <- orthodont_long()
  expect_error(nmfre(distance ~ Sex, data = orthodont, unit = ~ Subjct,
                     occasion = ~ age, rank = 1),
               "Variable 'Subjct' in `unit` was not found")
})

test_that("non-numeric response column is rejected", {
  units <- simulate_wide()
  expect_error(nmfre(cbind(x1, x2, group) ~ z, data = units, rank = 1),
               "Response variable 'group' is a factor")
  units$label <- as.character(units$group)
  expect_error(nmfre(cbind(x1, label) ~ z, data = units, rank = 1),
               "Response variable 'label' is a character")
})

test_that("unit without occasion is rejected", {
  orthodont <- orthodont_long()
  expect_error(nmfre(distance ~ Sex, data = orthodont, unit = ~ Subject, rank = 1),
               "`unit` was given without `occasion`")
})

test_that("occasion without unit is rejected", {
  orthodont <- orthodont_long()
  expect_error(nmfre(distance ~ Sex, data = orthodont, occasion = ~ age, rank = 1),
               "`occasion` was given without `unit`")
})

test_that("unit naming two variables is rejected", {
  orthodont <- orthodont_long()
  expect_error(nmfre(distance ~ Sex, data = orthodont, unit = ~ Subject + Sex,
                     occasion = ~ age, rank = 1),
               "`unit` must name a single variable")
})

test_that("single response column needs the long layout", {
  orthodont <- orthodont_long()
  expect_error(nmfre(distance ~ Sex, data = orthodont, rank = 1),
               "single column.*give `unit` and `occasion`")
})

test_that("several response columns need the wide layout", {
  units <- simulate_wide()
  units$id <- seq_len(nrow(units))
  units$time <- 1
  expect_error(nmfre(cbind(x1, x2) ~ z, data = units, unit = ~ id, occasion = ~ time,
                     rank = 1),
               "left side must be one response variable")
})

test_that("one-sided formula is rejected", {
  units <- simulate_wide()
  expect_error(nmfre(~ z, data = units, rank = 1), "formula must be two-sided")
})

test_that("negative covariate column is named", {
  units <- simulate_wide()
  units$centred <- units$z - 0.5
  expect_error(nmfre(cbind(x1, x2, x3, x4) ~ centred, data = units, rank = 1),
               "Model matrix column\\(s\\) 'centred' have negative values")
})

test_that("negative response names unit and measurement", {
  units <- simulate_wide()
  units$x3[5] <- -1
  expect_error(nmfre(cbind(x1, x2, x3, x4) ~ z, data = units, rank = 1),
               "first for unit '5', measurement 'x3'")
})

test_that("collinear terms are reported", {
  units <- simulate_wide()
  units$z2 <- 2 * units$z
  expect_error(nmfre(cbind(x1, x2, x3, x4) ~ z + z2, data = units, rank = 1),
               "model matrix columns are collinear.*Remove a term from the formula")
})

test_that("misspelt argument is rejected", {
  orthodont <- orthodont_long()
  expect_error(nmfre(distance ~ Sex, data = orthodont, unit = ~ Subject,
                     occasions = ~ age, rank = 1),
               "Unknown argument\\(s\\) `occasions`")
})

test_that("non-data-frame data is rejected", {
  expect_error(nmfre(cbind(x1, x2) ~ 1, data = "units", rank = 1),
               "`data` must be a data frame")
})
