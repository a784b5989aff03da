# What the certified optimum costs against the plain multiplicative loop, on
# Holzinger-Swineford 1939 (lavaan): Y = tests x1..x9 by 301 pupils; A =
# reversed age, girls indicator and Grant-White indicator; everything
# min-max scaled; no intercept; rank 3; df_rate 0.96. Ten seeds per setting.
#
# Run from the package root after installing nmfre:
#   Rscript inst/bench/optimum.R
library(nmfre)

pupils <- lavaan::HolzingerSwineford1939
scale01 <- function(v) (v - min(v)) / (max(v) - min(v))
age <- pupils$ageyr + pupils$agemo / 12
Y <- t(sapply(paste0("x", 1:9), function(name) scale01(pupils[[name]])))
A <- rbind(age_rev = scale01(max(age) - age),
           girl = scale01(as.numeric(pupils$sex == 2)),
           grant_white = scale01(as.numeric(pupils$school == "Grant-White")))
seeds <- 1:10

# thetas: one column per seed holding vec(Theta) of a rank x K Theta.
theta_spread <- function(thetas, rank) {
  ranges <- apply(thetas, 1, function(v) diff(range(v)))
  row_of_entry <- (seq_len(nrow(thetas)) - 1) %% rank + 1
  row_scale <- tapply(apply(abs(thetas), 1, max), row_of_entry, max)
  max(ranges / row_scale[row_of_entry])
}

settings <- list(
  "plain loop" = nmfre_control(polish = FALSE, inference = FALSE),
  "certified (default)" = nmfre_control(inference = FALSE),
  "certified, no extrapolation" = nmfre_control(inference = FALSE, extrapolate = FALSE),
  "certified, 4 random starts, 2 threads" = nmfre_control(inference = FALSE, nstart = 4, threads = 2)
)
rows <- lapply(names(settings), function(name) {
  runs <- lapply(seeds, function(seed) {
    control <- settings[[name]]
    control$seed <- seed
    seconds <- system.time(
      fit <- suppressWarnings(nmfre(Y, A, rank = 3, df_rate = 0.96, control = control))
    )[["elapsed"]]
    list(seconds = seconds, fit = fit)
  })
  fits <- lapply(runs, `[[`, "fit")
  thetas <- sapply(fits, function(fit) as.double(fit$Theta))
  objectives <- vapply(fits, function(fit) utils::tail(fit$objective, 1), double(1))
  data.frame(
    setting = name,
    median_seconds = stats::median(vapply(runs, `[[`, double(1), "seconds")),
    median_iterations = stats::median(vapply(fits, `[[`, double(1), "iterations")),
    # Largest spread of an entry of Theta across seeds, relative to the
    # largest entry of its basis (row), so entries on the floor 1e-10 do
    # not count as disagreeing.
    theta_spread = signif(theta_spread(thetas, nrow(fits[[1]]$Theta)), 3),
    lowest_objective = signif(min(objectives), 9),
    highest_objective = signif(max(objectives), 9)
  )
})
table <- do.call(rbind, rows)
table$cost_vs_plain <- round(table$median_seconds / table$median_seconds[1], 2)
print(table, row.names = FALSE)
