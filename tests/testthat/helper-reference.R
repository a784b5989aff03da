# Plain-R reference implementation ("oracle") of the NMF-RE estimation loop
# and of the inference on Theta, written for reading rather than speed. The
# tests compare the Rust core with it, and inst/bench/oracle.R times the two
# against each other.
#
# Model: Y = X (Theta A + U) + E with Y P x N, X P x Q (non-negative, unit
# column sums), Theta Q x K, A K x N, U Q x N; lambda = sigma2 / tau2.
#
# The oracle follows the Rust loop operation by operation, in the same order,
# so that both give the same iterates up to rounding. It takes explicit
# starting values: the default start of the package perturbs NNDSVDar zeros
# with draws from a ChaCha20 generator, which R cannot reproduce. Give both
# the same start, in the package through nmfre_control(start = ...).

reference_constants <- list(
  eps = 1e-10,               # floor for X and Theta and for denominators
  variance_min = 1e-12,      # clipping bounds of sigma2 and tau2
  variance_max = 1e12,
  lambda_max = 1e12,         # largest lambda the cap's root search tries
  lambda_tolerance = 1e-8,   # absolute tolerance of that root search
  information_ridge = 1e-8   # added to the diagonal of the information
)

# Divides elementwise by max(denominator, eps); a NaN or infinite ratio is 0.
reference_safe_divide <- function(numerator, denominator) {
  ratio <- numerator / pmax(denominator, reference_constants$eps)
  ratio[!is.finite(ratio)] <- 0
  ratio
}

reference_clip_variance <- function(value) {
  min(max(value, reference_constants$variance_min), reference_constants$variance_max)
}

# Scales X's columns to sum 1 and moves each scale into the matching rows
# of Theta and U, leaving X Theta and X U unchanged. A column whose sum is
# zero or not finite is left alone.
reference_normalise <- function(X, Theta, U) {
  s <- colSums(X)
  s[!(is.finite(s) & s > 0)] <- 1
  list(X = sweep(X, 2, s, "/"), Theta = Theta * s, U = U * s)
}

# dfU(lambda) = N * sum_q d_q / (d_q + lambda) for the eigenvalues d of X'X.
reference_effective_df <- function(eigenvalues, lambda, N) {
  d <- pmax(eigenvalues, 0)
  shares <- ifelse(d + lambda > 0, d / (d + lambda), 0)
  N * sum(shares)
}

# Ceiling on dfU, or NA when the cap is off.
reference_cap_value <- function(cap, cap_value, N, Q) {
  switch(cap,
    rate = max(cap_value * N * Q, 1),
    absolute = cap_value,
    off = NA_real_
  )
}

# Returns the smallest lambda (to the search tolerance) at or above `lambda`
# where dfU does not exceed `cap`. dfU decreases in lambda: bracket the root
# by multiplying lambda by 10 (from 1e-6 when lambda is 0) until dfU is at
# or below the cap, then bisect until the bracket is narrower than 1e-8.
# The upper end of the final bracket is returned, so dfU <= cap, unless
# even lambda = 1e12 leaves dfU above the cap; then 1e12 is returned.
reference_raise_lambda <- function(eigenvalues, lambda, N, cap) {
  df <- function(value) reference_effective_df(eigenvalues, value, N)
  if (df(lambda) <= cap) return(lambda)

  lambda_max <- reference_constants$lambda_max
  low <- max(lambda, 0)
  high <- if (low > 0) 10 * low else 1e-6
  while (df(high) > cap) {
    if (high >= lambda_max) return(lambda_max)
    low <- high
    high <- min(10 * high, lambda_max)
  }

  while (high - low > reference_constants$lambda_tolerance) {
    middle <- (low + high) / 2
    if (middle <= low || middle >= high) break
    if (df(middle) > cap) low <- middle else high <- middle
  }
  high
}

# U-step: the ridge prediction (BLUP) U = M^{-1} X'(Y - X Theta A) with
# M = X'X + lambda I, solved with one Cholesky factor of M, then each row
# of U centred to mean 0 so that the random effects absorb no intercept.
reference_u_step <- function(Y, A, X, Theta, lambda) {
  gram <- crossprod(X)
  factor <- chol(gram + lambda * diag(ncol(X)))
  rhs <- crossprod(X, Y) - gram %*% (Theta %*% A)
  U <- backsolve(factor, forwardsolve(t(factor), rhs))
  U - rowMeans(U)
}

