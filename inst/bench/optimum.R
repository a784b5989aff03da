# What the certified optimum costs against the plain multiplicative loop, on
# Holzinger-Swineford 1939 (lavaan): Y = tests x1..x9 by 301 pupils; A =
# reversed age, girls indicator and Grant-White indicator, each min-max
# scaled; no intercept; rank 3; df_rate 0.96.
#
# Run from the package root after installing nmfre:
#   Rscript inst/bench/optimum.R
library(nmfre)

pupils <- lavaan::HolzingerSwineford1939
scale01 <- function(v) (v - min(v)) / (max(v) - min(v))
age <- pupils$ageyr + pupils$agemo / 12
Y <- t(as.matrix(pupils[paste0("x", 1:9)]))
A <- rbind(age_rev = scale01(max(age) - age),
           girl = scale01(as.numeric(pupils$sex == 2)),
           grant_white = scale01(as.numeric(pupils$school == "Grant-White")))

settings <- list(
  "plain loop" = nmfre_control(polish = FALSE, inference = FALSE),
  "polished (default)" = nmfre_control(inference = FALSE),
  "polished, 4 random starts, 2 threads" = nmfre_control(inference = FALSE, nstart = 4, threads = 2)
)
rows <- lapply(names(settings), function(name) {
  seconds <- vapply(1:5, function(seed) {
    control <- settings[[name]]
    control$seed <- seed
    system.time(suppressWarnings(nmfre(Y, A, rank = 3, df_rate = 0.96, control = control)))[["elapsed"]]
  }, double(1))
  thetas <- sapply(1:5, function(seed) {
    control <- settings[[name]]
    control$seed <- seed
    as.double(suppressWarnings(nmfre(Y, A, rank = 3, df_rate = 0.96, control = control))$Theta)
  })
  spread <- max(apply(thetas, 1, function(v) diff(range(v)) / mean(abs(v))))
  data.frame(setting = name, median_seconds = stats::median(seconds),
             theta_spread_over_5_seeds = signif(spread, 3))
})
table <- do.call(rbind, rows)
table$cost_vs_plain <- round(table$median_seconds / table$median_seconds[1], 2)
print(table, row.names = FALSE)
