# The long-layout formula method for repeated measures: rows are (unit,
# occasion) pairs, pivoted to Y with occasions as rows in sorted order and
# units as columns in order of first appearance.

test_that("Orthodont long formula fit equals matrix fit", {
  orthodont <- orthodont_long()
  d <- orthodont_data()
  control <- nmfre_control(B = 50)
  by_formula <- nmfre(distance ~ Sex, data = orthodont, unit = ~ Subject,
                      occasion = ~ age, rank = 1, df_rate = 0.21, control = control)
  by_matrix <- nmfre(d$Y, d$A, rank = 1, df_rate = 0.21, control = control)

  expect_equal(unname(by_formula$Theta), unname(by_matrix$Theta), tolerance = 1e-10)
  expect_equal(unname(by_formula$Y), unname(d$Y))
  expect_equal(unname(by_formula$A), unname(d$A))
  expect_equal(unname(by_formula$inference$coefficients),
               unname(by_matrix$inference$coefficients), tolerance = 1e-10)
  expect_identical(colnames(by_formula$Theta), c("(Intercept)", "SexMale"))
  expect_identical(by_formula$layout$type, "long")
  expect_identical(by_formula$layout$occasions, c(8, 10, 12, 14))
})

test_that("Male reference level warns that Theta hit zero", {
  # nlme's Orthodont lists Male first, so the default contrast estimates a
  # Female effect; girls' distances are smaller, so that effect is negative
  # and non-negative Theta stops at its bound instead.
  orthodont <- as.data.frame(nlme::Orthodont)
  expect_identical(levels(orthodont$Sex)[1], "Male")
  expect_warning(
    fit <- nmfre(distance ~ Sex, data = orthodont, unit = ~ Subject, occasion = ~ age,
                 rank = 1, df_rate = 0.21, control = quiet()),
    "lower bound 0 for Basis1:SexFemale"
  )
  expect_lt(fit$Theta[1, "SexFemale"], 1e-3 * fit$Theta[1, "(Intercept)"])
})

test_that("free Theta gives a negative Female effect without warning", {
  orthodont <- as.data.frame(nlme::Orthodont)
  expect_no_warning(
    fit <- nmfre(distance ~ Sex, data = orthodont, unit = ~ Subject, occasion = ~ age,
                 rank = 1, df_rate = 0.21, theta = "free", control = quiet())
  )
  expect_lt(fit$Theta[1, "SexFemale"], 0)
})

test_that("pivot sorts occasions and orders units by appearance", {
  orthodont <- orthodont_long()
  set.seed(3)
  shuffled <- orthodont[sample(nrow(orthodont)), ]
  fit <- nmfre(distance ~ Sex, data = shuffled, unit = ~ Subject, occasion = ~ age,
               rank = 1, df_rate = 0.21, control = quiet())
  expected_units <- unique(as.character(shuffled$Subject))
  expect_identical(colnames(fit$Y), expected_units)
  expect_identical(rownames(fit$Y), c("age8", "age10", "age12", "age14"))
  for (i in c(1, 50, 108)) {
    row <- shuffled[i, ]
    cell <- fit$Y[paste0("age", row$age), as.character(row$Subject)]
    expect_identical(cell, row$distance)
  }
  male <- as.numeric(shuffled$Sex[match(expected_units, shuffled$Subject)] == "Male")
  expect_equal(unname(fit$A["SexMale", ]), male)
})

test_that("character column names unit and occasion", {
  orthodont <- orthodont_long()
  by_name <- nmfre(distance ~ Sex, data = orthodont, unit = "Subject",
                   occasion = "age", rank = 1, df_rate = 0.21, control = quiet())
  by_formula <- nmfre(distance ~ Sex, data = orthodont, unit = ~ Subject,
                      occasion = ~ age, rank = 1, df_rate = 0.21, control = quiet())
  expect_identical(by_name$Theta, by_formula$Theta)
})

test_that("dot excludes unit and occasion columns", {
  orthodont <- orthodont_long()[c("distance", "age", "Subject", "Sex")]
  fit <- nmfre(distance ~ ., data = orthodont, unit = ~ Subject, occasion = ~ age,
               rank = 1, df_rate = 0.21, control = quiet())
  expect_identical(colnames(fit$Theta), c("(Intercept)", "SexMale"))
  expect_identical(fit$formula, distance ~ Sex, ignore_attr = TRUE)
})

test_that("covariate varying within a unit is an error", {
  orthodont <- orthodont_long()
  orthodont$group <- as.numeric(orthodont$Sex == "Male")
  second_row_of_m05 <- which(orthodont$Subject == "M05")[2]
  orthodont$group[second_row_of_m05] <- 0.5
  expect_error(
    nmfre(distance ~ group, data = orthodont, unit = ~ Subject, occasion = ~ age,
          rank = 1, control = quiet()),
    "Covariate 'group' varies within unit 'M05'"
  )
})

test_that("missing occasion names unit and occasion", {
  orthodont <- orthodont_long()
  gone <- orthodont$Subject == "M03" & orthodont$age == 12
  expect_error(
    nmfre(distance ~ Sex, data = orthodont[!gone, ], unit = ~ Subject,
          occasion = ~ age, rank = 1, control = quiet()),
    "Unit 'M03' has no row for occasion age = 12"
  )
})

test_that("repeated occasion within a unit is an error", {
  orthodont <- orthodont_long()
  repeated <- rbind(orthodont, orthodont[orthodont$Subject == "F02" & orthodont$age == 10, ])
  expect_error(
    nmfre(distance ~ Sex, data = repeated, unit = ~ Subject, occasion = ~ age,
          rank = 1, control = quiet()),
    "Unit 'F02' has 2 rows for occasion age = 10"
  )
})

test_that("missing measurement drops the whole unit", {
  orthodont <- orthodont_long()
  orthodont$distance[orthodont$Subject == "F04" & orthodont$age == 8] <- NA
  expect_message(
    fit <- nmfre(distance ~ Sex, data = orthodont, unit = ~ Subject, occasion = ~ age,
                 rank = 1, df_rate = 0.21, control = quiet()),
    "dropped 1 of 27 units \\(4 rows\\)"
  )
  expect_identical(ncol(fit$Y), 26L)
  expect_false("F04" %in% colnames(fit$Y))
  expect_identical(names(fit$na_action), "F04")
})

test_that("subset on occasions keeps complete units", {
  orthodont <- orthodont_long()
  fit <- nmfre(distance ~ Sex, data = orthodont, subset = age >= 10,
               unit = ~ Subject, occasion = ~ age, rank = 1, df_rate = 0.21,
               control = quiet())
  expect_identical(rownames(fit$Y), c("age10", "age12", "age14"))
  expect_identical(ncol(fit$Y), 27L)
})

test_that("factor occasions follow their level order", {
  orthodont <- orthodont_long()
  orthodont$visit <- factor(paste0("v", orthodont$age), levels = c("v14", "v12", "v10", "v8"))
  fit <- nmfre(distance ~ Sex, data = orthodont, unit = ~ Subject, occasion = ~ visit,
               rank = 1, df_rate = 0.21, control = quiet())
  expect_identical(rownames(fit$Y), c("v14", "v12", "v10", "v8"))
  expect_identical(unname(fit$Y[, "M01"]), c(31, 29, 25, 26))
})