# X-step: one multiplicative (Lee-Seung) update against the positive part
# of the scores B = max(Theta A + U, 0), floored at eps. The caller
# normalises afterwards.
reference_x_step <- function(Y_positive, A, X, Theta, U) {
  B <- pmax(Theta %*% A + U, 0)
  numerator <- Y_positive %*% t(B)
  denominator <- X %*% tcrossprod(B)
  pmax(X * reference_safe_divide(numerator, denominator), reference_constants$eps)
}

# Theta-step, non-negative: one multiplicative update against the data with
# the random effects removed, Ystar = max(max(Y, 0) - X U, 0), floored at eps.
reference_theta_step_nonneg <- function(Y_positive, A, X, Theta, U) {
  Y_star <- pmax(Y_positive - X %*% U, 0)
  numerator <- crossprod(X, Y_star) %*% t(A)
  denominator <- crossprod(X) %*% Theta %*% tcrossprod(A)
  pmax(Theta * reference_safe_divide(numerator, denominator), reference_constants$eps)
}

# Theta-step, sign-free: exact least squares
# Theta = (X'X)^{-1} X'(Y - X U) A' (A A')^{-1}.
reference_theta_step_free <- function(Y, A, X, U) {
  gram <- crossprod(X)
  middle <- (crossprod(X, Y) - gram %*% U) %*% t(A)
  left <- solve(gram, middle)
  t(solve(tcrossprod(A), t(left)))
}

# Permutation that orders the bases by sum_p (p / P) X[p, q], ascending.
reference_basis_order <- function(X) {
  position <- colSums(X * (seq_len(nrow(X)) / nrow(X)))
  order(position)
}

# Fits NMF-RE in plain R from explicit starting values.
#
# `start` is a list with X (P x Q, non-negative), Theta (Q x K) and U
# (Q x N). `cap` is "rate", "absolute" or "off" with `cap_value` the rate
# or the absolute ceiling; the remaining arguments have the defaults of
# nmfre_control(). Returns the fitted parameters, the variances, lambda
# and dfU, the cap record, the iteration count and the objective trace.
reference_fit <- function(Y, A, start, theta = c("nonneg", "free"),
                          cap = c("rate", "absolute", "off"), cap_value = 0.1,
                          maxit = 50000, epsilon = 1e-8,
                          sigma2_start = 1, tau2_start = 1,
                          sigma2_update_from = 50, sigma2_update_every = 10,
                          update_tau2 = TRUE) {
  theta <- match.arg(theta)
  cap <- match.arg(cap)
  Y <- unname(as.matrix(Y))
  A <- unname(as.matrix(A))
  P <- nrow(Y)
  N <- ncol(Y)
  Y_positive <- pmax(Y, 0)
  state <- reference_normalise(unname(start$X), unname(start$Theta), unname(start$U))
  X <- state$X
  Theta <- state$Theta
  U <- state$U
  Q <- ncol(X)
  ceiling <- reference_cap_value(cap, cap_value, N, Q)
  sigma2 <- sigma2_start
  tau2 <- tau2_start
  lambda <- sigma2 / tau2
  hits <- integer(0)
  objective <- double(0)
  rss <- NA_real_
  converged <- FALSE

  for (iteration in seq_len(maxit)) {
    # df cap: with X'X's eigenvalues at the current X, raise lambda until
    # dfU meets the ceiling, and keep tau2 consistent with the new lambda.
    eigenvalues <- eigen(crossprod(X), symmetric = TRUE, only.values = TRUE)$values
    lambda <- sigma2 / tau2
    if (!is.na(ceiling) && reference_effective_df(eigenvalues, lambda, N) > ceiling) {
      lambda <- reference_raise_lambda(eigenvalues, lambda, N, ceiling)
      tau2 <- sigma2 / lambda
      hits <- c(hits, iteration)
    }

    # U first: given X and Theta it has a closed form, and the X- and
    # Theta-steps need the current random effects.
    U <- reference_u_step(Y, A, X, Theta, lambda)

    X <- reference_x_step(Y_positive, A, X, Theta, U)
    state <- reference_normalise(X, Theta, U)
    X <- state$X
    Theta <- state$Theta
    U <- state$U

    Theta <- if (theta == "nonneg") {
      reference_theta_step_nonneg(Y_positive, A, X, Theta, U)
    } else {
      reference_theta_step_free(Y, A, X, U)
    }

    rss <- sum((Y - X %*% (Theta %*% A + U))^2)

    # Variances: sigma2 moves slowly and only from `sigma2_update_from` on;
    # tau2 has its own update only when the cap does not set it. The tau2
    # update uses the eigenvalues and lambda of this iteration's U-step and
    # the sigma2 just updated.
    if (iteration >= sigma2_update_from && iteration %% sigma2_update_every == 0) {
      sigma2 <- reference_clip_variance(0.95 * sigma2 + 0.05 * rss / (P * N))
    }
    if (is.na(ceiling) && update_tau2) {
      trace_inverse <- sum(1 / (pmax(eigenvalues, 0) + lambda))
      target <- sum(U^2) / (N * Q) + sigma2 * trace_inverse / Q
      tau2 <- reference_clip_variance(0.8 * tau2 + 0.2 * target)
    }
    lambda <- sigma2 / tau2

    value <- rss + lambda * sum(U^2)
    if (!is.finite(value)) {
      stop(sprintf("reference_fit: the objective became non-finite at iteration %d.",
                   iteration), call. = FALSE)
    }
    objective <- c(objective, value)
    if (iteration > 1) {
      previous <- objective[iteration - 1]
      if (abs(previous - value) / (abs(previous) + reference_constants$eps) < epsilon) {
        converged <- TRUE
        break
      }
    }
  }

  order <- reference_basis_order(X)
  X <- X[, order, drop = FALSE]
  Theta <- Theta[order, , drop = FALSE]
  U <- U[order, , drop = FALSE]
  eigenvalues <- eigen(crossprod(X), symmetric = TRUE, only.values = TRUE)$values

  list(
    X = X, Theta = Theta, U = U,
    sigma2 = sigma2, tau2 = tau2, lambda = lambda,
    dfU = reference_effective_df(eigenvalues, lambda, N),
    cap = ceiling, cap_hits = length(hits),
    cap_first_hit = if (length(hits)) min(hits) else NA_real_,
    cap_last_hit = if (length(hits)) max(hits) else NA_real_,
    iterations = length(objective), converged = converged,
    rss = rss, objective = objective
  )
}

