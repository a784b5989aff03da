# Data sets used across the tests.

# Orthodont (nlme, shipped with R): 4 ages x 27 children, intercept and male.
orthodont_data <- function() {
  orthodont <- as.data.frame(nlme::Orthodont)
  subjects <- unique(as.character(orthodont$Subject))
  Y <- matrix(orthodont$distance, nrow = 4,
              dimnames = list(paste0("age", c(8, 10, 12, 14)), subjects))
  male <- as.numeric(orthodont$Sex[match(subjects, orthodont$Subject)] == "Male")
  list(Y = Y, A = rbind("(Intercept)" = 1, male = male))
}

# Draws Y = X (Theta A + U) + E with Gaussian U and E, kept non-negative by
# a large intercept, as in the Orthodont design.
simulate_orthodont_like <- function(N, seed, sigma2 = 1, tau2 = 1) {
  set.seed(seed)
  X <- c(0.2308, 0.2409, 0.2566, 0.2717)
  X <- X / sum(X)
  Theta <- c(90.50, 9.43)
  male <- rep(c(1, 0), length.out = N)
  A <- rbind("(Intercept)" = 1, male = male)
  scores <- Theta %*% A + rnorm(N, sd = sqrt(tau2))
  Y <- X %*% scores + matrix(rnorm(4 * N, sd = sqrt(sigma2)), 4, N)
  list(Y = pmax(Y, 0), A = A, X = X, Theta = Theta)
}

# Expects every |actual - expected| to be at most `tolerance` (absolute).
expect_within <- function(actual, expected, tolerance) {
  difference <- max(abs(as.double(actual) - as.double(expected)))
  expect_lte(difference, tolerance,
             label = sprintf("max |%s - expected|", deparse(substitute(actual))))
}

# Orthodont in long layout, one row per child and age, with Female as the
# reference level of Sex so that the model matrix is (intercept, male).
orthodont_long <- function() {
  orthodont <- as.data.frame(nlme::Orthodont)
  orthodont$Sex <- relevel(factor(orthodont$Sex, ordered = FALSE), "Female")
  orthodont
}

# Holzinger and Swineford (1939), 301 pupils (lavaan): tests x1..x9 and three
# covariates, each min-max scaled to [0, 1]: reversed age (oldest pupil 0),
# a girls indicator and a Grant-White school indicator.
holzinger_swineford <- function() {
  pupils <- lavaan::HolzingerSwineford1939
  scale01 <- function(v) (v - min(v)) / (max(v) - min(v))
  age <- pupils$ageyr + pupils$agemo / 12
  pupils$age_rev <- scale01(max(age) - age)
  pupils$girl <- scale01(as.numeric(pupils$sex == 2))
  pupils$grant_white <- scale01(as.numeric(pupils$school == "Grant-White"))
  pupils
}

# Wide data: N units, a three-level factor `group` and a covariate `z` in
# [0, 1]; measurements x1..x4 load on one latent score.
simulate_wide <- function(N = 40, seed = 1) {
  set.seed(seed)
  units <- data.frame(group = factor(rep(c("a", "b", "c"), length.out = N)),
                      z = round(runif(N), 3))
  scores <- 20 + 4 * (units$group == "b") + 8 * (units$group == "c") +
    6 * units$z + rnorm(N)
  loadings <- c(0.1, 0.2, 0.3, 0.4)
  for (p in seq_along(loadings)) {
    units[[paste0("x", p)]] <- pmax(loadings[p] * scores + rnorm(N, sd = 0.3), 0)
  }
  units
}

# The wide data's Y as P x N, the layout of the matrix method.
wide_matrix <- function(units) {
  t(as.matrix(units[paste0("x", 1:4)]))
}

quiet <- function() nmfre_control(inference = FALSE)

# Draws a P x N problem Y = X (Theta A + U) + E with a known non-negative
# basis X (unit column sums), Theta in [5, 15], A = intercept plus K - 1
# uniform(0, 1) covariates, U ~ N(0, tau2) and E ~ N(0, sigma2); negative
# cells of Y are set to 0.
simulate_nmfre <- function(P, N, Q, K, seed, sigma2 = 0.25, tau2 = 1) {
  set.seed(seed)
  X <- matrix(runif(P * Q), P, Q)
  X <- sweep(X, 2, colSums(X), "/")
  Theta <- matrix(runif(Q * K, 5, 15), Q, K)
  A <- rbind("(Intercept)" = 1,
             matrix(runif((K - 1) * N), K - 1, N,
                    dimnames = list(paste0("a", seq_len(K - 1)), NULL)))
  U <- matrix(rnorm(Q * N, sd = sqrt(tau2)), Q, N)
  Y <- X %*% (Theta %*% A + U) + matrix(rnorm(P * N, sd = sqrt(sigma2)), P, N)
  list(Y = pmax(Y, 0), A = A, X = X, Theta = Theta)
}