# Computes the inference on vec(Theta) in plain R, conditional on X and U.
#
# Working model Y - X U = X Theta A + E. `sigma2_rule` sets the denominator
# of the residual variance ("corrected": PN - dfU - QK, "plain": PN,
# "fixed": PN - QK, each at least 1); `information` "corrected" uses the
# block X'X - X'X M^{-1} X'X with M = X'X + lambda I, "plain" uses X'X.
# Returns rss, trace_hat = tr(M^{-1} X'X), dfU, sigma2, the information,
# H = its inverse (the model-based covariance), the N x QK scores and the
# sandwich covariance H J H with J = N / (N - 1) * sum_n s_n s_n'.
reference_inference <- function(Y, A, X, Theta, U, lambda,
                                sigma2_rule = c("corrected", "plain", "fixed"),
                                information = c("corrected", "plain")) {
  sigma2_rule <- match.arg(sigma2_rule)
  information <- match.arg(information)
  Y <- unname(as.matrix(Y))
  A <- unname(as.matrix(A))
  X <- unname(X)
  P <- nrow(Y)
  N <- ncol(Y)
  Q <- ncol(X)
  K <- nrow(A)

  residuals <- Y - X %*% (Theta %*% A + U)
  rss <- sum(residuals^2)

  gram <- crossprod(X)
  M_inverse <- chol2inv(chol(gram + lambda * diag(Q)))
  trace_hat <- sum(diag(M_inverse %*% gram))
  dfU <- N * trace_hat
  denominator <- switch(sigma2_rule,
    corrected = max(P * N - dfU - Q * K, 1),
    plain = P * N,
    fixed = max(P * N - Q * K, 1)
  )
  sigma2 <- rss / denominator

  block <- if (information == "corrected") gram - gram %*% M_inverse %*% gram else gram
  info <- kronecker(tcrossprod(A), block) / sigma2 +
    reference_constants$information_ridge * diag(Q * K)
  H <- chol2inv(chol(info))

  # Score of unit n: -vec(X' r_n a_n') / sigma2; column q + Q (k - 1) of the
  # N x QK matrix is -(X' R)[q, ] * A[k, ] / sigma2.
  projected <- crossprod(X, residuals)
  scores <- -t(projected[rep(seq_len(Q), times = K), , drop = FALSE] *
                 A[rep(seq_len(K), each = Q), , drop = FALSE]) / sigma2
  meat <- N / (N - 1) * crossprod(scores)

  list(rss = rss, trace_hat = trace_hat, dfU = dfU, sigma2 = sigma2,
       information = info, H = H, scores = scores, sandwich = H %*% meat %*% H)
}
